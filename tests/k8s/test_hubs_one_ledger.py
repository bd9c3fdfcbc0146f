"""Two hubs, one cluster, one ledger: two departments' hubs (installs `dept-a` and `dept-b`, each
with its gpuhub service) share one PostgreSQL billing database and one API server with kwok GPU
nodes. A team's quota holds across both under concurrent spawns on both at once; one user name
is one person for the per-user cap on both; a team's budget counts its spend on both; a lead's
report on one hub's service covers the team on both; and each service reconciles, culls and
ends only its own install's servers, never another install's sessions, even while the other
install's hub and service are down.

Pods are read from the API server and sessions from the ledger, each independently of the
services' own accounting. The services tick every second (start_grace 4 s: a service that took
the other install's pod for a stray would delete it within the test).
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from hub import VENV_BIN, K8sHub, delete_namespaces, running_hub, server_path
from testbed import H100, POOL_LABEL, ControlPlane, GpuNodeSpec, Json, pooled_h100_type

from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.models import UsageSession
from tests.faultdriver import sessions_since

pytestmark = [pytest.mark.k8s, pytest.mark.postgres]

TICK = 1
GRACE = 4
INSTALL = "gpuhub.io/install"
TEAM = "gpuhub.io/team"
A, B = "dept-a", "dept-b"
VISION = [f"v{n}" for n in range(10)]
"""Team vision: 4 H100s, no per-user cap; its lead is vera."""
VISION_QUOTA = 4
BUDGET_HOURS = "0.003"
"""Team teaching's monthly budget: 10.8 GPU-seconds."""
USERS = [*VISION, "vera", "grace", "sam"]


def catalog(pool: str) -> Json:
    """The one catalog both hubs load (a shared ledger needs the same teams, quotas and
    budgets on every hub)."""
    return {
        "metering": {
            "currency": "USD",
            "reconcile_interval": f"{TICK}s",
            "start_grace": f"{GRACE}s",
        },
        "culling": {"interval": "1s"},
        "kubernetes": {"namespace_template": f"hl-{pool}-{{install}}-{{team}}"},
        "gpu_types": {"h100-80gb": pooled_h100_type(pool)},
        "teams": {
            "vision": {
                "users": VISION,
                "leads": {"users": ["vera"]},
                "quota": {"gpus": {"h100-80gb": VISION_QUOTA}},
            },
            "nlp": {"users": ["grace"], "quota": {"gpus": {"h100-80gb": 2}, "gpus_per_user": 1}},
            "teaching": {
                "users": ["sam"],
                "quota": {"gpus": {"h100-80gb": 2}, "monthly_gpu_hours": float(BUDGET_HOURS)},
            },
        },
        "profiles": [
            {"display_name": "CPU only", "slug": "cpu-small", "default": True},
            {
                "display_name": "One H100 80GB",
                "slug": "h100-single",
                "gpu": {"type": "h100-80gb", "count": 1},
            },
            {
                "display_name": "One H100 80GB, for a few seconds",
                "slug": "h100-brief",
                "gpu": {"type": "h100-80gb", "count": 1},
                "max_age": "6s",
            },
        ],
    }


@dataclasses.dataclass
class Hubs:
    pool: str
    ledger_url: str
    a: K8sHub
    b: K8sHub


