"""How a hub registers the gpuhub service: its entry, its roles and scopes, kept beside what a
config already has."""

from __future__ import annotations

from pathlib import Path

from traitlets.config import Config

from spawner_ext.catalog import load_catalog
from spawner_ext.hub.home import TEMPLATE_VAR, TEMPLATES, home_servers
from spawner_ext.service.registration import (
    ACCESS_SCOPE,
    READ_SCOPE,
    register,
    service_config,
)

CATALOG = Path(__file__).parents[1] / "hub_config" / "catalog.yaml"


def registration() -> dict[str, object]:
    return service_config(
        str(CATALOG),
        "sqlite://",
        "local",
        port=1,
        catalog=load_catalog(CATALOG),
        admin_users={"root"},
    )


def test_leads_get_their_teams_scope_and_admins_every_team() -> None:
    roles = {r["name"]: r for r in registration()["load_roles"]}  # type: ignore[attr-defined]
    vision = roles["gpu-usage-lead-vision"]
    assert vision["scopes"] == [f"{READ_SCOPE}!group=vision", ACCESS_SCOPE]
    assert (vision["users"], vision["groups"]) == (["ada"], ["vision-leads"])
    assert roles["gpu-usage-lead-teaching"]["users"] == []
    assert roles["gpu-usage-admin"]["scopes"] == [READ_SCOPE, ACCESS_SCOPE]
    assert roles["gpu-usage-admin"]["users"] == ["root"]
    assert roles["user"]["scopes"] == ["self", ACCESS_SCOPE], "everyone reads their own usage"


def test_register_keeps_the_configs_own_roles_services_and_scopes() -> None:
    c = Config()
    c.JupyterHub.services = [{"name": "other", "api_token": "x"}]
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "access:servers!user"]}]
    c.JupyterHub.custom_scopes = {"custom:other:read": {"description": "theirs"}}
    c.JupyterHub.template_paths = ["/etc/jupyterhub/templates"]
    c.JupyterHub.template_vars = {"gpuhub_servers": "theirs", "org": "Example"}
    register(c, registration())
    register(c, registration())  # twice: nothing is added twice
    assert [s["name"] for s in c.JupyterHub.services] == ["other", "gpu-usage"]
    names = [r["name"] for r in c.JupyterHub.load_roles]
    assert len(names) == len(set(names))
    (user,) = [r for r in c.JupyterHub.load_roles if r["name"] == "user"]
    assert user["scopes"] == ["self", "access:servers!user", ACCESS_SCOPE]
    assert set(c.JupyterHub.custom_scopes) == {"custom:other:read", READ_SCOPE}
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "gpu-usage"]
    assert service["oauth_client_allowed_scopes"] == [READ_SCOPE]
    assert c.JupyterHub.template_paths == ["/etc/jupyterhub/templates", str(TEMPLATES)]
    assert c.JupyterHub.template_vars == {"gpuhub_servers": "theirs", "org": "Example"}


def test_register_extends_the_home_page() -> None:
    c = Config()
    register(c, registration())
    assert c.JupyterHub.template_paths == [str(TEMPLATES)]
    assert c.JupyterHub.template_vars == {TEMPLATE_VAR: home_servers}
    assert (TEMPLATES / "home.html").read_text().count('{% extends "templates/home.html" %}') == 1
