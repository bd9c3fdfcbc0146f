"""Two installs on one cluster: two hubs, each with its gpuhub service and its own ledger, on one
API server. Each bills, reconciles and ends only its own servers; team namespaces and their
objects are per install; a team namespace of another install refuses the spawn; and pods from
before installs were told apart (no install label) go on being billed by the hub that lists them,
and are never ended as strays by the one that does not.

Checked with the services ticking every second (start_grace 4 s, so that a service that took
another install's pod for a stray would delete it within the test): pods are read from the API
server, sessions from each ledger, both independently of the services' own accounting.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import HubError, K8sHub, delete_namespaces, running_hub
from sqlalchemy import update
from sqlalchemy.orm import Session
from testbed import H100, ControlPlane, GpuNodeSpec, Json

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from tests.faultdriver import sessions_since

pytestmark = pytest.mark.k8s

POOL_LABEL = "gpuhub.test/pool"
TICK = 1
GRACE = 4
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
INSTALL = "gpuhub.io/install"


def catalog(pool: str, template: str) -> Json:
    return {
        "metering": {
            "currency": "USD",
            "reconcile_interval": f"{TICK}s",
            "start_grace": f"{GRACE}s",
        },
        "kubernetes": {"namespace_template": template},
        "gpu_types": {
            "h100-80gb": {
                "display_name": "NVIDIA H100 80GB",
                "resource": "nvidia.com/gpu",
                "price_per_hour": 4.10,
                "node_selector": {"nvidia.com/gpu.product": H100.product, POOL_LABEL: pool},
                "tolerations": TOLERATIONS,
            }
        },
        "teams": {"vision": {"users": ["ada", "lin"], "quota": {"gpus": {"h100-80gb": 4}}}},
        "profiles": [
            {"display_name": "CPU only", "slug": "cpu-small", "default": True},
            {
                "display_name": "One H100 80GB",
                "slug": "h100-single",
                "gpu": {"type": "h100-80gb", "count": 1},
            },
        ],
    }


@dataclasses.dataclass
class Installs:
    pool: str
    blue: K8sHub
    green: K8sHub

    def team_namespace(self, install: str) -> str:
        return f"gh-{self.pool}-{install}-vision"


@pytest.fixture(scope="module")
def installs(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installs]:
    pool = secrets.token_hex(3)
    labels = {POOL_LABEL: pool}
    nodes = control_plane.add_kwok_gpu_nodes(1, dataclasses.replace(H100, gpus=4, labels=labels))
    cpu_only = GpuNodeSpec(product="none", gpus=0, mig_resources={}, labels=labels, tainted=False)
    nodes += control_plane.add_kwok_gpu_nodes(1, cpu_only)  # for CPU-only servers
    template = f"gh-{pool}-{{install}}-{{team}}"
    namespaces = [f"gh-{pool}-{name}" for name in ("blue-hub", "green-hub", "legacy")]
    namespaces += [f"gh-{pool}-{name}-vision" for name in ("blue", "green")]
    try:
        with (
            running_hub(
                control_plane,
                tmp_path_factory.mktemp("blue"),
                namespace=f"gh-{pool}-blue-hub",
                catalog=catalog(pool, template),
                install="blue",
            ) as blue,
            running_hub(
                control_plane,
                tmp_path_factory.mktemp("green"),
                namespace=f"gh-{pool}-green-hub",
                catalog=catalog(pool, template),
                install="green",
            ) as green,
        ):
            for hub in (blue, green):
                hub.create_users(["ada", "lin"])
            yield Installs(pool, blue, green)
    finally:
        delete_namespaces(control_plane, namespaces)
        for node in nodes:
            control_plane.api.delete(f"/api/v1/nodes/{node}")


def pods(plane: ControlPlane, namespace: str) -> dict[str, Json]:
    found = plane.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    return {p["metadata"]["name"]: p for p in found if not p["metadata"].get("deletionTimestamp")}


def sessions(hub: K8sHub) -> list[UsageSession]:
    assert hub.ledger_url is not None
    return sessions_since(hub.ledger_url)


def wait_ticks(hub: K8sHub, count: int) -> None:
    """Let the service tick `count` times (its status counts ticks)."""
    url = f"{hub.url}services/gpu-usage/api/v1/status"

    def ticks() -> int:
        return int(hub.session.get(url, timeout=10).json()["ticks"])

    target = hub.wait("the service to answer", ticks, 60) + count
    hub.wait(f"{count} ticks of the service", lambda: ticks() >= target, 30 * count)


def test_two_installs_bill_and_keep_only_their_own_servers(
    installs: Installs, control_plane: ControlPlane
) -> None:
    """Breaking the install filter (the service reading every install's pods) made each ledger
    adopt the other install's pods, and each service delete them as strays."""
    blue, green = installs.blue, installs.green
    for hub in (blue, green):
        for user, profile in (("ada", "h100-single"), ("lin", "cpu-small")):
            response = hub.spawn(user, {"profile": profile})
            assert response.status_code in (201, 202), response.text
    started = {
        (name, user): hub.ready_pod(user)
        for name, hub in (("blue", blue), ("green", green))
        for user in ("ada", "lin")
    }
    for (name, _user), pod in started.items():
        assert pod["metadata"]["labels"][INSTALL] == name
        assert pod["metadata"]["namespace"] == installs.team_namespace(name)
    for name in ("blue", "green"):
        namespace = control_plane.api.get(f"/api/v1/namespaces/{installs.team_namespace(name)}")
        assert namespace["metadata"]["labels"][INSTALL] == name
        quota = control_plane.api.get(
            f"/api/v1/namespaces/{installs.team_namespace(name)}/resourcequotas/gpuhub-gpus"
        )
        assert quota["metadata"]["labels"][INSTALL] == name
    wait_ticks(blue, GRACE + 3)
    wait_ticks(green, 2)
    for name, hub in (("blue", blue), ("green", green)):
        rows = sessions(hub)
        assert {row.install for row in rows} == {name}, "only its own install's sessions"
        keys = {row.uid for row in rows if row.ended_at is None}
        labelled = {
            started[(name, user)]["metadata"]["labels"]["gpuhub.io/session"]
            for user in ("ada", "lin")
        }
        assert keys == labelled, "one open session per own pod, and none for the other's"
        assert len(rows) == 2, [(r.user, r.runtime_ref, r.end_reason) for r in rows]
        running = pods(control_plane, installs.team_namespace(name))
        assert {p["metadata"]["uid"] for p in running.values()} == {
            started[(name, user)]["metadata"]["uid"] for user in ("ada", "lin")
        }, "every pod still runs"
    for hub in (blue, green):
        for user in ("ada", "lin"):
            hub.stop_server(user)


def test_a_team_namespace_of_another_install_refuses_the_spawn(
    installs: Installs, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """A third hub whose catalog forgets {install}: its team namespace would be green's."""
    green = installs.green
    shared = f"gh-{installs.pool}-green-vision"
    with running_hub(
        control_plane,
        tmp_path,
        namespace=f"gh-{installs.pool}-legacy",
        catalog=catalog(installs.pool, shared.replace("vision", "{team}")),
        install="careless",
    ) as careless:
        careless.create_users(["ada"])
        response = careless.spawn("ada", {"profile": "cpu-small"})
        if response.status_code in (201, 202):
            with pytest.raises(HubError):
                careless.wait_ready("ada", timeout=60)
            message = careless.log(400)
        else:
            message = response.text
        assert "belongs to the gpuhub install 'green'" in message, message
        assert "{install}" in message
    assert pods(control_plane, shared) == {}
    quota = control_plane.api.get(f"/api/v1/namespaces/{shared}/resourcequotas/gpuhub-gpus")
    assert quota["metadata"]["labels"][INSTALL] == "green", "left alone"
    assert green.server("ada") is None


def test_pods_from_before_installs_are_billed_by_the_hub_that_lists_them(
    installs: Installs, control_plane: ControlPlane
) -> None:
    """An upgrade: blue's server runs on a pod without the install label and with a session
    of no install (as written before this version). Blue goes on billing it; green, which
    does not list it, neither adopts nor ends it. Breaking the unlabelled-pod rule (taking
    every unlabelled pod as ours) made green adopt it and then delete it as a stray."""
    blue, green = installs.blue, installs.green
    response = blue.spawn("ada", {"profile": "h100-single"})
    assert response.status_code in (201, 202), response.text
    pod = blue.ready_pod("ada")
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
    control_plane.api.merge_patch(path, {"metadata": {"labels": {INSTALL: None}}})
    key = meta["labels"]["gpuhub.io/session"]
    assert blue.ledger_url is not None
    ledger = Ledger.open(blue.ledger_url)
    try:
        with Session(ledger.engine) as db, db.begin():
            db.execute(update(UsageSession).where(UsageSession.uid == key).values(install=None))
    finally:
        ledger.engine.dispose()
    (before,) = [row for row in sessions(blue) if row.uid == key]
    time.sleep(1)
    wait_ticks(green, GRACE + 3)
    wait_ticks(blue, 2)
    (after,) = [row for row in sessions(blue) if row.uid == key]
    assert after.ended_at is None, "still billed"
    assert after.install == "blue", "claimed by the install whose running server carries it"
    assert after.last_seen_at is not None and before.last_seen_at is not None
    assert after.last_seen_at > before.last_seen_at, "seen by blue's ticks"
    assert [
        row for row in sessions(green) if row.runtime_ref == f"{meta['namespace']}/{meta['name']}"
    ] == []
    still = control_plane.api.get(path)
    assert still["metadata"]["uid"] == meta["uid"] and not still["metadata"].get(
        "deletionTimestamp"
    )
    blue.stop_server("ada")
    (stopped,) = [row for row in sessions(blue) if row.uid == key]
    assert stopped.end_reason == "stopped" and (stopped.gpu_seconds or 0) > 0
