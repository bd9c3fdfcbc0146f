"""helm-values/ with the real Zero to JupyterHub 4.4.0 chart and real Helm: the values lint and
match the chart's schema, the rendered manifests (and helm-values/gpuhub/'s) are accepted by a real
API server, and the chart's own hub configuration, run on what Helm rendered, starts gpuhub:
GPUKubeSpawner spawns a GPU pod into a team namespace with the hub's own ServiceAccount (so the
RBAC is enough), the gpuhub service meters it, and a catalog edit applies without a restart.
The values file is the one the docs show (tests/test_docs.py checks the tutorial includes it)."""

from __future__ import annotations

import copy
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml
from chart import (
    CHART,
    GPUHUB_CHART,
    VALUES,
    ChartError,
    ChartHub,
    api_path,
    documents,
    find,
    helm,
    helm_binary,
    secret_data,
    service_account_token,
)
from testbed import H100, ApiError, ControlPlane, free_port

from spawner_ext.ledger.models import UsageSession
from tests.faultdriver import PodWatcher, check_billing, sessions_since

pytestmark = pytest.mark.k8s

HERE = Path(__file__).resolve().parent
RELEASE = "jhub"
VALUE_FILES = ["values.yaml", "values-postgresql.yaml", "values-oidc.yaml"]
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
JH55 = HERE.parents[1] / ".venv-jh55" / "bin" / "python"
TOLERANCE = 2 + 2.0  # the catalog's reconcile tick and the measuring slack (as test_faults.py)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_catalog(team_namespace: str) -> dict[str, Any]:
    return {
        "metering": {"currency": "USD", "reconcile_interval": "2s"},
        "kubernetes": {"namespace_template": team_namespace},
        "gpu_types": {
            "h100-80gb": {
                "display_name": "NVIDIA H100 80GB",
                "resource": "nvidia.com/gpu",
                "price_per_hour": 4.10,
                "node_selector": {"nvidia.com/gpu.product": H100.product},
                "tolerations": TOLERATIONS,
            }
        },
        "teams": {"vision": {"users": ["ada"], "quota": {"gpus": {"h100-80gb": 2}}}},
        "profiles": [
            {"display_name": "CPU only", "slug": "cpu-small", "default": True},
            {
                "display_name": "One H100 80GB",
                "slug": "h100-single",
                "gpu": {"type": "h100-80gb", "count": 1},
            },
        ],
    }


test_catalog.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    try:
        return helm_binary()
    except ChartError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def render(helm_bin: Path, home: Path, namespace: str, *extra: str) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    args += ["--values", str(VALUES / "values.yaml"), *extra]
    return documents(helm(helm_bin, *args, home=home))


def render_gpuhub(
    helm_bin: Path, home: Path, namespace: str, catalog: Path, *extra: str
) -> list[dict[str, Any]]:
    args = ["template", "gpuhub", str(GPUHUB_CHART), "--namespace", namespace, *extra]
    return documents(helm(helm_bin, *args, "--set-file", f"catalog={catalog}", home=home))


def test_values_lint_and_match_the_charts_schema(helm_bin: Path, helm_home: Path) -> None:
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    merged = chart_defaults
    for name in VALUE_FILES:
        args = ["lint", str(CHART), "--strict", "--values", str(VALUES / "values.yaml")]
        if name != "values.yaml":
            args += ["--values", str(VALUES / name)]
        helm(helm_bin, *args, home=helm_home)
        merged = deep_merge(merged, yaml.safe_load((VALUES / name).read_text()))
        jsonschema.validate(merged, schema)
    # A misspelt key is refused by the chart's schema (helm would say so too).
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(deep_merge(merged, {"hub": {"extraConfg": {}}}), schema)
    helm(helm_bin, "lint", str(GPUHUB_CHART), "--strict", "--set", "catalog=x: 1", home=helm_home)


