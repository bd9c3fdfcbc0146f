"""What `hub.extraConfig` of helm-values/values.yaml does to the chart's config: its settings
(`custom.gpuhub`), checked with clear errors, and the wiring it adds. The whole path, with the
chart's own configuration and real Helm, is tests/k8s/test_z2jh_chart.py."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from spawner_ext.z2jh import Settings, SettingsError, configure, plan

ROOT = Path(__file__).parents[2]
CATALOG = str(ROOT / "hub_config" / "catalog.yaml")


def test_defaults_are_the_values_files() -> None:
    assert plan(None) == Settings()
    assert plan({}) == Settings()
    assert plan({"servicePort": 10200, "culling": False}) == Settings(
        service_port=10200, culling=False
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ledgerURL": "x"}, "unknown key(s) ledgerURL; the keys are catalogPath, ledgerUrl"),
        ({"servicePort": "10101"}, "servicePort must be a int, not '10101'"),
        ({"servicePort": True}, "servicePort must be a int, not True"),
        ({"servicePort": 70000}, "servicePort must be a port number"),
        ({"servicePort": 8081}, "8081 is the hub's own port"),
        ({"culling": "yes"}, "culling must be a bool"),
        ({"catalogPath": "catalog.yaml"}, "catalogPath must be an absolute path"),
        ({"install": "Prod_1"}, "custom.gpuhub.install: the install name 'Prod_1' is not valid"),
        ({"install": 3}, "install must be a str"),
    ],
)
def test_bad_settings_say_which_key_and_what_to_write(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(settings)


def chart_config() -> Config:
    """What the chart's jupyterhub_config.py has set when hub.extraConfig runs (in part)."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.JupyterHub.services = [{"name": "jupyterhub-idle-culler", "command": ["x"]}]
    c.JupyterHub.load_roles = []
    c.Authenticator.admin_users = {"root"}
    return c


def test_configure_wires_the_spawner_the_service_and_the_schema() -> None:
    c = chart_config()
    upgraded: list[str] = []
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "HOME": "/x",
        "GPUHUB_SERVICE_COOKIE_SECRET": "ab" * 32,
    }
    configure(
        c,
        {"catalogPath": CATALOG, "ledgerUrl": "sqlite:////srv/l.sqlite"},
        hub_host="jhub-hub",
        environ=env,
        upgrade=upgraded.append,
    )
    assert c.JupyterHub.spawner_class == "gpuhub-kube"
    assert c.GPUKubeSpawner.catalog_path == CATALOG
    assert c.GPUKubeSpawner.ledger_url == "sqlite:////srv/l.sqlite"
    assert c.GPUKubeSpawner.activity_url == "http://jhub-hub:10101/services/gpu-usage/"
    assert upgraded == ["sqlite:////srv/l.sqlite"]
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert "jupyterhub-idle-culler" in services, "the chart's own services are kept"
    ours = services["gpu-usage"]
    assert ours["url"] == "http://jhub-hub:10101"
    assert ours["command"][-4:] == ["--ip", "0.0.0.0", "--port", "10101"]
    assert ours["environment"] == {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "GPUHUB_SERVICE_COOKIE_SECRET": "ab" * 32,  # from the Secret: logins outlive restarts
    }
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["gpu-usage-admin"]["users"] == ["root"]
    assert "access:services!service=gpu-usage" in roles["server"]["scopes"]


def test_with_culling_off_servers_still_report_and_hear_the_budget_notice() -> None:
    """`custom.gpuhub.culling: false` (stock jupyterhub-idle-culler culls): the service runs
    with --no-culling, and notebook pods still get its URL and may reach it, so their reports
    are answered with the team's budget notice."""
    c = chart_config()
    configure(
        c, {"catalogPath": CATALOG, "culling": False}, hub_host="jhub-hub", upgrade=lambda url: None
    )
    ours = {s["name"]: s for s in c.JupyterHub.services}["gpu-usage"]
    assert "--no-culling" in ours["command"]
    assert c.GPUKubeSpawner.activity_url == "http://jhub-hub:10101/services/gpu-usage/"
    assert 10101 in c.GPUKubeSpawner.hub_ports, "the team namespaces' policy lets pods reach it"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "access:services!service=gpu-usage" in roles["server"]["scopes"]


