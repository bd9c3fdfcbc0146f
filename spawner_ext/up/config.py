"""`gpuhub up` settings and the JupyterHub configuration built from them. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..catalog import load_catalog
from ..install import LOCAL
from ..service.notifier import secret_environment
from ..service.registration import service_config

DEFAULT_PORT = 8000
DEFAULT_HUB_PORT = 8081
DEFAULT_PROXY_API_PORT = 8001
DEFAULT_SERVICE_PORT = 8002
DEFAULT_STATE_DIR = ".gpuhub"
ADMIN_USER = "admin"
SHARED_PASSWORD_AUTHENTICATOR = "jupyterhub.authenticators.shared.SharedPasswordAuthenticator"
PASSWORD_FILE_AUTHENTICATOR = "spawner_ext.up.passwords.PasswordFileAuthenticator"
SERVICE_COOKIE_SECRET = "gpuhub-service-cookie-secret"
"""The gpuhub service's cookie secret, in the state directory (made at its first start)."""
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 60.0
LOG_TAIL_LINES = 30

CONFIG_FILE_TEXT = '''\
"""JupyterHub configuration of `gpuhub up` (local mode): GPULocalSpawner, a shared password (or
a password per user), SQLite and configurable-http-proxy, every setting read from GPUHUB_*
environment variables.

`gpuhub up` writes this file into its state directory and runs `jupyterhub -f` on it. To run
JupyterHub yourself with it instead, e.g.:
    GPUHUB_PASSWORD=choose-one GPUHUB_SIMULATE_GPUS=2xh100-80gb jupyterhub -f jupyterhub_config.py
The variables are listed in docs/reference/cli.md. GPUHUB_JUPYTERHUB_CONFIG names a further
config file, loaded last so that its settings win.
"""

import os

from spawner_ext.up import configure, drop_shared_admin

c = get_config()  # noqa: F821
configure(c, os.environ)
if os.environ.get("GPUHUB_JUPYTERHUB_CONFIG"):
    load_subconfig(os.environ["GPUHUB_JUPYTERHUB_CONFIG"])  # noqa: F821
    drop_shared_admin(c)
'''
"""The JupyterHub config file; `hub_config/jupyterhub_config.py` is a copy (a test keeps it so)."""


# --- settings and the JupyterHub configuration (pure) -------------------------------------------


@dataclass(frozen=True)
class UpSettings:
    """Everything the hub of `gpuhub up` is configured from; travels as GPUHUB_* variables."""

    catalog: Path
    state_dir: Path
    password: str
    """The shared password ('' with `passwords_file`)."""
    admin_password: str = ""
    ip: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    hub_port: int = DEFAULT_HUB_PORT
    proxy_api_port: int = DEFAULT_PROXY_API_PORT
    service_port: int = DEFAULT_SERVICE_PORT
    simulate_gpus: str = ""
    proxy_command: str = "configurable-http-proxy"
    singleuser_command: str = "jupyterhub-singleuser"
    keep_servers: bool = False
    culling: bool = True
    extra_config: Path | None = None
    db_url: str = ""
    """The billing database given with --db-url (e.g. PostgreSQL); '' for the default."""
    passwords_file: Path | None = None
    """--passwords: each user's own password, instead of the shared one."""

    @property
    def ledger_url(self) -> str:
        """The billing database (quotas, budgets, metering): --db-url, else SQLite in the state
        directory."""
        return self.db_url or f"sqlite:///{self.state_dir / 'gpuhub-ledger.sqlite'}"

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
            "GPUHUB_SERVICE_PORT": str(self.service_port),
            "GPUHUB_SIMULATE_GPUS": self.simulate_gpus,
            "GPUHUB_PROXY_COMMAND": self.proxy_command,
            "GPUHUB_SINGLEUSER_COMMAND": self.singleuser_command,
            "GPUHUB_KEEP_SERVERS": "1" if self.keep_servers else "",
            "GPUHUB_NO_CULLING": "" if self.culling else "1",
        }
        if self.extra_config is not None:
            env["GPUHUB_JUPYTERHUB_CONFIG"] = str(self.extra_config)
        if self.db_url:
            env["GPUHUB_DB_URL"] = self.db_url
        if self.passwords_file is not None:
            env["GPUHUB_PASSWORDS_FILE"] = str(self.passwords_file)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpSettings:
        """Read the GPUHUB_* variables; unset ones take `gpuhub up`'s defaults. Raises ValueError
        naming the variable that is missing or wrong."""
        password = env.get("GPUHUB_PASSWORD", "")
        passwords = env.get("GPUHUB_PASSWORDS_FILE")
        if len(password) < 8 and not passwords:
            raise ValueError(
                "set GPUHUB_PASSWORD to the password users log in with (8 characters or more), "
                "or GPUHUB_PASSWORDS_FILE to a file of each user's own password"
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
            service_port=port("GPUHUB_SERVICE_PORT", DEFAULT_SERVICE_PORT),
            simulate_gpus=env.get("GPUHUB_SIMULATE_GPUS", ""),
            proxy_command=env.get("GPUHUB_PROXY_COMMAND") or "configurable-http-proxy",
            singleuser_command=env.get("GPUHUB_SINGLEUSER_COMMAND") or "jupyterhub-singleuser",
            keep_servers=bool(env.get("GPUHUB_KEEP_SERVERS")),
            culling=not env.get("GPUHUB_NO_CULLING"),
            extra_config=Path(extra).absolute() if extra else None,
            db_url=env.get("GPUHUB_DB_URL", ""),
            passwords_file=Path(passwords).absolute() if passwords else None,
        )