@pytest.fixture(scope="module")
def ledger_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database, upgraded once for both hubs."""
    from tests.postgres import fresh_database

    for url in fresh_database(request):
        done = subprocess.run(
            [str(VENV_BIN / "gpuhub"), "db", "upgrade", "--db-url", url],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield url


@pytest.fixture(scope="module")
def hubs(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory, ledger_url: str
) -> Iterator[Hubs]:
    pool = secrets.token_hex(3)
    labels = {POOL_LABEL: pool}
    nodes = control_plane.add_kwok_gpu_nodes(2, dataclasses.replace(H100, labels=labels))
    cpu_only = GpuNodeSpec(product="none", gpus=0, mig_resources={}, labels=labels, tainted=False)
    nodes += control_plane.add_kwok_gpu_nodes(1, cpu_only)
    namespaces = [f"hl-{pool}-{name}-hub" for name in (A, B)]
    namespaces += [f"hl-{pool}-{i}-{t}" for i in (A, B) for t in ("vision", "nlp", "teaching")]
    settings: dict[str, Any] = {
        "catalog": catalog(pool),
        "ledger_url": ledger_url,
        # the tests' admin service may make users' tokens (to call the report API as a lead)
        "extra_config": 'c.JupyterHub.load_roles[0]["scopes"].append("tokens")',
    }
    try:
        with (
            running_hub(
                control_plane,
                tmp_path_factory.mktemp(A),
                namespace=f"hl-{pool}-{A}-hub",
                install=A,
                **settings,
            ) as a,
            running_hub(
                control_plane,
                tmp_path_factory.mktemp(B),
                namespace=f"hl-{pool}-{B}-hub",
                install=B,
                **settings,
            ) as b,
        ):
            for hub in (a, b):
                hub.create_users(USERS)
            yield Hubs(pool, ledger_url, a, b)
    finally:
        delete_namespaces(control_plane, namespaces)
        for node in nodes:
            control_plane.api.delete(f"/api/v1/nodes/{node}")


# --- reading the truth: pods from the API server, sessions from the ledger ----------------------


def live_pods(plane: ControlPlane, hubs: Hubs, team: str) -> list[Json]:
    """The team's pods in both installs' team namespaces, not being deleted."""
    found: list[Json] = []
    for install in (A, B):
        namespace = f"hl-{hubs.pool}-{install}-{team}"
        items = plane.api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        found += [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return found


def sessions(hubs: Hubs) -> list[UsageSession]:
    return sessions_since(hubs.ledger_url)


def started(hub: K8sHub, user: str, profile: str = "h100-single") -> Json:
    """Spawn `user`'s server on `hub` and return its running pod."""
    response = hub.spawn(user, {"profile": profile})
    assert response.status_code in (201, 202), response.text
    return hub.ready_pod(user)


def settle(hub: K8sHub, user: str) -> bool:
    """Wait until `user`'s spawn on `hub` is over: True when its server is ready, False when
    it is gone (refused, or failed after the POST answered)."""

    def over() -> str | None:
        model = hub.server(user)
        if model is None:
            return "gone"
        return "ready" if model["ready"] else None

    return bool(hub.wait(f"{user}'s spawn to end", over, 150) == "ready")


def stop_all(hub: K8sHub, users: list[str]) -> None:
    for user in users:
        if hub.server(user) is not None:
            hub.stop_server(user)


def service_status(hub: K8sHub) -> Json:
    status: Json = hub.session.get(f"{hub.url}services/gpu-usage/api/v1/status", timeout=10).json()
    return status


def wait_ticks(hub: K8sHub, count: int) -> None:
    """Let the service tick `count` times (its status counts ticks)."""

    def ticks() -> int:
        return int(service_status(hub)["ticks"])

    target = hub.wait("the service to answer", ticks, 60) + count
    hub.wait(f"{count} ticks of the service", lambda: ticks() >= target, 30 * count)


def token_of(hub: K8sHub, user: str) -> str:
    response = hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


# --- the tests --------------------------------------------------------------------------------


