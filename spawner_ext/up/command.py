"""The `gpuhub up` command line: arguments, checks before anything starts, and the run."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

from ..catalog import Catalog, CatalogError, load_catalog
from ..service import cookie_secret
from .config import (
    ADMIN_USER,
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    SERVICE_COOKIE_SECRET,
    UpSettings,
    example_catalog,
)
from .supervisor import Supervisor


def add_up_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `gpuhub up` with the `gpuhub` command's subparsers."""
    up = subparsers.add_parser(
        "up",
        help="run the platform on this machine: JupyterHub, proxy and GPU-pinned servers",
        description="Validate the catalog, then run JupyterHub on this machine with the local "
        "GPU spawner, a shared password printed at start (anyone who has it can log in as any "
        "user; --passwords gives each user their own), SQLite and configurable-http-proxy. "
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
        "--passwords",
        metavar="FILE",
        help="a password for each user instead of the shared one: a YAML file of `name: "
        "password` lines (8+ characters each, file mode 0600); only the users it names log in, "
        "and 'admin' with the admin password printed at start unless the file names it",
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
    up.add_argument(
        "--no-culling",
        action="store_true",
        help="the gpuhub service culls nothing (run stock jupyterhub-idle-culler instead, with "
        "spawner_ext.service.arbiter.GPUCullArbiter as its cull_arbiter_hook)",
    )
    up.add_argument(
        "--db-url",
        metavar="URL",
        default="",
        help="SQLAlchemy URL of the billing database, e.g. postgresql+psycopg://gpuhub@db/gpuhub "
        "(default: SQLite in the state directory); its schema is created or upgraded at start",
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
    passwords: Path | None = None
    admin_password = secrets.token_urlsafe(32)
    if args.passwords:
        from .passwords import PasswordFileError, read_passwords

        passwords = Path(args.passwords).absolute()
        try:
            users = read_passwords(passwords)
        except PasswordFileError as exc:
            print(exc, file=sys.stderr)
            return _bad_args(f"--passwords {args.passwords} cannot be used; nothing started")
        if ADMIN_USER in users:
            admin_password = ""  # the file's password for admin, not a generated one
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
    try:  # made now (the service would make it), so a bad one is said here, not in the log
        cookie_secret.load(state_dir / SERVICE_COOKIE_SECRET, {})
    except cookie_secret.CookieSecretError as exc:
        print(f"gpuhub up: {exc}", file=sys.stderr)
        return 1
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
        password="" if passwords else secrets.token_urlsafe(12),
        admin_password=admin_password,
        ip=args.ip,
        port=args.port,
        hub_port=_hub_port(state_dir),
        proxy_api_port=free_port(),
        service_port=free_port(),
        simulate_gpus=args.simulate_gpus,
        proxy_command=proxy,
        singleuser_command=singleuser,
        keep_servers=args.keep_servers,
        culling=not args.no_culling,
        extra_config=extra,
        db_url=args.db_url,
        passwords_file=passwords,
    )
    if not _upgrade_ledger(settings.ledger_url):
        return 1
    return Supervisor(settings, catalog, gpus).run()


def _upgrade_ledger(url: str) -> bool:
    """Create or upgrade the billing schema (as `gpuhub db upgrade` does); False after saying
    why it failed."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..ledger.engine import redacted, upgrade

    try:
        upgrade(url)
    except (SQLAlchemyError, OSError) as exc:
        shown = redacted(url)
        print(f"gpuhub up: cannot create the billing database {shown}: {exc}", file=sys.stderr)
        return False
    return True


def _gpus(spec: str, catalog: Catalog) -> str | None:
    """How the banner describes the GPUs; None (after printing why) for a bad spec."""
    from ..local.inventory import discover, parse_simulation

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
