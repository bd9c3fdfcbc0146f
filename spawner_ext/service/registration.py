"""How a hub registers the gpuhub service: its entry in `c.JupyterHub.services`, the role it
gets (least privilege: to list servers with their state, and to stop them), the custom scope of
its usage reports with a role per team for the catalog's `leads` and one for admins, and access
to the service for every user (their own usage), and the home page's extension (hub/home.py:
running servers' GPUs and cost). Pure."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ..catalog import Catalog
from ..hub.home import home_page_config
from ..wire import SERVICE_NAME

ROLE_NAME = "gpuhub-service"
SCOPES = (
    "list:users",  # page through the users with running servers
    "read:users:name",
    "read:users:groups",  # a user's groups (their teams), when an admin joins the line for them
    "read:servers",  # their servers ...
    "admin:server_state",  # ... with spawner state (session, GPUs, pid or pod)
    "servers",  # start servers at their turn in line; stop them (budgets, culling)
)
READ_SCOPE = "custom:gpu-usage:read"
"""Read usage reports: unfiltered every team; `!group=<team key>` one team."""
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
SERVER_SCOPES = ("users:activity!user", "access:servers!server")
"""JupyterHub's default scopes of the `server` role (servers' own tokens)."""
DEFAULTS = {"user": ["self"], "server": list(SERVER_SCOPES)}
"""JupyterHub's default roles that get the service's access scope, with their defaults."""
CUSTOM_SCOPES = {
    READ_SCOPE: {
        "description": "Read GPU usage and cost reports of teams (filter !group=<team> for one)."
    }
}


def lead_role_name(team: str) -> str:
    return f"gpu-usage-lead-{team}"


def report_roles(catalog: Catalog | None, admin_users: Iterable[str]) -> list[dict[str, Any]]:
    """A role per team with leads (its leads' users and groups), and one for the admins."""
    roles: list[dict[str, Any]] = []
    if catalog is not None:
        for key, team in sorted(catalog.teams.items()):
            if not (team.leads.users or team.leads.groups):
                continue
            roles.append(
                {
                    "name": lead_role_name(key),
                    "description": f"Lead of team {key}: read its GPU usage reports",
                    "scopes": [f"{READ_SCOPE}!group={key}", ACCESS_SCOPE],
                    "users": list(team.leads.users),
                    "groups": list(team.leads.groups),
                }
            )
    admins = sorted(admin_users)
    if admins:
        roles.append(
            {
                "name": "gpu-usage-admin",
                "description": "Read every team's GPU usage reports and the catalog's status",
                "scopes": [READ_SCOPE, ACCESS_SCOPE],
                "users": admins,
            }
        )
    return roles


def service_command(
    catalog_path: str,
    ledger_url: str,
    runtime: str,
    python: str = sys.executable,
    *,
    cookie_secret_file: str | None = None,
    install: str | None = None,
) -> list[str]:
    """`gpuhub service` with the hub's own Python (so it runs whatever gpuhub the hub has)."""
    secret = ["--cookie-secret-file", cookie_secret_file] if cookie_secret_file else []
    secret += ["--install", install] if install else []
    return [
        python,
        "-m",
        "spawner_ext",
        "service",
        *secret,
        "--catalog",
        catalog_path,
        "--db-url",
        ledger_url,
        "--runtime",
        runtime,
    ]


def service_config(
    catalog_path: str,
    ledger_url: str,
    runtime: str,
    *,
    port: int,
    environment: Mapping[str, str] | None = None,
    python: str = sys.executable,
    catalog: Catalog | None = None,
    admin_users: Iterable[str] = (),
    culling: bool = True,
    resource_quotas: bool = True,
    url: str | None = None,
    cookie_secret_file: str | None = None,
    install: str | None = None,
) -> dict[str, Any]:
    """`{"services": [...], "load_roles": [...], "custom_scopes": {...}, "template_paths":
    [...], "template_vars": {...}}` to add to JupyterHub's own settings. Roles of `catalog`'s
    leads are made when the hub starts: a change of leads takes a hub restart (JupyterHub loads
    roles at start only). `culling=False` leaves culling to stock jupyterhub-idle-culler
    (service/arbiter.py offers it gpuhub's policy). `resource_quotas=False`: the service keeps
    no team ResourceQuotas (set the spawner's `manage_resource_quotas` False with it). `url`:
    where the proxy (and notebook servers) reach the service, when not on this machine
    (Kubernetes: the hub Service's extra port); the service then listens on every interface of
    `port`. `cookie_secret_file`: where the service
    keeps the secret of its logins (made at its first start), so that its restarts log nobody
    out; on Kubernetes the secret comes in GPUHUB_SERVICE_COOKIE_SECRET (`environment`)
    instead. `install`: the hub's install name (its spawner's `install`), which the service
    minds only the servers and sessions of."""
    command = service_command(
        catalog_path,
        ledger_url,
        runtime,
        python,
        cookie_secret_file=cookie_secret_file,
        install=install,
    )
    if not culling:
        command.append("--no-culling")
    if not resource_quotas:
        command.append("--no-resource-quotas")
    if url is not None:
        command += ["--ip", "0.0.0.0", "--port", str(port)]
    service: dict[str, Any] = {
        "name": SERVICE_NAME,
        "display": True,
        "url": url or f"http://127.0.0.1:{port}",
        "command": command,
        "oauth_client_allowed_scopes": [READ_SCOPE],
        "oauth_no_confirm": True,
    }
    if environment:
        service["environment"] = dict(environment)
    role = {
        "name": ROLE_NAME,
        "description": "The gpuhub service: reconcile billing, enforce budgets, stop servers",
        "scopes": list(SCOPES),
        "services": [SERVICE_NAME],
    }
    users = {"name": "user", "scopes": ["self", ACCESS_SCOPE]}
    # Servers' own tokens (JUPYTERHUB_API_TOKEN): JupyterHub's defaults, plus reaching this
    # service, where the notebook extension reports GPU activity and Keep clicks.
    servers = {"name": "server", "scopes": [*SERVER_SCOPES, ACCESS_SCOPE]}
    return {
        "services": [service],
        "load_roles": [role, users, servers, *report_roles(catalog, admin_users)],
        "custom_scopes": dict(CUSTOM_SCOPES),
        **home_page_config(),
    }


def register(c: Any, registration: Mapping[str, Any]) -> None:
    """Add the service, its roles and scopes to a traitlets config `c`, keeping what is there
    (a `user` or `server` role of the config's own gets the service's access scope added)."""
    for trait in ("services", "load_roles"):
        current = [dict(e) for e in c.JupyterHub[trait]] if trait in c.JupyterHub else []
        names = {entry.get("name"): entry for entry in current}
        for entry in registration[trait]:
            mine = names.get(entry["name"])
            if mine is None:
                current.append(entry)
            elif entry["name"] in DEFAULTS and ACCESS_SCOPE not in mine.get("scopes", []):
                mine["scopes"] = [*mine.get("scopes", DEFAULTS[entry["name"]]), ACCESS_SCOPE]
        c.JupyterHub[trait] = current
    scopes = dict(c.JupyterHub.custom_scopes) if "custom_scopes" in c.JupyterHub else {}
    c.JupyterHub.custom_scopes = {**registration["custom_scopes"], **scopes}
    # The config's own templates come first (its home.html, if any, wins); so do its variables.
    paths = list(c.JupyterHub.template_paths) if "template_paths" in c.JupyterHub else []
    c.JupyterHub.template_paths = paths + [
        p for p in registration["template_paths"] if p not in paths
    ]
    variables = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
    c.JupyterHub.template_vars = {**registration["template_vars"], **variables}