def test_the_gpuhub_chart_refuses_an_empty_catalog(helm_bin: Path, helm_home: Path) -> None:
    with pytest.raises(ChartError, match="pass the catalog file with --set-file"):
        helm(helm_bin, "template", "gpuhub", str(GPUHUB_CHART), home=helm_home)


def test_the_rendered_manifests_are_accepted_by_the_api_server(
    helm_bin: Path, helm_home: Path, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text((VALUES.parent / "hub_config" / "catalog.yaml").read_text())
    rendered = render(helm_bin, helm_home, namespace, "--values", str(VALUES / "values-oidc.yaml"))
    rendered += render_gpuhub(helm_bin, helm_home, namespace, catalog)
    kinds = sorted({doc["kind"] for doc in rendered})
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret"} <= set(kinds)
    for doc in rendered:
        try:
            control_plane.api.request(
                "POST", api_path(doc, namespace), doc, params={"dryRun": "All"}
            )
        except ApiError as error:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} refused: {error}")
    hub = find(rendered, "Deployment", "hub")
    pod = hub["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "subPath" not in mounts["/etc/gpuhub"], "a subPath mount never sees ConfigMap edits"
    service = find(rendered, "Service", "hub")
    assert 10101 in [p["port"] for p in service["spec"]["ports"]]
    values = yaml.safe_load(secret_data(find(rendered, "Secret", "hub"))["values.yaml"])
    assert values["cull"]["enabled"] is False
    # The service's cookie secret: the gpuhub release's Secret, in the hub's environment.
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    ref = env["GPUHUB_SERVICE_COOKIE_SECRET"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("gpuhub-service", "cookie-secret")
    secret = secret_data(find(rendered, "Secret", "gpuhub-service"))["cookie-secret"]
    assert re.fullmatch("[0-9a-f]{64}", secret), secret


def test_the_service_cookie_secret_may_be_given_and_a_bad_one_is_refused(
    helm_bin: Path, helm_home: Path, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("x: 1\n")
    given = "0123456789abcdef" * 4
    rendered = render_gpuhub(
        helm_bin, helm_home, "jhub", catalog, "--set-string", f"serviceCookieSecret={given}"
    )
    assert secret_data(find(rendered, "Secret", "gpuhub-service"))["cookie-secret"] == given
    with pytest.raises(ChartError, match="serviceCookieSecret must be 64 or more hex digits"):
        render_gpuhub(
            helm_bin, helm_home, "jhub", catalog, "--set-string", "serviceCookieSecret=abc"
        )


def test_the_service_cookie_secret_is_made_once_and_kept_across_upgrades(
    helm_bin: Path, helm_home: Path, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """`helm install`, then `helm upgrade` against the real API server: the Secret's value is
    generated once, then read back (`lookup`), so an upgrade logs nobody out."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text((VALUES.parent / "hub_config" / "catalog.yaml").read_text())
    release = f"gpuhub-{namespace}"
    cluster = ["--namespace", namespace, "--kubeconfig", str(control_plane.kubeconfig)]
    chart = [str(GPUHUB_CHART), *cluster, "--set-file", f"catalog={catalog}"]
    path = f"/api/v1/namespaces/{namespace}/secrets/gpuhub-service"
    try:
        helm(helm_bin, "install", release, *chart, home=helm_home)
        first = secret_data(control_plane.api.get(path))["cookie-secret"]
        assert re.fullmatch("[0-9a-f]{64}", first), first
        helm(helm_bin, "upgrade", release, *chart, home=helm_home)
        assert secret_data(control_plane.api.get(path))["cookie-secret"] == first
    finally:
        helm(helm_bin, "uninstall", release, *cluster, home=helm_home)


# --- the chart's own hub configuration, run ---------------------------------------------------


@pytest.fixture(scope="module")
def chart_hub(
    helm_bin: Path,
    helm_home: Path,
    control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartHub]:
    import os

    if os.geteuid() != 0:
        pytest.skip("running the chart's hub needs root (a private mount namespace)")
    if not JH55.exists():
        pytest.skip("no .venv-jh55 (scripts/bootstrap jh55): the z2jh 4.4.0 Python versions")
    suffix = secrets.token_hex(3)
    namespace, team_namespace = f"z2-{suffix}", f"z2-{suffix}-{{team}}"
    control_plane.add_kwok_gpu_nodes(1, H100)
    api = control_plane.api
    api.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    workdir = tmp_path_factory.mktemp("chart-hub")
    catalog = test_catalog(team_namespace)
    catalog_file = workdir / "catalog-input.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog, sort_keys=False))
    rendered = render(
        helm_bin,
        helm_home,
        namespace,
        # The test bed has no storage provisioner: home directories are not made.
        "--set",
        "singleuser.storage.type=none",
        # Its API server allows no privileged containers (the chart's iptables init container).
        "--set",
        "singleuser.cloudMetadata.blockWithIptables=false",
        # It runs the default scheduler only, not the chart's user-scheduler Deployment.
        "--set",
        "scheduling.userScheduler.enabled=false",
        # A stock z2jh profileList left in the values: the hub must say it is not used.
        "--set",
        "singleuser.profileList[0].display_name=Old z2jh profile",
    )
    gpuhub = render_gpuhub(helm_bin, helm_home, namespace, catalog_file)
    # What `helm install` would create and the hub's own permissions come from: its
    # ServiceAccount, the chart's Role and RoleBinding, gpuhub's ClusterRole and binding.
    for doc in [*rendered, *gpuhub]:
        if doc["kind"] in (
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
        ):
            api.create(api_path(doc, namespace), doc)
    token = secrets.token_hex(16)
    stub_port = free_port()
    test_config = f"""\
# The test bed's stand-ins (tests/k8s/hub.py): kwok pods run no process, so their URL points at
# a stub in the hub; users come from JupyterHub's dummy authenticator; the tests' admin token.
import sys
sys.path.insert(0, {str(HERE)!r})
from hub import kwok_aware, serve_stub
serve_stub({stub_port})
c.JupyterHub.spawner_class = kwok_aware("gpuhub-kube", {stub_port})
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Spawner.start_timeout = 60
c.JupyterHub.services.append({{"name": "tests", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "tests",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "read:hub",
               "list:services", "read:services", "access:services"],
    "services": ["tests"],
}})
"""
    hub = ChartHub(
        control_plane,
        workdir,
        [*rendered, *gpuhub],
        namespace=namespace,
        catalog=catalog,
        kube_token=service_account_token(control_plane, namespace, "hub"),
        python=JH55,
        test_config=test_config,
    )
    hub.token = token  # type: ignore[attr-defined]
    hub.team_namespace = team_namespace.format(team="vision")  # type: ignore[attr-defined]
    hub.catalog = catalog  # type: ignore[attr-defined]
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def call(hub: ChartHub, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"token {hub.token}"}  # type: ignore[attr-defined]
    return requests.request(method, f"{hub.url}{path}", headers=headers, timeout=30, **kwargs)


def sessions(hub: ChartHub) -> list[tuple[Any, ...]]:
    with sqlite3.connect(hub.ledger_path) as db:
        return db.execute(
            "SELECT user, profile, gpu_count, started_at, ended_at, end_reason"
            " FROM usage_sessions ORDER BY id"
        ).fetchall()


def test_the_charts_hub_runs_gpuhub(chart_hub: ChartHub) -> None:
    log = chart_hub.log(400)
    assert "Loading extra config: gpuhub" in log
    assert "singleuser.profileList is set" in log, "a profileList is never silently ignored"
    services = call(chart_hub, "GET", "hub/api/services").json()
    assert services["gpu-usage"]["url"] == "http://hub:10101"
    status = chart_hub.wait(
        "the gpuhub service to tick",
        lambda: (
            (r := call(chart_hub, "GET", "services/gpu-usage/api/v1/status")).ok
            and r.json().get("ticks", 0) > 0
            and r.json()
        ),
    )
    assert status["runtime"] == "kubernetes"
    assert status["failing"] is False and "last_error" not in status, "counts and times only"
    # The Secret's cookie secret reached the service through the hub (z2jh.py): no warning
    # that every restart logs usage-page readers out.
    assert "log in again after every restart" not in chart_hub.log(400)


def test_a_gpu_server_spawns_through_the_charts_hub_and_is_billed(chart_hub: ChartHub) -> None:
    api = chart_hub.plane.api
    assert call(chart_hub, "POST", "hub/api/users/ada").status_code in (201, 409)
    response = call(chart_hub, "POST", "hub/api/users/ada/server", json={"profile": "h100-single"})
    assert response.status_code in (201, 202), response.text
    model = chart_hub.wait(
        "ada's server",
        lambda: (
            (s := call(chart_hub, "GET", "hub/api/users/ada").json()["servers"].get(""))
            and s["ready"]
            and s
        ),
        timeout=120,
    )
    state = model["state"]
    assert state["namespace"] == chart_hub.team_namespace  # type: ignore[attr-defined]
    pod = api.get(f"/api/v1/namespaces/{state['namespace']}/pods/{state['pod_name']}")
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["GPUHUB_SERVICE_URL"] == "http://hub:10101/services/gpu-usage/"
    quota = api.get(f"/api/v1/namespaces/{state['namespace']}/resourcequotas/gpuhub-gpus")
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "2"}
    (session,) = sessions(chart_hub)
    assert session[:3] == ("ada", "h100-single", 1) and session[3] is not None
    assert call(chart_hub, "DELETE", "hub/api/users/ada/server").status_code in (202, 204)
    chart_hub.wait("ada's session to close", lambda: sessions(chart_hub)[0][4] is not None)
    assert sessions(chart_hub)[0][5] == "stopped"


def test_a_catalog_edit_applies_without_a_restart_and_a_bad_one_keeps_the_last_good(
    chart_hub: ChartHub,
) -> None:
    pid = chart_hub.process.pid if chart_hub.process else None
    catalog = copy.deepcopy(chart_hub.catalog)  # type: ignore[attr-defined]
    assert call(chart_hub, "POST", "hub/api/users/lin").status_code in (201, 409)
    catalog["teams"]["vision"]["users"].append("lin")
    catalog["profiles"].append({"display_name": "Small CPU", "slug": "cpu-tiny"})
    chart_hub.write_catalog(catalog)

    def spawned() -> bool:
        response = call(chart_hub, "POST", "hub/api/users/lin/server", json={"profile": "cpu-tiny"})
        return response.status_code in (201, 202)

    chart_hub.wait("the new profile to be accepted", spawned, timeout=60)
    broken = copy.deepcopy(catalog)
    broken["profiles"].append({"display_name": "Typo", "slug": "typo", "gpu": {"tipe": "x"}})
    chart_hub.write_catalog(broken)
    chart_hub.wait("the bad edit to be reported", lambda: "catalog.yaml:" in chart_hub.log(400))
    assert chart_hub.process is not None and chart_hub.process.pid == pid, "no restart"
    call(chart_hub, "DELETE", "hub/api/users/lin/server")


def test_a_killed_hub_started_again_on_the_same_values_keeps_every_server_billed_once(
    chart_hub: ChartHub,
) -> None:
    """Hub failover as the chart's Deployment does it: the hub's pod is killed (SIGKILL to the
    hub, its proxy and the gpuhub service at once) with two GPU servers running, and a new one
    starts on the same values and the same databases (srv/jupyterhub: JupyterHub's and the
    ledger). The servers' pods are untouched (same uids, Running throughout), a new spawn works,
    and every server is billed once, for its life as a watcher of the API server saw it.
    Prints the time until the REST API answers and until the new spawn is ready (no timing is
    asserted). Broken once: JupyterHub's database deleted while the hub was down (the new hub
    knows neither the users nor their servers), and the test failed. Deleting the ledger
    instead does not fail it, by design: reconciliation adopts the running servers from their
    pods' start times, so they are billed in full."""
    api = chart_hub.plane.api
    namespace = chart_hub.team_namespace  # type: ignore[attr-defined]
    catalog = copy.deepcopy(chart_hub.catalog)  # type: ignore[attr-defined]
    catalog["teams"]["vision"]["users"] = ["ada", "bob", "cy"]
    catalog["teams"]["vision"]["quota"]["gpus"]["h100-80gb"] = 3
    for user in ("ada", "bob", "cy"):
        assert call(chart_hub, "POST", f"hub/api/users/{user}").status_code in (201, 409)
    chart_hub.write_catalog(catalog)
    since = datetime.now(UTC)
    watcher = PodWatcher(lambda: api.get(f"/api/v1/namespaces/{namespace}/pods")["items"])
    watcher.start()

    def spawned(user: str) -> bool:
        body = {"profile": "h100-single"}
        response = call(chart_hub, "POST", f"hub/api/users/{user}/server", json=body)
        return response.status_code in (201, 202)

    def ready(user: str) -> Any:
        server = call(chart_hub, "GET", f"hub/api/users/{user}").json()["servers"].get("")
        return server and server["ready"] and server

    for user in ("ada", "bob"):  # bob is in the team once the new catalog is in force
        chart_hub.wait(f"{user}'s spawn to be accepted", lambda u=user: spawned(u), timeout=60)
    for user in ("ada", "bob"):
        chart_hub.wait(f"{user}'s server", lambda u=user: ready(u), timeout=120)
    listed = api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    running = {p["metadata"]["uid"] for p in listed}
    assert len(running) == 2

    killed = time.monotonic()
    moment = datetime.now(UTC).isoformat()
    chart_hub.kill()
    chart_hub.start()  # returns once hub/api/ answers
    api_back = time.monotonic() - killed
    chart_hub.wait("cy's spawn to be accepted", lambda: spawned("cy"), timeout=60)
    chart_hub.wait("cy's server", lambda: ready("cy"), timeout=120)
    spawn_back = time.monotonic() - killed
    print(
        f"hub killed and started again: REST API after {api_back:.1f} s, "
        f"a new GPU spawn ready after {spawn_back:.1f} s"
    )
    pods = api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    kept = {p["metadata"]["uid"] for p in pods if p["status"].get("phase") == "Running"}
    assert running < kept and len(kept) == 3, "the two servers' pods untouched, cy's added"
    assert all(ready(user) for user in ("ada", "bob")), "the new hub has them ready"
    chart_hub.wait(
        "the new service to tick",
        lambda: (
            (r := call(chart_hub, "GET", "services/gpu-usage/api/v1/status")).ok
            and (r.json().get("last_tick_at") or "") > moment
        ),
    )
    open_sessions = [s for s in ledger_sessions(chart_hub, since) if s.ended_at is None]
    assert sorted(s.user for s in open_sessions) == ["ada", "bob", "cy"], "one each, still billed"

    time.sleep(2 * TOLERANCE + 1)  # cy's server lives long enough to check its billing
    for user in ("ada", "bob", "cy"):
        assert call(chart_hub, "DELETE", f"hub/api/users/{user}/server").status_code in (202, 204)
    lifetimes = watcher.stop()
    chart_hub.wait(
        "every session to close",
        lambda: all(s.ended_at for s in ledger_sessions(chart_hub, since)),
    )
    figures = check_billing(ledger_sessions(chart_hub, since), lifetimes, TOLERANCE)
    assert figures["shortest_s"] > 2 * TOLERANCE, "servers live long enough to tell"


def ledger_sessions(hub: ChartHub, since: datetime) -> list[UsageSession]:
    return sessions_since(f"sqlite:///{hub.ledger_path}", since)
