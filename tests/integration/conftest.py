"""A real hub for integration tests: `gpuhub up` as a subprocess with simulated GPUs, a temporary
state directory, free ports, and an API token service (added with --jupyterhub-config) so tests
can drive JupyterHub's REST API; and a real Prometheus scraping its service's metrics. Every
process it started is ended afterwards, even on failure."""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from spawner_ext.up import find_program, free_port

START_TIMEOUT = 120.0
SPAWN_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0

TOKEN_SERVICE = """\
c.JupyterHub.services.append({{"name": "gpuhub-tests", "api_token": {token!r}}})
c.JupyterHub.load_roles.append(
    {{
        "name": "gpuhub-tests",
        "scopes": [
            "admin:users",
            "admin:servers",
            "admin:server_state",
            "access:servers",
            "list:services",
            "read:services",
            "tokens",
        ],
        "services": ["gpuhub-tests"],
    }}
)
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped by its parent yet) counts as gone
    with suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process started with (root may read any /proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


class Hub:
    """One `gpuhub up` run (and its restarts) on one state directory."""

    def __init__(self, workdir: Path, simulate_gpus: str, *extra_args: str) -> None:
        self.workdir = workdir
        self.extra_args = extra_args
        self.state_dir = workdir / "state"
        self.simulate_gpus = simulate_gpus
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.token = secrets.token_hex(16)
        self.extra_config = workdir / "tests_config.py"
        self.extra_config.write_text(TOKEN_SERVICE.format(token=self.token))
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.password = ""
        self.admin_password = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    # --- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        self.output = []
        self._lines = queue.Queue()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spawner_ext.cli",
                "up",
                "--port",
                str(self.port),
                "--simulate-gpus",
                self.simulate_gpus,
                "--state-dir",
                str(self.state_dir),
                "--jupyterhub-config",
                str(self.extra_config),
                *self.extra_args,
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
                if time.monotonic() < deadline:
                    continue
            if line is None:
                pytest.fail(f"gpuhub up did not get ready:\n{''.join(self.output)}\n{self.log()}")
            if line.startswith("Stop with Ctrl-C"):
                break
        text = "".join(self.output)
        # Neither is printed with --passwords FILE (each user's own; admin's too if it names it).
        password_file = "--passwords" in self.extra_args
        self.password = _field(text, r"^\s*Password: (\S+)$", required=not password_file)
        self.admin_password = _field(
            text, r"^Admin: user name 'admin', password: (\S+)$", required=not password_file
        )

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def hub_pid(self) -> int | None:
        with suppress(OSError, ValueError):
            return int((self.state_dir / "jupyterhub.pid").read_text())
        return None

    def crash(self) -> None:
        """Kill JupyterHub with SIGKILL, as a crash would; `gpuhub up` then exits by itself.
        The proxy and the users' servers live on."""
        pid = self.hub_pid()
        assert pid is not None and self.proc is not None
        _kill(pid)
        assert self.proc.wait(timeout=STOP_TIMEOUT) == 1
        self._reap(self.proc)
        self.proc = None
        wait_for("JupyterHub to die", lambda: not _alive(pid), STOP_TIMEOUT)

    def stop(self) -> int | None:
        """Stop as an operator would (SIGTERM to `gpuhub up`); its exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._reap(proc)
        return proc.returncode

    def _reap(self, proc: subprocess.Popen[str]) -> None:
        """Let the reader finish the output of an ended `gpuhub up`, then close its pipe."""
        if self._reader is not None:
            self._reader.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()

    def cleanup(self) -> None:
        """Stop, then end whatever is left of this hub: JupyterHub, the proxy, users' servers."""
        self.stop()
        hub_pid = self.hub_pid()
        if hub_pid is not None and _alive(hub_pid):
            _kill(hub_pid)
        with suppress(OSError, ValueError):
            proxy = int((self.state_dir / "proxy.pid").read_text())
            if b"configurable-http-proxy" in Path(f"/proc/{proxy}/cmdline").read_bytes():
                _kill(proxy)
        for pid in self.server_pids():
            _kill(pid)

    def server_pids(self) -> list[int]:
        """Processes started for this hub's users (they carry its API URL)."""
        try:
            hub_port = int((self.state_dir / "hub-port").read_text())
        except (OSError, ValueError):
            return []
        marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub_port}/hub/api".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
        return found

    def log(self) -> str:
        try:
            lines = (self.state_dir / "jupyterhub.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no jupyterhub.log)"
        return "--- end of jupyterhub.log ---\n" + "\n".join(lines[-60:])

    # --- REST API ----------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(
            method, f"{self.url}hub/api{path}", headers=headers, timeout=60, **kwargs
        )

    def ensure_user(self, name: str) -> None:
        response = self.api("POST", f"/users/{quote(name)}")
        assert response.status_code in (201, 409), response.text

    def token_for(self, name: str) -> str:
        """A JupyterHub API token of user `name` (with all of their permissions)."""
        self.ensure_user(name)
        response = self.api("POST", f"/users/{quote(name)}/tokens", json={"expires_in": 3600})
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def user(self, name: str) -> dict[str, Any]:
        response = self.api("GET", f"/users/{quote(name)}")
        assert response.status_code == 200, response.text
        model: dict[str, Any] = response.json()
        return model

    def spawn(self, name: str, options: Any, server: str = "") -> requests.Response:
        """POST the spawn request; returns the response as it is (201, 202 or a refusal)."""
        self.ensure_user(name)
        return self.api("POST", f"/users/{quote(name)}/servers/{quote(server)}", json=options)

    def start_server(self, name: str, options: Any, server: str = "") -> dict[str, Any]:
        """Spawn and wait until the server is ready; its server model (with state)."""
        response = self.spawn(name, options, server)
        assert response.status_code in (201, 202), f"{response.status_code} {response.text}"

        def ready() -> dict[str, Any] | None:
            servers = self.user(name)["servers"]
            model: dict[str, Any] | None = servers.get(server)
            if model is None:
                pytest.fail(f"server {name}/{server} failed to start:\n{self.log()}")
            return model if model["ready"] else None

        result: dict[str, Any] = wait_for(f"{name}'s server", ready, SPAWN_TIMEOUT, 0.5)
        return result

    def stop_server(self, name: str, server: str = "") -> None:
        response = self.api("DELETE", f"/users/{quote(name)}/servers/{quote(server)}")
        assert response.status_code in (202, 204), response.text
        wait_for(
            f"{name}'s server to stop",
            lambda: server not in self.user(name)["servers"],
            STOP_TIMEOUT,
            0.5,
        )

    def ledger(self) -> Any:
        """The hub's billing ledger (a Ledger of no install: every session); dispose of its
        engine when done."""
        from spawner_ext.ledger.store import Ledger

        return Ledger.open(f"sqlite:///{self.state_dir / 'gpuhub-ledger.sqlite'}")

    def sessions(self, user: str) -> list[Any]:
        """The user's ledger sessions (UsageSession rows), oldest first, read from the hub's
        ledger directly."""
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from spawner_ext.ledger.models import UsageSession

        ledger = self.ledger()
        try:
            with Session(ledger.engine) as db:
                query = select(UsageSession).where(UsageSession.user == user)
                return list(db.scalars(query.order_by(UsageSession.id)))
        finally:
            ledger.engine.dispose()

    def server_env(self, name: str, server: str = "") -> dict[str, str]:
        model = self.user(name)["servers"][server]
        return environ_of(int(model["state"]["pid"]))

    def login(
        self, name: str, password: str | None = None
    ) -> tuple[requests.Session, requests.Response]:
        """Post the login form as a browser would; the session and the page it landed on."""
        session = requests.Session()
        page = session.get(f"{self.url}hub/login", timeout=60)
        assert page.status_code == 200, page.text
        xsrf = session.cookies.get("_xsrf") or _field(page.text, r'name="_xsrf" value="([^"]+)"')
        response = session.post(
            f"{self.url}hub/login",
            data={
                "username": name,
                "password": self.password if password is None else password,
                "_xsrf": xsrf,
            },
            timeout=60,
        )
        return session, response