def test_a_teams_quota_holds_across_both_hubs_under_concurrent_spawns(
    hubs: Hubs, control_plane: ControlPlane
) -> None:
    """Ten people of team vision (4 H100s; 16 on the nodes) spawn at the same moment, five on
    each hub. Exactly 4 pods of the team run, counted from the API server, and the ledger's
    open sessions are theirs. Broken once: admission reading only the spawning install's open
    sessions (of_install in admission_reads' sessions statement): 8 ran, 4 per hub."""
    on = {user: (hubs.a if n % 2 == 0 else hubs.b) for n, user in enumerate(VISION)}

    def spawn(user: str) -> int:
        hub = on[user]
        response = requests.post(
            f"{hub.url}hub/api{server_path(user)}",
            json={"profile": "h100-single"},
            headers={"Authorization": f"token {hub.token}"},
            timeout=120,
        )
        return response.status_code

    try:
        with ThreadPoolExecutor(len(VISION)) as pool:
            codes = dict(zip(VISION, pool.map(spawn, VISION), strict=True))
        assert set(codes.values()) <= {201, 202, 400}, codes
        ready = [user for user in VISION if settle(on[user], user)]
        running = [
            p for p in live_pods(control_plane, hubs, "vision") if p["status"]["phase"] == "Running"
        ]
        gpus = sum(int(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                   for p in running)  # fmt: skip
        assert gpus <= VISION_QUOTA, [p["metadata"]["labels"][INSTALL] for p in running]
        assert gpus == VISION_QUOTA, "16 GPUs on the nodes: the quota, not the nodes, limits"
        assert len(ready) == VISION_QUOTA
        open_rows = [s for s in sessions(hubs) if s.team == "vision" and s.ended_at is None]
        assert sorted(s.uid for s in open_rows) == sorted(
            p["metadata"]["labels"]["gpuhub.io/session"] for p in running
        )
        for row in open_rows:
            assert row.install == (A if on[row.user] is hubs.a else B)
    finally:
        for hub in (hubs.a, hubs.b):
            stop_all(hub, [u for u in VISION if on[u] is hub])


def test_one_user_name_on_two_hubs_is_one_person_for_the_per_user_cap(hubs: Hubs) -> None:
    """grace (team nlp: 2 H100s, at most 1 per person) holds one on hub A; on hub B her spawn
    is refused by the cap, although her team has room there. Broken once: as in the race
    test (admission reading only its own install's sessions): hub B admitted her second GPU."""
    started(hubs.a, "grace")
    try:
        refused = hubs.b.spawn("grace", {"profile": "h100-single"})
        assert refused.status_code == 400, refused.text
        message = refused.json()["message"]
        assert "you may hold 1 GPUs at once in team 'nlp' and hold 1" in message, message
        assert hubs.b.server("grace") is None
    finally:
        stop_all(hubs.a, ["grace"])


def test_a_teams_budget_counts_its_spend_on_both_hubs(hubs: Hubs) -> None:
    """sam's team (teaching) has 10.8 GPU-seconds a month. His server runs on hub B past that;
    then his spawn on hub A (the same user and server name) is refused for the budget, and
    his server on B goes on: A's spawn did not take B's session for a stale one of its own.
    Broken once: as in the race test: hub A admitted him."""
    pod = started(hubs.b, "sam")
    try:
        time.sleep(13)  # > 10.8 GPU-seconds since the pod runs (billing starts at Running)
        refused = hubs.a.spawn("sam", {"profile": "h100-single"})
        assert refused.status_code == 400, refused.text
        assert "team 'teaching' has used its monthly budget" in refused.json()["message"]
        (row,) = [s for s in sessions(hubs) if s.user == "sam"]
        assert row.install == B and row.ended_at is None
        assert row.uid == pod["metadata"]["labels"]["gpuhub.io/session"]
    finally:
        stop_all(hubs.b, ["sam"])


def test_a_leads_report_covers_the_team_on_every_hub(hubs: Hubs) -> None:
    """vera leads vision. v0 runs on hub A, v1 on hub B; asked on hub A's service, the usage
    report has every session of the team in the ledger (both installs), and the live
    allocations list both servers with their installs. Broken once: the allocations reading
    the service's own install's sessions (as before this test): v1's server was missing."""
    pods = {"v0": started(hubs.a, "v0"), "v1": started(hubs.b, "v1")}
    try:
        token = token_of(hubs.a, "vera")
        base = f"{hubs.a.url}services/gpu-usage/api/v1"
        headers = {"Authorization": f"token {token}"}
        usage = requests.get(
            f"{base}/usage", params={"team": "vision", "by": "user,session"}, headers=headers,
            timeout=30,
        )  # fmt: skip
        assert usage.status_code == 200, usage.text
        reported = {row["session"] for row in usage.json()["rows"]}
        # a report has the sessions with billed time (a server stopped within its first
        # second is billed 0 seconds, and has no row)
        in_ledger = [
            s
            for s in sessions(hubs)
            if s.team == "vision" and s.started_at and (s.ended_at is None or s.gpu_seconds)
        ]
        assert {s.install for s in in_ledger} == {A, B}
        assert reported == {s.uid for s in in_ledger}
        live = requests.get(f"{base}/allocations", headers=headers, timeout=30)
        assert live.status_code == 200, live.text
        found = {(a["user"], a["install"]) for a in live.json()["allocations"]}
        assert found == {("v0", A), ("v1", B)}
        assert {p["metadata"]["labels"][INSTALL] for p in pods.values()} == {A, B}
    finally:
        stop_all(hubs.a, ["v0"])
        stop_all(hubs.b, ["v1"])


def test_a_gpu_freed_on_one_hub_serves_the_line_on_the_other(
    hubs: Hubs, control_plane: ControlPlane
) -> None:
    """Team vision's 4 H100s run on hub B; v7's spawn on hub A is refused for the team's quota
    and v7 joins hub A's line. Through several of A's ticks v7 waits (the line counts the
    team's servers on B); when one of them stops on B, A's service gives v7 the turn and
    starts the server on A. Broken once: the line's team standing reading only its own
    install's sessions (of_install in line.py's `_standing`): v7's request was given its turn
    (`starting`) while B's four ran."""
    on_b = ["v3", "v4", "v5", "v6"]
    token = token_of(hubs.a, "v7")
    waitlist = f"{hubs.a.url}services/gpu-usage/api/v1/waitlist"
    headers = {"Authorization": f"token {token}"}
    request: Json = {}
    try:
        for user in on_b:
            started(hubs.b, user)
        refused = hubs.a.spawn("v7", {"profile": "h100-single"})
        assert refused.status_code == 400, refused.text
        assert "team 'vision' may hold 4" in refused.json()["message"]
        joined = requests.post(
            waitlist, json={"profile": "h100-single", "start": "auto"}, headers=headers,
            timeout=60,
        )  # fmt: skip
        assert joined.status_code == 201, joined.text
        request = joined.json()
        wait_ticks(hubs.a, 3)
        mine = requests.get(f"{waitlist}/{request['id']}", headers=headers, timeout=60).json()
        assert mine["state"] == "waiting", mine
        assert hubs.a.server("v7") is None
        hubs.b.stop_server("v3")
        hubs.a.wait("A's service to start v7's server", lambda: hubs.a.server("v7"), 60)
        pod = hubs.a.ready_pod("v7")
        assert pod["metadata"]["labels"][INSTALL] == A
        running = live_pods(control_plane, hubs, "vision")
        assert len(running) == VISION_QUOTA, [p["metadata"]["name"] for p in running]
    finally:
        if request:
            requests.delete(f"{waitlist}/{request['id']}", headers=headers, timeout=60)
        stop_all(hubs.a, ["v7"])
        stop_all(hubs.b, on_b)


def test_a_service_ends_only_its_own_servers_while_the_other_hub_is_down(
    hubs: Hubs, control_plane: ControlPlane
) -> None:
    """v2's server runs on hub B; hub B (its service and proxy with it) is stopped, the pod
    left running: to hub A's service a running pod its hub does not list, and an open session
    in its ledger whose server it never sees. v2 then starts a server on hub A (the same user
    and server name) that A's culler stops at its max age. A's service, ticking past the
    strays' grace, leaves B's pod running and B's session open with no stop asked for.
    Broken once: `of_install` matching every install's sessions: B's session was found
    closed (hub A's spawn of v2 takes it for its own stale one, and A's reconciliation for a
    server gone)."""
    pod = started(hubs.b, "v2")
    key = pod["metadata"]["labels"]["gpuhub.io/session"]
    path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
    hubs.b.stop()
    strays_before = service_status(hubs.a)["strays_ended"]
    started(hubs.a, "v2", "h100-brief")
    hubs.a.wait("A's culler to stop v2's brief server", lambda: hubs.a.server("v2") is None, 60)
    wait_ticks(hubs.a, GRACE + 3)
    rows = {s.uid: s for s in sessions(hubs) if s.user == "v2"}
    theirs = rows[key]
    assert (theirs.install, theirs.ended_at, theirs.stop_reason) == (B, None, None)
    (ours,) = [s for s in rows.values() if s.install == A and s.profile == "h100-brief"]
    assert ours.end_reason == EndReason.MAX_AGE.value, ours.end_reason
    still = control_plane.api.get(path)
    assert still["metadata"]["uid"] == pod["metadata"]["uid"]
    assert not still["metadata"].get("deletionTimestamp") and still["status"]["phase"] == "Running"
    assert service_status(hubs.a)["strays_ended"] == strays_before
    # hub B stays down: its pods go with the namespaces at the module's end
