"""`gpuhub up`: the whole platform on one machine with one command. It validates the catalog, then
runs JupyterHub with GPULocalSpawner, a shared password, SQLite and configurable-http-proxy, all
kept in one state directory, and stops them on Ctrl-C or SIGTERM.

The first half of this module is pure (settings, the JupyterHub configuration built from them, the
banner); only the second half touches files, ports and processes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

from .catalog import Catalog, CatalogError, load_catalog

DEFAULT_PORT = 8000
DEFAULT_HUB_PORT = 8081
DEFAULT_PROXY_API_PORT = 8001
DEFAULT_STATE_DIR = ".gpuhub"
ADMIN_USER = "admin"
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 60.0
LOG_TAIL_LINES = 30

CONFIG_FILE_TEXT = '''\
"""JupyterHub configuration of `gpuhub up` (local mode): GPULocalSpawner, a shared password,
SQLite and configurable-http-proxy, every setting read from GPUHUB_* environment variables.

`gpuhub up` writes this file into its state directory and runs `jupyterhub -f` on it. To run
JupyterHub yourself with it instead, e.g.:
    GPUHUB_PASSWORD=choose-one GPUHUB_SIMULATE_GPUS=2xh100-80gb jupyterhub -f jupyterhub_config.py
The variables are listed in docs/reference/cli.md. GPUHUB_JUPYTERHUB_CONFIG names a further
config file, loaded last so that its settings win.
"""

import os

from spawner_ext.up import configure

c = get_config()  # noqa: F821
configure(c, os.environ)
if os.environ.get("GPUHUB_JUPYTERHUB_CONFIG"):
    load_subconfig(os.environ["GPUHUB_JUPYTERHUB_CONFIG"])  # noqa: F821
'''
"""The JupyterHub config file; `hub_config/jupyterhub_config.py` is a copy (a test keeps it so)."""


# --- settings and the JupyterHub configuration (pure) -------------------------------------------


@dataclass(frozen=True)
class UpSettings:
    """Everything the hub of `gpuhub up` is configured from; travels as GPUHUB_* variables."""

    catalog: Path
    state_dir: Path
    password: str
    admin_password: str = ""
    ip: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    hub_port: int = DEFAULT_HUB_PORT
    proxy_api_port: int = DEFAULT_PROXY_API_PORT
    simulate_gpus: str = ""
    proxy_command: str = "configurable-http-proxy"
    singleuser_command: str = "jupyterhub-singleuser"
    keep_servers: bool = False
    extra_config: Path | None = None

    @property
    def ledger_url(self) -> str:
        """The billing database (quotas, budgets, metering): SQLite in the state directory."""
        return f"sqlite:///{self.state_dir / 'gpuhub-ledger.sqlite'}"

    def to_env(self) -> dict[str, str]:
        """The GPUHUB_* variables that `configure` reads back."""
        env = {
            "GPUHUB_CATALOG": str(self.catalog),
            "GPUHUB_STATE_DIR": str(self.state_dir),
            "GPUHUB_PASSWORD": self.password,
            "GPUHUB_ADMIN_PASSWORD": self.admin_password,
            "GPUHUB_IP": self.ip,
            "GPUHUB_PORT": str(self.port),
            "GPUHUB_HUB_PORT": str(self.hub_port),
            "GPUHUB_PROXY_API_PORT": str(self.proxy_api_port),
            "GPUHUB_SIMULATE_GPUS": self.simulate_gpus,
            "GPUHUB_PROXY_COMMAND": self.proxy_command,
            "GPUHUB_SINGLEUSER_COMMAND": self.singleuser_command,
            "GPUHUB_KEEP_SERVERS": "1" if self.keep_servers else "",
        }
        if self.extra_config is not None:
            env["GPUHUB_JUPYTERHUB_CONFIG"] = str(self.extra_config)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpSettings:
        """Read the GPUHUB_* variables; unset ones take `gpuhub up`'s defaults. Raises ValueError
        naming the variable that is missing or wrong."""
        password = env.get("GPUHUB_PASSWORD", "")
        if len(password) < 8:
            raise ValueError(
                "set GPUHUB_PASSWORD to the password users log in with (8 characters or more)"
            )

        def port(name: str, default: int) -> int:
            text = env.get(name) or str(default)
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ValueError(f"{name}={text!r} is not a TCP port (1-65535)")
            return int(text)

        extra = env.get("GPUHUB_JUPYTERHUB_CONFIG")
        state_dir = Path(env.get("GPUHUB_STATE_DIR") or DEFAULT_STATE_DIR).absolute()
        return cls(
            catalog=Path(env.get("GPUHUB_CATALOG") or example_catalog()).absolute(),
            state_dir=state_dir,
            password=password,
            admin_password=env.get("GPUHUB_ADMIN_PASSWORD", ""),
            ip=env.get("GPUHUB_IP") or "127.0.0.1",
            port=port("GPUHUB_PORT", DEFAULT_PORT),
            hub_port=port("GPUHUB_HUB_PORT", DEFAULT_HUB_PORT),
            proxy_api_port=port("GPUHUB_PROXY_API_PORT", DEFAULT_PROXY_API_PORT),
            simulate_gpus=env.get("GPUHUB_SIMULATE_GPUS", ""),
            proxy_command=env.get("GPUHUB_PROXY_COMMAND") or "configurable-http-proxy",
            singleuser_command=env.get("GPUHUB_SINGLEUSER_COMMAND") or "jupyterhub-singleuser",
            keep_servers=bool(env.get("GPUHUB_KEEP_SERVERS")),
            extra_config=Path(extra).absolute() if extra else None,
        )


def hub_config(s: UpSettings) -> dict[str, dict[str, Any]]:
    """JupyterHub settings, as {class name: {trait: value}}, for the local mode of `s`."""
    state = s.state_dir
    authenticator: dict[str, Any] = {"user_password": s.password, "allow_all": True}
    if s.admin_password:
        authenticator.update(admin_password=s.admin_password, admin_users={ADMIN_USER})
    return {
        "JupyterHub": {
            "bind_url": f"http://{_url_host(s.ip)}:{s.port}/",
            "hub_ip": "127.0.0.1",
            "hub_port": s.hub_port,
            "db_url": f"sqlite:///{state / 'jupyterhub.sqlite'}",
            "cookie_secret_file": str(state / "jupyterhub_cookie_secret"),
            "pid_file": str(state / "jupyterhub.pid"),
            "authenticator_class": "jupyterhub.authenticators.shared.SharedPasswordAuthenticator",
            "spawner_class": "spawner_ext.local.spawner.GPULocalSpawner",
            "cleanup_servers": not s.keep_servers,
        },
        "SharedPasswordAuthenticator": authenticator,
        "GPULocalSpawner": {
            "catalog_path": str(s.catalog),
            "ledger_url": s.ledger_url,
            "simulated_gpus": s.simulate_gpus,
            "server_user": "",
            "user_root": str(state / "users"),
            "cmd": [s.singleuser_command],
            "default_url": "/lab",
            "start_timeout": 120,
            "http_timeout": 90,
        },
        "ConfigurableHTTPProxy": {
            "command": [s.proxy_command],
            "api_url": f"http://127.0.0.1:{s.proxy_api_port}",
            "pid_file": str(state / "proxy.pid"),
        },
    }


def configure(c: Any, env: Mapping[str, str]) -> None:
    """Apply `hub_config` of the GPUHUB_* variables in `env` to a traitlets config `c` (what the
    config file calls). Creates the state directory."""
    settings = UpSettings.from_env(env)
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for section, traits in hub_config(settings).items():
        for name, value in traits.items():
            c[section][name] = value


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def public_url(ip: str, port: int, hostname: str) -> str:
    """The URL people open: `hostname` stands in for an ip that means every interface."""
    host = hostname if ip in ("", "0.0.0.0", "::") else ip
    return f"http://{_url_host(host)}:{port}/"


def suggested_users(catalog: Catalog) -> list[tuple[str, str]]:
    """(user name, what they get) for the users the catalog names, then anybody else."""
    teams: dict[str, list[str]] = {}
    for key, team in catalog.teams.items():
        for user in team.users:
            teams.setdefault(user, []).append(key)
    out: list[tuple[str, str]] = []
    for user, keys in teams.items():
        if len(keys) == 1:
            out.append((user, f"team {keys[0]}"))
        else:
            out.append((user, f"teams {', '.join(keys)}: chooses the team to charge"))
    out.append(("any other name", "no team: CPU profiles only"))
    return out


def banner(s: UpSettings, catalog: Catalog, url: str, log_file: Path, gpus: str) -> str:
    """What `gpuhub up` prints once the hub answers: where, how to log in, what it runs on."""
    users = suggested_users(catalog)
    width = max(len(name) for name, _ in users)
    lines = [
        "",
        f"gpuhub is running at {url}",
        "",
        "Log in with any user name and this password (a new one at every start):",
        f"  Password: {s.password}",
        "",
        "User names from the catalog:",
        *(f"  {name:<{width}}  {what}" for name, what in users),
    ]
    if s.admin_password:
        lines += [
            "",
            f"Admin: user name {ADMIN_USER!r}, password: {s.admin_password}",
            f"  (admin page: {url}hub/admin)",
        ]
    lines += [
        "",
        f"GPUs:  {gpus}",
        f"State: {s.state_dir} (databases, cookie secret, users' files)",
        f"Log:   {log_file}",
        "",
        "Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


# --- the command (files, ports, processes) ------------------------------------------------------


def example_catalog() -> Path:
    """The example catalog shipped in the package (a copy of hub_config/catalog.yaml)."""
    return Path(str(resources.files("spawner_ext") / "examples" / "catalog.yaml"))


def add_up_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `gpuhub up` with the `gpuhub` command's subparsers."""
    up = subparsers.add_parser(
        "up",
        help="run the platform on this machine: JupyterHub, proxy and GPU-pinned servers",
        description="Validate the catalog, then run JupyterHub on this machine with the local "
        "GPU spawner, a shared password printed at start, SQLite and configurable-http-proxy. "
        "Stops on Ctrl-C or SIGTERM.",
    )
    up.add_argument(
        "--config",
        metavar="FILE",
        help="catalog YAML (default: the example catalog shipped with gpuhub)",
    )
    up.add_argument("--port", type=_port, default=DEFAULT_PORT, help="public port (default 8000)")
    up.add_argument(
        "--ip", default="127.0.0.1", help="public address (default 127.0.0.1; 0.0.0.0 for all)"
    )
    up.add_argument(
        "--simulate-gpus",
        metavar="SPEC",
        default="",
        help="pretend this machine has these GPUs, e.g. 4xh100-80gb,2xl4 (types are catalog "
        "gpu_types keys); default: the real GPUs NVML finds",
    )
    up.add_argument(
        "--jupyterhub-config",
        metavar="FILE",
        help="a further JupyterHub config file, loaded after gpuhub's so its settings win "
        "(another authenticator, API token services, ...)",
    )
    up.add_argument(
        "--state-dir",
        metavar="DIR",
        default=DEFAULT_STATE_DIR,
        help="where the database, cookie secret, log and users' files live (default ./.gpuhub)",
    )
    up.add_argument(
        "--keep-servers",
        action="store_true",
        help="leave users' servers running when the hub stops; the next `gpuhub up` with the same "
        "state directory takes them over",
    )
    up.set_defaults(run=run_up)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _bad_args(message: str) -> int:
    print(f"gpuhub up: error: {message}", file=sys.stderr)
    return 2