LEAN_SERVER = {  # jupyter_server with JupyterHub's extension only: the same server, started faster
    "ServerApp": {
        "jpserver_extensions": {
            "jupyterlab": False,
            "jupyter_lsp": False,
            "notebook_shim": False,
            "jupyter_server_terminals": False,
        }
    }
}


def lean_servers(hub: Hub) -> None:
    """The hub's servers start as jupyter_server with JupyterHub's extension only (LEAN_SERVER,
    from a Jupyter config directory in the hub's workdir), their default URL the server's API:
    for tests that start and stop many servers and never open JupyterLab. Call before start."""
    config_dir = hub.workdir / "jupyter"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(LEAN_SERVER))
    hub.extra_config.write_text(
        hub.extra_config.read_text()
        + f"c.Spawner.environment = {{'JUPYTER_CONFIG_DIR': {str(config_dir)!r}}}\n"
        + "c.Spawner.default_url = '/api'\n"
    )


def _field(text: str, pattern: str, *, required: bool = True) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    assert found or not required, f"no {pattern!r} in:\n{text}"
    return found.group(1) if found else ""


def needs_local_hub() -> None:
    """Skip, saying what to install, when the hub's own programs are missing."""
    if find_program("configurable-http-proxy") is None:
        pytest.skip("configurable-http-proxy is not installed; run: scripts/bootstrap node")
    if find_program("jupyterhub-singleuser") is None:
        pytest.skip("jupyterhub-singleuser is not installed; run: scripts/bootstrap python")


@pytest.fixture(scope="module")
def start_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Hub]]:
    """Start hubs for a module: `start_hub("2xh100-80gb", *more_gpuhub_up_args)`. All are cleaned
    up at the module's end."""
    needs_local_hub()
    hubs: list[Hub] = []

    def start(simulate_gpus: str, *extra_args: str) -> Hub:
        hub = Hub(tmp_path_factory.mktemp("hub"), simulate_gpus, *extra_args)
        hubs.append(hub)
        hub.start()
        return hub

    try:
        yield start
    finally:
        for hub in hubs:
            hub.cleanup()