def test_resource_quotas_off_turns_them_off_in_the_hub_and_the_service() -> None:
    """`custom.gpuhub.resourceQuotas: false`: neither the hub (when it makes a namespace) nor
    the service (every tick) keeps team ResourceQuotas; on by default in both. Broken once:
    the service registered without the flag, and it kept the quotas the hub left out."""
    c = chart_config()
    configure(c, {"catalogPath": CATALOG}, hub_host="jhub-hub", upgrade=lambda url: None)
    ours = {s["name"]: s for s in c.JupyterHub.services}["gpu-usage"]
    assert c.GPUKubeSpawner.manage_resource_quotas is True
    assert "--no-resource-quotas" not in ours["command"]

    c = chart_config()
    configure(
        c,
        {"catalogPath": CATALOG, "resourceQuotas": False},
        hub_host="jhub-hub",
        upgrade=lambda url: None,
    )
    ours = {s["name"]: s for s in c.JupyterHub.services}["gpu-usage"]
    assert c.GPUKubeSpawner.manage_resource_quotas is False
    assert "--no-resource-quotas" in ours["command"]


def test_a_spawner_of_the_operators_own_is_kept_and_upgrades_can_be_left_out() -> None:
    c = chart_config()
    c.JupyterHub.spawner_class = "mypkg.MyGPUKubeSpawner"
    upgraded: list[str] = []
    configure(c, {"catalogPath": CATALOG, "upgradeDatabase": False}, upgrade=upgraded.append)
    assert c.JupyterHub.spawner_class == "mypkg.MyGPUKubeSpawner"
    assert upgraded == []


def test_a_profile_list_in_the_values_is_reported_and_not_used() -> None:
    c = chart_config()
    c.KubeSpawner.profile_list = [{"display_name": "Old"}]
    out = io.StringIO()
    configure(c, {"catalogPath": CATALOG}, upgrade=lambda url: None, out=out)
    assert "singleuser.profileList is set" in out.getvalue()
    assert "gpuhub migrate" in out.getvalue()
    assert c.KubeSpawner.profile_list == []
    quiet = io.StringIO()
    configure(chart_config(), {"catalogPath": CATALOG}, upgrade=lambda url: None, out=quiet)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("settings", "environ", "install"),
    [
        ({}, {"POD_NAMESPACE": "jhub", "HELM_RELEASE_NAME": "jhub"}, "jhub"),
        ({}, {"POD_NAMESPACE": "research", "HELM_RELEASE_NAME": "staging"}, "research-staging"),
        ({"install": "prod"}, {"POD_NAMESPACE": "jhub"}, "prod"),
    ],
)
def test_the_spawner_and_the_service_share_one_install_name(
    settings: dict[str, Any], environ: dict[str, str], install: str
) -> None:
    c = chart_config()
    configure(c, {"catalogPath": CATALOG, **settings}, environ=environ, upgrade=lambda url: None)
    assert c.GPUKubeSpawner.install == install
    command = {s["name"]: s for s in c.JupyterHub.services}["gpu-usage"]["command"]
    assert command[command.index("--install") + 1] == install


def test_the_service_gets_the_notification_secrets_from_the_hubs_environment(
    tmp_path: Path,
) -> None:
    """The SMTP password the catalog names (hub.extraEnv from a Secret) reaches the service,
    which JupyterHub starts with a bare environment."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        Path(CATALOG).read_text()
        + "\nnotifications:\n  email:\n    smtp: mail.example.org:587\n"
        + '    from: "gpuhub@example.org"\n    username: gpuhub\n'
        + "    password_env: GPUHUB_SMTP_PASSWORD\n"
    )
    c = chart_config()
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "GPUHUB_SMTP_PASSWORD": "pw", "HOME": "/x"}
    configure(
        c, {"catalogPath": str(catalog)}, hub_host="jhub-hub", environ=env, upgrade=lambda u: None
    )
    ours = {s["name"]: s for s in c.JupyterHub.services}["gpu-usage"]
    assert ours["environment"] == {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "GPUHUB_SMTP_PASSWORD": "pw",
    }