def run_up(args: argparse.Namespace) -> int:
    """`gpuhub up`: 0 after a requested stop, 1 when the hub fails or stops by itself, 2 for bad
    arguments (before anything starts)."""
    catalog_path = Path(args.config) if args.config else example_catalog()
    if not catalog_path.is_file():
        return _bad_args(f"--config {catalog_path}: no such file")
    extra: Path | None = None
    if args.jupyterhub_config:
        extra = Path(args.jupyterhub_config).absolute()
        if not extra.is_file():
            return _bad_args(f"--jupyterhub-config {args.jupyterhub_config}: no such file")
    try:
        catalog = load_catalog(catalog_path)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        print(f"gpuhub up: {catalog_path} is not a valid catalog; nothing started", file=sys.stderr)
        return 1
    gpus = _gpus(args.simulate_gpus, catalog)
    if gpus is None:
        return 2
    state_dir = Path(args.state_dir).absolute()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return _bad_args(f"--state-dir {args.state_dir}: cannot create it ({exc.strerror})")
    proxy = find_program("configurable-http-proxy")
    singleuser = find_program("jupyterhub-singleuser")
    if proxy is None or singleuser is None:
        missing = "configurable-http-proxy" if proxy is None else "jupyterhub-singleuser"
        print(
            f"gpuhub up: {missing} is not installed (looked next to {sys.executable} and on "
            "PATH); run scripts/bootstrap python node",
            file=sys.stderr,
        )
        return 1
    running = _running_hub(state_dir)
    if running is not None:
        print(
            f"gpuhub up: a JupyterHub of {state_dir} still runs (pid {running}); stop it "
            f"(kill {running}) or use another --state-dir",
            file=sys.stderr,
        )
        return 1
    settings = UpSettings(
        catalog=catalog_path.absolute(),
        state_dir=state_dir,
        password=secrets.token_urlsafe(12),
        admin_password=secrets.token_urlsafe(32),
        ip=args.ip,
        port=args.port,
        hub_port=_hub_port(state_dir),
        proxy_api_port=free_port(),
        simulate_gpus=args.simulate_gpus,
        proxy_command=proxy,
        singleuser_command=singleuser,
        keep_servers=args.keep_servers,
        extra_config=extra,
    )
    if not _upgrade_ledger(settings.ledger_url):
        return 1
    return Supervisor(settings, catalog, gpus).run()


