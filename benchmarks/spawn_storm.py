"""Spawn storm: 200 users start GPU servers at once through a real hub's REST API, against 32
simulated 8-GPU kwok nodes: with GPUKubeSpawner twice (team quotas that sum to less than the
pool, so some spawns are refused; and quotas large enough that every spawn is admitted, the same
work as stock), then with stock KubeSpawner (no quotas) on the same node pool, in one run.

Before each storm the namespaces its pods go into exist, as they do after any earlier spawn:
one user of each team spawns a server and stops it again (the same for every case), and the
storm begins once their pods are gone. Stock's pods go into the hub's namespace (made before each
hub starts); gpuhub's hub makes each team's namespace with its ResourceQuota and NetworkPolicy
on that first spawn, and the script checks they are there. `--namespaces during` skips these
first spawns: gpuhub's team namespaces are then made by the storm's own first spawns (a hub's
first storm).

Prints the time until every admitted server's pod is Running, the refusals by reason, and the
quota violations (running GPUs per team and type over the catalog quota, nodes over-committed;
both must be 0), side by side, and the ratios ours/stock. Not a test: nothing here asserts timing.

    .venv/bin/python -m benchmarks.spawn_storm [--users 200] [--nodes 32] [--namespaces before]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))

import requests
from hub import K8sHub, delete_namespaces, running_hub
from testbed import H100, ControlPlane, Json, build_binaries

from spawner_ext.kube.netpol import POLICY_NAME
from spawner_ext.kube.quotas import QUOTA_NAME

GPUS_PER_NODE = H100.gpus
TEAM_QUOTAS = (30, 30, 25, 25, 20, 20, 15, 15)  # 180 H100s of the 256
EQUAL_QUOTAS = (32,) * 8  # 256: every spawn (240 GPUs) is admitted, as with stock
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
SELECTOR = {"nvidia.com/gpu.product": H100.product}


def user_name(index: int) -> str:
    return f"u{index:03d}"


def profile_of(index: int) -> str:
    """Every fifth user asks for two GPUs, the others for one."""
    return "h100-duo" if index % 5 == 4 else "h100-single"


def gpus_of(profile: str) -> int:
    return 2 if profile == "h100-duo" else 1


def team_of(index: int, teams: int) -> str:
    return f"t{index % teams}"


def catalog(users: int, prefix: str, quotas: tuple[int, ...]) -> Json:
    teams = {
        f"t{t}": {
            "users": [user_name(i) for i in range(users) if i % len(quotas) == t],
            "quota": {"gpus": {"h100-80gb": quota}},
        }
        for t, quota in enumerate(quotas)
    }
    return {
        "metering": {"currency": "USD", "reconcile_interval": "30s"},
        "kubernetes": {"namespace_template": f"{prefix}-{{team}}"},
        "gpu_types": {
            "h100-80gb": {
                "display_name": "NVIDIA H100 80GB",
                "resource": "nvidia.com/gpu",
                "price_per_hour": 4.10,
                "gpus_per_node": GPUS_PER_NODE,
                "node_selector": SELECTOR,
                "tolerations": TOLERATIONS,
            }
        },
        "teams": teams,
        "profiles": [
            {"display_name": "One H100", "slug": "h100-single", "gpu": {"type": "h100-80gb"}},
            {
                "display_name": "Two H100s",
                "slug": "h100-duo",
                "gpu": {"type": "h100-80gb", "count": 2},
            },
        ],
    }


def stock_profile_list() -> list[Json]:
    return [
        {
            "display_name": name,
            "slug": slug,
            "kubespawner_override": {
                "extra_resource_limits": {"nvidia.com/gpu": str(gpus_of(slug))},
                "node_selector": SELECTOR,
                "tolerations": TOLERATIONS,
            },
        }
        for name, slug in (("One H100", "h100-single"), ("Two H100s", "h100-duo"))
    ]


@dataclass
class Result:
    label: str
    requested: int = 0
    admitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    seconds_to_running: float = float("nan")
    seconds_to_ready: float = float("nan")
    failed: int = 0
    """Admitted spawns that failed afterwards (the hub has no server for them at the end)."""
    quota_violations: int = 0
    overcommitted_nodes: int = 0
    pending_left: int = 0
    first_spawns: int = 0
    """Spawns (one per team) started and stopped before the storm."""
    team_namespaces_ready: int | None = None
    """Team namespaces with their ResourceQuota and NetworkPolicy when the storm began (None:
    stock, whose pods go into the hub's namespace)."""


def refusal_reason(status: int, message: str) -> str:
    if "may hold" in message and "at once and holds" in message:
        return "gpu-quota"
    if "you may hold" in message:
        return "user-cap"
    if "budget" in message:
        return "budget"
    return f"http-{status}"


def storm(hub: K8sHub, users: int) -> tuple[list[str], Counter[str], float]:
    """All users POST their spawn at once; (admitted users, refusals by reason, start time)."""
    names = [user_name(i) for i in range(users)]
    hub.create_users(names)

    def spawn(index: int) -> tuple[str, int, str]:
        response = requests.post(  # a connection of its own per user, as browsers would
            f"{hub.url}hub/api/users/{user_name(index)}/server",
            json={"profile": profile_of(index)},
            headers={"Authorization": f"token {hub.token}"},
            timeout=600,
        )
        message = response.json().get("message", "") if response.status_code >= 400 else ""
        return user_name(index), response.status_code, message

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=users) as pool:
        answers = list(pool.map(spawn, range(users)))
    admitted = [name for name, status, _ in answers if status in (201, 202)]
    refused = Counter(
        refusal_reason(status, message) for _, status, message in answers if status >= 400
    )
    return admitted, refused, started


