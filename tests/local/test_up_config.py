"""`gpuhub up` with a further config file that logs in some other way: its shared-password admin
is nobody there, so nobody inherits that admin's usage-report role by name."""

from __future__ import annotations

from traitlets.config import Config

from spawner_ext.up import drop_shared_admin


def config(authenticator: str) -> Config:
    c = Config()
    c.JupyterHub.authenticator_class = authenticator
    c.JupyterHub.load_roles = [
        {"name": "gpuhub-service", "services": ["gpu-usage"]},
        {"name": "gpu-usage-admin", "users": ["admin"], "scopes": ["custom:gpu-usage:read"]},
    ]
    return c


def test_another_authenticator_drops_the_shared_admins_role() -> None:
    c = config("jupyterhub.authenticators.shared.SharedPasswordAuthenticator")
    sub = Config()
    sub.JupyterHub.authenticator_class = "generic-oauth"
    sub.JupyterHub.load_roles.append({"name": "gpu-usage-admin-groups", "groups": ["admins"]})
    c.merge(sub)  # what load_subconfig does
    drop_shared_admin(c)
    assert [r["name"] for r in c.JupyterHub.load_roles] == [
        "gpuhub-service",
        "gpu-usage-admin-groups",
    ]


def test_the_shared_password_keeps_it_and_other_admins_stay() -> None:
    kept = config("jupyterhub.authenticators.shared.SharedPasswordAuthenticator")
    drop_shared_admin(kept)
    assert [r["name"] for r in kept.JupyterHub.load_roles] == ["gpuhub-service", "gpu-usage-admin"]
    pam = config("pam")
    pam.JupyterHub.load_roles[1]["users"] = ["admin", "root"]
    drop_shared_admin(pam)
    assert pam.JupyterHub.load_roles[1]["users"] == ["root"]