WAITLIST_API = "services/gpu-usage/api/v1/waitlist"


def waitlist_catalog(workdir: Path, tick: int, hold: int) -> Path:
    """workdir/catalog.yaml: the example catalog with the service ticking every `tick` s and
    a GPU held `hold` s at a person's turn (the wait-list tests)."""
    text = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {tick}s")
    text = text.replace("hold: 10m ", f"hold: {hold}s ")
    assert f"reconcile_interval: {tick}s" in text and f"hold: {hold}s" in text
    catalog = workdir / "catalog.yaml"
    catalog.write_text(text)
    return catalog


def devices_of(hub: Hub, user: str, server: str = "") -> list[str]:
    """The simulated GPUs a local server holds, from its spawner state as the hub lists it."""
    devices: list[str] = hub.user(user)["servers"][server]["state"]["gpuhub_devices"]
    return devices


def stop_all(hub: Hub, users: tuple[str, ...] = ("ada", "grace", "lin")) -> None:
    """Stop every server of `users`, named ones too."""
    for user in users:
        hub.ensure_user(user)
        for server in list(hub.user(user)["servers"]):
            hub.stop_server(user, server)


class Person:
    """A user with their own JupyterHub API token, talking to the wait-list API."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.token = hub.token_for(name)

    def call(self, method: str, path: str = "", **kwargs: Any) -> requests.Response:
        return requests.request(
            method,
            f"{self.hub.url}{WAITLIST_API}{path}",
            headers={"Authorization": f"token {self.token}"},
            timeout=60,
            **kwargs,
        )

    def join(self, options: dict[str, str], start: str, server: str = "") -> dict[str, Any]:
        body = {"server_name": server, "options": options, "start": start}
        response = self.call("POST", json=body)
        assert response.status_code == 201, response.text
        joined: dict[str, Any] = response.json()
        return joined

    def request(self, uid: str) -> dict[str, Any]:
        response = self.call("GET", f"/{uid}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found


@contextmanager
def usage_hub(workdir: Path) -> Iterator[Hub]:
    """A hub with usage to report, on its own copy of the example catalog (workdir/catalog.yaml,
    which a test may edit): ada (vision) and grace (nlp) used a GPU for a few seconds and
    stopped; lin's GPU server (charged to vision) runs on."""
    needs_local_hub()
    catalog = workdir / "catalog.yaml"
    catalog.write_text((Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text())
    hub = Hub(workdir, "3xh100-80gb", "--config", str(catalog))
    try:
        hub.start()
        hub.start_server("ada", {"profile": "h100-single"})
        hub.start_server("grace", {"profile": "h100-single"})
        hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
        time.sleep(2)
        hub.stop_server("ada")
        hub.stop_server("grace")
        yield hub
    finally:
        hub.cleanup()


class Prometheus:
    """A Prometheus server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> float | None:
        """The value of an instant query with one series (None: no series, or not up yet)."""
        try:
            answer = requests.get(self.url + "query", params={"query": expr}, timeout=5).json()
        except requests.ConnectionError:
            return None
        assert answer.get("status") == "success", (expr, answer)
        result = answer["data"]["result"]
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None


@contextmanager
def prometheus(hub: Hub, token: str, workdir: Path, interval: str = "1s") -> Iterator[Prometheus]:
    """Debian's Prometheus (scripts/bootstrap installs it) on loopback with its storage in
    `workdir`, scraping the hub's gpuhub service metrics every `interval` with `token` (one that
    may read every team's usage, e.g. the admin's)."""
    import shutil
    from urllib.parse import urlparse

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: scripts/bootstrap installs Debian's package")
    (workdir / "token").write_text(token)
    (workdir / "prometheus.yml").write_text(
        f"global: {{scrape_interval: {interval}, scrape_timeout: {interval}}}\n"
        "scrape_configs:\n"
        "  - job_name: gpuhub\n"
        "    metrics_path: /services/gpu-usage/metrics\n"
        f"    authorization: {{type: Bearer, credentials_file: {workdir / 'token'}}}\n"
        f"    static_configs: [{{targets: ['{urlparse(hub.url).netloc}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}/api/v1/")
        wait_for("Prometheus to scrape the service", lambda: server.query("up") == 1, 60, 0.5)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def watcher(hub: Hub) -> Iterator[Any]:
    """The server processes of the module's `hub`, as /proc shows them (from before the first
    spawn): a ProcessWatcher (tests/faultdriver.py)."""
    from tests.faultdriver import ProcessWatcher

    port = (hub.state_dir / "hub-port").read_text().strip()
    found = ProcessWatcher(f"JUPYTERHUB_API_URL=http://127.0.0.1:{port}/hub/api".encode())
    found.start()
    yield found
    found.stop()
