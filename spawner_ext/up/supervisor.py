"""Runs JupyterHub as a child process until Ctrl-C or SIGTERM, and stops it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from ..catalog import Catalog
from .banner import banner, public_url
from .config import (
    CONFIG_FILE_TEXT,
    LOG_TAIL_LINES,
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    UpSettings,
    _url_host,
)


class Supervisor:
    """Runs JupyterHub as a child process, prints the banner once it answers, and turns Ctrl-C
    and SIGTERM into one orderly stop of it."""

    def __init__(self, settings: UpSettings, catalog: Catalog, gpus: str) -> None:
        self.settings = settings
        self.catalog = catalog
        self.gpus = gpus
        self.log_file = settings.state_dir / "jupyterhub.log"
        self.url = public_url(settings.ip, settings.port, socket.gethostname())
        self.stop_requested = False
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        config_file = self.settings.state_dir / "jupyterhub_config.py"
        config_file.write_text(CONFIG_FILE_TEXT)
        env = {**os.environ, **self.settings.to_env()}
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
        print(f"gpuhub up: starting JupyterHub (log: {self.log_file})", flush=True)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            with self.log_file.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "jupyterhub", "-f", str(config_file)],
                    cwd=self.settings.state_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # signals reach it only through us: one stop
                )
            return self._watch(self.proc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.stop_requested = True
            return
        if self.stop_requested:
            print("gpuhub up: stopping JupyterHub now", file=sys.stderr, flush=True)
            proc.kill()
            return
        self.stop_requested = True
        print("\ngpuhub up: stopping JupyterHub...", file=sys.stderr, flush=True)
        proc.terminate()

    def _watch(self, proc: subprocess.Popen[bytes]) -> int:
        if not self._wait_ready(proc):
            if self.stop_requested:
                return self._finish(proc)
            self._stop(proc)
            print(
                f"gpuhub up: JupyterHub did not start; the end of {self.log_file}:\n"
                + self._log_tail(),
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(banner(self.settings, self.catalog, self.url, self.log_file, self.gpus), flush=True)
        return self._finish(proc)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        host = "127.0.0.1" if self.settings.ip in ("", "0.0.0.0") else self.settings.ip
        probe = f"http://{_url_host(host)}:{self.settings.port}/hub/api/"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and proc.poll() is None and not self.stop_requested:
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        return False

    def _finish(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for JupyterHub to end; after a stop request, at most STOP_TIMEOUT_SECONDS."""
        deadline: float | None = None
        while True:
            if self.stop_requested and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
        if self.stop_requested:
            print("gpuhub up: stopped", file=sys.stderr, flush=True)
            return 0
        print(
            f"gpuhub up: JupyterHub exited by itself (status {code}); the end of "
            f"{self.log_file}:\n" + self._log_tail(),
            file=sys.stderr,
            flush=True,
        )
        return 1

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])