def _upgrade_ledger(url: str) -> bool:
    """Create or upgrade the billing schema (as `gpuhub db upgrade` does); False after saying
    why it failed."""
    from sqlalchemy.exc import SQLAlchemyError

    from .ledger.engine import upgrade

    try:
        upgrade(url)
    except (SQLAlchemyError, OSError) as exc:
        print(f"gpuhub up: cannot create the billing database {url}: {exc}", file=sys.stderr)
        return False
    return True


def _gpus(spec: str, catalog: Catalog) -> str | None:
    """How the banner describes the GPUs; None (after printing why) for a bad spec."""
    from .local.inventory import discover, parse_simulation

    if spec:
        try:
            devices = parse_simulation(spec, catalog)
        except ValueError as exc:
            _bad_args(str(exc))
            return None
        return f"{len(devices)} simulated ({spec}); servers get no real GPU"
    found = discover()
    if not found.devices:
        return f"none found. {found.reason}"
    return f"{len(found.devices)} found by NVML"


def find_program(name: str) -> str | None:
    """`name` next to this Python (the virtualenv's bin), in ./.venv/bin, or on PATH."""
    for folder in (Path(sys.executable).parent, Path(".venv", "bin")):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.absolute())
    return shutil.which(name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _hub_port(state_dir: Path) -> int:
    """The hub's internal port: the same as last time for this state directory, because servers
    that survived a restart call the hub there; a free one the first time."""
    saved = state_dir / "hub-port"
    try:
        return int(saved.read_text().strip())
    except (OSError, ValueError):
        port = free_port()
        saved.write_text(f"{port}\n")
        return port


def _running_hub(state_dir: Path) -> int | None:
    """The pid of a JupyterHub still running from an earlier start in `state_dir`, if any."""
    try:
        pid = int((state_dir / "jupyterhub.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"jupyterhub" in cmdline else None


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