def singleuser_pods(plane: ControlPlane) -> list[Json]:
    items: list[Json] = plane.api.get("/api/v1/pods", labelSelector="component=singleuser-server")[
        "items"
    ]
    return items


def failed_spawns(hub: K8sHub, names: list[str]) -> set[str]:
    """Those of `names` whose admitted spawn has failed since: the hub has no server for them."""
    wanted = set(names)
    return {
        user["name"]
        for user in hub.api("GET", "/users").json()
        if user["name"] in wanted and "" not in (user.get("servers") or {})
    }


def wait_running(
    plane: ControlPlane, hub: K8sHub, names: list[str], timeout: float = 600
) -> tuple[float, set[str]]:
    """(when every admitted spawn's pod is Running, the spawns that failed instead); the hub
    is asked for failed spawns every 2 s, so one does not hold the wait to its timeout."""
    deadline = time.monotonic() + timeout
    failed: set[str] = set()
    looked = time.monotonic()
    while time.monotonic() < deadline:
        running = sum(
            1 for pod in singleuser_pods(plane) if pod.get("status", {}).get("phase") == "Running"
        )
        if running >= len(names) - len(failed):
            return time.monotonic(), failed
        if time.monotonic() - looked > 2:
            failed, looked = failed_spawns(hub, names), time.monotonic()
        time.sleep(0.2)
    return float("nan"), failed_spawns(hub, names)


