"""How a hub registers the gpuhub service: its entry in `c.JupyterHub.services` and the role it
gets, least privilege (to list servers with their state, and to stop them). Pure."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

SERVICE_NAME = "gpu-usage"
"""The service's name: JupyterHub serves it under /services/gpu-usage/."""
ROLE_NAME = "gpuhub-service"
SCOPES = (
    "list:users",  # page through the users with running servers
    "read:users:name",
    "read:servers",  # their servers ...
    "admin:server_state",  # ... with spawner state (session, GPUs, pid or pod)
    "servers",  # stop servers (budget enforcement, later culling)
)


def service_command(
    catalog_path: str, ledger_url: str, runtime: str, python: str = sys.executable
) -> list[str]:
    """`gpuhub service` with the hub's own Python (so it runs whatever gpuhub the hub has)."""
    return [
        python,
        "-m",
        "spawner_ext",
        "service",
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
) -> dict[str, list[dict[str, Any]]]:
    """`{"services": [...], "load_roles": [...]}` to add to JupyterHub's own lists."""
    service: dict[str, Any] = {
        "name": SERVICE_NAME,
        "display": True,
        "url": f"http://127.0.0.1:{port}",
        "command": service_command(catalog_path, ledger_url, runtime, python),
    }
    if environment:
        service["environment"] = dict(environment)
    role = {
        "name": ROLE_NAME,
        "description": "The gpuhub service: reconcile billing, enforce budgets, stop servers",
        "scopes": list(SCOPES),
        "services": [SERVICE_NAME],
    }
    return {"services": [service], "load_roles": [role]}


def register(c: Any, registration: Mapping[str, list[dict[str, Any]]]) -> None:
    """Append the service and its role to a traitlets config `c`, keeping what is there."""
    for trait in ("services", "load_roles"):
        current = list(c.JupyterHub[trait]) if trait in c.JupyterHub else []
        names = {entry.get("name") for entry in current}
        current += [entry for entry in registration[trait] if entry["name"] not in names]
        c.JupyterHub[trait] = current
