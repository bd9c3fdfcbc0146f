"""`gpuhub up`'s JupyterHub settings: with --passwords, each user's own password (the file's
authenticator) instead of the shared one; the service's cookie secret kept in the state
directory; and with a further config file that logs in some other way, its admin is nobody
there, so nobody inherits that admin's usage-report role by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from spawner_ext.up import UpSettings, drop_shared_admin, example_catalog, hub_config


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


def test_the_password_file_keeps_it_too() -> None:
    kept = config("spawner_ext.up.passwords.PasswordFileAuthenticator")
    drop_shared_admin(kept)
    assert [r["name"] for r in kept.JupyterHub.load_roles] == ["gpuhub-service", "gpu-usage-admin"]


def settings(tmp_path: Path, **changes: str) -> UpSettings:
    env = {
        "GPUHUB_CATALOG": str(example_catalog()),
        "GPUHUB_STATE_DIR": str(tmp_path / "state"),
        "GPUHUB_ADMIN_PASSWORD": "a" * 40,
        **changes,
    }
    return UpSettings.from_env(env)


def test_the_shared_password_by_default(tmp_path: Path) -> None:
    config = hub_config(settings(tmp_path, GPUHUB_PASSWORD="shared-password"))
    assert config["JupyterHub"]["authenticator_class"].endswith(".SharedPasswordAuthenticator")
    assert config["SharedPasswordAuthenticator"]["user_password"] == "shared-password"
    assert "PasswordFileAuthenticator" not in config


def test_a_passwords_file_replaces_the_shared_password(tmp_path: Path) -> None:
    file = tmp_path / "pw.yaml"
    s = settings(tmp_path, GPUHUB_PASSWORDS_FILE=str(file))
    assert (s.password, s.passwords_file) == ("", file)
    assert UpSettings.from_env(s.to_env()) == s
    config = hub_config(s)
    assert config["JupyterHub"]["authenticator_class"] == (
        "spawner_ext.up.passwords.PasswordFileAuthenticator"
    )
    assert config["PasswordFileAuthenticator"] == {
        "allow_all": True,  # only the file's users (and admin) can log in
        "passwords_file": str(file),
        "admin_users": {"admin"},
        "admin_password": "a" * 40,
    }
    assert "SharedPasswordAuthenticator" not in config
    with pytest.raises(ValueError, match="or GPUHUB_PASSWORDS_FILE"):
        settings(tmp_path)


def test_the_services_cookie_secret_lives_in_the_state_directory(tmp_path: Path) -> None:
    config = hub_config(settings(tmp_path, GPUHUB_PASSWORD="shared-password"))
    (service,) = config["JupyterHub"]["services"]
    command = service["command"]
    index = command.index("--cookie-secret-file")
    assert command[index + 1] == str(tmp_path / "state" / "gpuhub-service-cookie-secret")


def test_the_service_gets_the_notification_secrets_the_catalog_names(tmp_path: Path) -> None:
    """JupyterHub starts its services with a bare environment: the SMTP password and the webhook
    secret the catalog names reach the service, and nothing else of the hub's environment."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        example_catalog().read_text()
        + """
notifications:
  email:
    smtp: "mail.example.org:587"
    from: "gpuhub <gpuhub@example.org>"
    username: gpuhub
    password_env: GPUHUB_SMTP_PASSWORD
  webhook:
    url: "https://hooks.example.org/gpuhub"
    secret_env: GPUHUB_WEBHOOK_SECRET
"""
    )
    s = settings(tmp_path, GPUHUB_PASSWORD="shared-password", GPUHUB_CATALOG=str(catalog))
    environ = {"GPUHUB_SMTP_PASSWORD": "pw", "GPUHUB_WEBHOOK_SECRET": "sig", "HOME": "/root"}
    (service,) = hub_config(s, environ)["JupyterHub"]["services"]
    assert service["environment"] == {"GPUHUB_SMTP_PASSWORD": "pw", "GPUHUB_WEBHOOK_SECRET": "sig"}
    plain = settings(tmp_path, GPUHUB_PASSWORD="shared-password")
    (plain_service,) = hub_config(plain, environ)["JupyterHub"]["services"]
    assert "environment" not in plain_service, "no notifications: nothing passed"