def hub_config(
    s: UpSettings, environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """JupyterHub settings, as {class name: {trait: value}}, for the local mode of `s`;
    `environ`: the hub's environment, where the service's notification secrets come from."""
    state = s.state_dir
    authenticator: dict[str, Any] = {"allow_all": True}
    if s.passwords_file is not None:
        # The file's users, each with their own password; `admin` is the file's or else logs in
        # with the admin password.
        authenticator_class, section = PASSWORD_FILE_AUTHENTICATOR, "PasswordFileAuthenticator"
        authenticator["passwords_file"] = str(s.passwords_file)
        admins = {ADMIN_USER}
    else:
        authenticator_class, section = SHARED_PASSWORD_AUTHENTICATOR, "SharedPasswordAuthenticator"
        authenticator["user_password"] = s.password
        admins = {ADMIN_USER} if s.admin_password else set()
    if admins:
        authenticator["admin_users"] = admins
    if s.admin_password:
        authenticator["admin_password"] = s.admin_password
    catalog = load_catalog(s.catalog)
    service = service_config(
        str(s.catalog),
        s.ledger_url,
        "local",
        port=s.service_port,
        environment=secret_environment(catalog, environ or {}),
        catalog=catalog,
        admin_users=admins,
        culling=s.culling,
        cookie_secret_file=str(state / SERVICE_COOKIE_SECRET),
        install=LOCAL,
    )
    return {
        "JupyterHub": {
            "bind_url": f"http://{_url_host(s.ip)}:{s.port}/",
            "hub_ip": "127.0.0.1",
            "hub_port": s.hub_port,
            "db_url": f"sqlite:///{state / 'jupyterhub.sqlite'}",
            "cookie_secret_file": str(state / "jupyterhub_cookie_secret"),
            "pid_file": str(state / "jupyterhub.pid"),
            "authenticator_class": authenticator_class,
            "spawner_class": "spawner_ext.local.spawner.GPULocalSpawner",
            "cleanup_servers": not s.keep_servers,
            "services": service["services"],
            "load_roles": service["load_roles"],
            "custom_scopes": service["custom_scopes"],
            "template_paths": service["template_paths"],
            "template_vars": service["template_vars"],
        },
        section: authenticator,
        "GPULocalSpawner": {
            "catalog_path": str(s.catalog),
            "ledger_url": s.ledger_url,
            "install": LOCAL,  # the service's too (service_config above)
            "simulated_gpus": s.simulate_gpus,
            "fake_nvml_config": str(state / "fake-nvml.conf") if s.simulate_gpus else "",
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
    for section, traits in hub_config(settings, env).items():
        for name, value in traits.items():
            c[section][name] = value


def drop_shared_admin(c: Any) -> None:
    """After a further config file: if it chose another authenticator (OAuth, PAM, ...) than
    gpuhub up's (the shared password, or the passwords file), the admin of those (ADMIN_USER)
    is nobody there, so it loses its usage-report role; a user of that name at the identity
    provider must not inherit it. (A subconfig merges into `c` and cannot remove roles
    itself.)"""
    authenticator = str(c.JupyterHub.get("authenticator_class", ""))
    if authenticator.endswith(("SharedPasswordAuthenticator", "PasswordFileAuthenticator")):
        return
    roles = []
    for role in c.JupyterHub.get("load_roles", []):
        if role.get("name") == "gpu-usage-admin" and ADMIN_USER in role.get("users", []):
            users = [u for u in role["users"] if u != ADMIN_USER]
            if not users:
                continue
            role = {**role, "users": users}
        roles.append(role)
    c.JupyterHub.load_roles = roles


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def example_catalog() -> Path:
    """The example catalog shipped in the package (a copy of hub_config/catalog.yaml)."""
    return Path(str(resources.files("spawner_ext") / "examples" / "catalog.yaml"))