def wait_ready(hub: K8sHub, names: list[str], timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    wanted = set(names)
    while time.monotonic() < deadline:
        ready = {
            user["name"]
            for user in hub.api("GET", "/users", params={"state": "ready"}).json()
            if user["name"] in wanted
        }
        if ready >= wanted:
            return time.monotonic()
        wanted -= failed_spawns(hub, sorted(wanted - ready))
        time.sleep(0.5)
    return float("nan")


def violations(plane: ControlPlane, quotas: dict[str, int] | None) -> tuple[int, int, int]:
    """(teams over their quota, nodes over-committed, pods still Pending) among live pods."""
    pods = [p for p in singleuser_pods(plane) if not p["metadata"].get("deletionTimestamp")]
    per_team: Counter[str] = Counter()
    per_node: Counter[str] = Counter()
    pending = 0
    for pod in pods:
        gpus = int(pod["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        if pod["status"].get("phase") != "Running":
            pending += 1
            continue
        per_team[pod["metadata"]["labels"].get("gpuhub.io/team", "")] += gpus
        per_node[pod["spec"]["nodeName"]] += gpus
    over_quota = 0
    if quotas is not None:
        over_quota = sum(1 for team, used in per_team.items() if used > quotas.get(team, 0))
    allocatable = {
        node["metadata"]["name"]: int(node["status"]["allocatable"].get("nvidia.com/gpu", 0))
        for node in plane.api.get("/api/v1/nodes")["items"]
    }
    over_node = sum(1 for node, used in per_node.items() if used > allocatable.get(node, 0))
    return over_quota, over_node, pending


def first_spawns(hub: K8sHub, plane: ControlPlane, namespaces: list[str], teams: int) -> int:
    """Before the storm, as after any earlier spawn: the first user of each team (u000 to
    u007, one in each team) starts a server and stops it again, then no notebook pod is left
    and no ResourceQuota in `namespaces` counts one (the API server's count follows pod
    deletions a little later). The same for stock and gpuhub; gpuhub's hub makes the team
    namespaces (with quota and policy) on these spawns. Returns how many ran."""
    names = [user_name(i) for i in range(teams)]
    hub.create_users(names)

    def cycle(index: int) -> None:
        response = hub.spawn(user_name(index), {"profile": profile_of(index)})
        if response.status_code not in (201, 202):
            raise RuntimeError(f"first spawn of {user_name(index)}: {response.status_code}")
        hub.wait_ready(user_name(index))
        hub.stop_server(user_name(index))

    with ThreadPoolExecutor(max_workers=teams) as pool:
        list(pool.map(cycle, range(teams)))
    deadline = time.monotonic() + 300
    while (singleuser_pods(plane) or quotas_in_use(plane, namespaces)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    return teams


def quotas_in_use(plane: ControlPlane, namespaces: list[str]) -> int:
    """How many ResourceQuotas in `namespaces` count any GPU as used."""
    busy = 0
    for namespace in namespaces:
        path = f"/api/v1/namespaces/{namespace}/resourcequotas"
        for quota in plane.api.get(path)["items"]:
            used = (quota.get("status") or {}).get("used") or {}
            busy += any(value not in ("0", "") for value in used.values())
    return busy


def team_namespaces_ready(plane: ControlPlane, namespaces: list[str]) -> int:
    """How many of these namespaces exist with the hub's ResourceQuota and NetworkPolicy."""
    policies = "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies/" + POLICY_NAME
    paths = ("/api/v1/namespaces/{}", "/api/v1/namespaces/{}/resourcequotas/" + QUOTA_NAME)
    return sum(
        1
        for namespace in namespaces
        if not any(plane.api.gone(path.format(namespace)) for path in (*paths, policies))
    )


def clear(hub: K8sHub, plane: ControlPlane, namespaces: list[str]) -> None:
    hub.stop()
    delete_namespaces(plane, namespaces)
    deadline = time.monotonic() + 300
    while singleuser_pods(plane) and time.monotonic() < deadline:
        time.sleep(1)


def run(
    plane: ControlPlane,
    workdir: Path,
    users: int,
    quotas: tuple[int, ...] | None,
    namespaces_before: bool = True,
) -> Result:
    """One storm: GPUKubeSpawner with these team quotas, or stock KubeSpawner (None). With
    `namespaces_before`, one spawn per team is started and stopped first (`first_spawns`)."""
    prefix = "storm-stock" if quotas is None else f"storm-gpuhub-{sum(quotas)}"
    settings: dict[str, Any] = {"namespace": f"{prefix}-hub", "start_timeout": 600}
    if quotas is None:
        settings["spawner"] = "kubespawner"
        settings["extra_config"] = f"c.KubeSpawner.profile_list = {stock_profile_list()!r}"
    else:
        settings["catalog"] = catalog(users, prefix, quotas)
        settings["extra_config"] = "c.GPUKubeSpawner.manage_resource_quotas = True"
    label = "stock KubeSpawner" if quotas is None else f"GPUKubeSpawner, quotas {sum(quotas)}"
    result = Result(label)
    result.requested = users
    namespaces = [f"{prefix}-hub"] + [f"{prefix}-t{t}" for t in range(len(TEAM_QUOTAS))]

    (workdir / prefix).mkdir()
    with running_hub(plane, workdir / prefix, **settings) as hub:
        try:
            if namespaces_before:
                result.first_spawns = first_spawns(hub, plane, namespaces, len(TEAM_QUOTAS))
            if quotas is not None:
                result.team_namespaces_ready = team_namespaces_ready(plane, namespaces[1:])
            admitted, result.refused, started = storm(hub, users)
            result.admitted = len(admitted)
            running_at, failed = wait_running(plane, hub, admitted)
            result.seconds_to_running = running_at - started
            result.seconds_to_ready = wait_ready(hub, sorted(set(admitted) - failed)) - started
            result.failed = len(failed_spawns(hub, admitted))
            limits = None if quotas is None else {f"t{t}": q for t, q in enumerate(quotas)}
            counts = violations(plane, limits)
            result.quota_violations, result.overcommitted_nodes, result.pending_left = counts
        finally:
            clear(hub, plane, namespaces)
    return result


def table(results: list[Result]) -> str:
    rows = [
        ("", *(r.label for r in results)),
        ("spawns started and stopped before", *(str(r.first_spawns) for r in results)),
        (
            "team namespaces ready before",
            *(
                "- (hub's namespace)"
                if r.team_namespaces_ready is None
                else f"{r.team_namespaces_ready} of {len(TEAM_QUOTAS)}"
                for r in results
            ),
        ),
        ("spawns requested", *(str(r.requested) for r in results)),
        ("admitted", *(str(r.admitted) for r in results)),
        (
            "refused (by reason)",
            *(", ".join(f"{k}: {v}" for k, v in sorted(r.refused.items())) or "0" for r in results),
        ),
        ("admitted, then failed", *(str(r.failed) for r in results)),
        ("s until all admitted pods Running", *(f"{r.seconds_to_running:.1f}" for r in results)),
        ("s until the hub has them all ready", *(f"{r.seconds_to_ready:.1f}" for r in results)),
        ("teams over GPU quota", *(str(r.quota_violations) for r in results)),
        ("nodes over-committed", *(str(r.overcommitted_nodes) for r in results)),
        ("pods left Pending", *(str(r.pending_left) for r in results)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument(
        "--keep", type=Path, help="keep the hubs' directories (logs, databases) here"
    )
    parser.add_argument(
        "--namespaces",
        choices=("before", "during"),
        default="before",
        help="before each storm, one spawn per team started and stopped, so gpuhub's team "
        "namespaces exist as after an earlier spawn (default); or none, so the storm's first "
        "spawns make them",
    )
    args = parser.parse_args(argv)
    before = args.namespaces == "before"
    with (
        tempfile.TemporaryDirectory(prefix="spawn-storm-") as scratch,
        ControlPlane(build_binaries()) as plane,
    ):
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        plane.add_kwok_gpu_nodes(args.nodes, H100)
        load_before = os.getloadavg()
        ours = run(plane, Path(tmp), args.users, TEAM_QUOTAS, before)
        equal = run(plane, Path(tmp), args.users, EQUAL_QUOTAS, before)
        stock = run(plane, Path(tmp), args.users, None, before)
        load_after = os.getloadavg()
    print(f"Spawn storm: {args.users} users, {args.nodes} kwok nodes x {GPUS_PER_NODE} H100")
    print(f"team quotas {TEAM_QUOTAS} (sum {sum(TEAM_QUOTAS)}), and {EQUAL_QUOTAS} (all admitted)")
    print(f"gpuhub's team namespaces made {args.namespaces} the storm")
    print(f"date {time.strftime('%Y-%m-%d %H:%M %Z')}; machine {platform.node()}, ", end="")
    print(f"{os.cpu_count()} cores; load average before {load_before[0]:.2f}, ", end="")
    print(f"after {load_after[0]:.2f}")
    print()
    print(table([ours, equal, stock]))
    print()
    for case in (equal, ours):
        servers, stock_servers = case.admitted - case.failed, stock.admitted - stock.failed
        work = "equal work" if servers == stock_servers else "unequal work"
        ratio = case.seconds_to_running / stock.seconds_to_running
        ready_ratio = case.seconds_to_ready / stock.seconds_to_ready
        print(
            f"{case.label} / stock ({work}: {servers} vs {stock_servers} servers): "
            f"{ratio:.2f}x until all Running (target: <= 1.1x), {ready_ratio:.2f}x until ready"
        )


if __name__ == "__main__":
    main()
