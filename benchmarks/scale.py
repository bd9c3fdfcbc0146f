"""The platform at an organisation's size: a spawn storm of N GPU servers, a hub restart with them
all running, the gpuhub service's tick and a culling cycle against the real hub, and the hub's and
the service's memory and CPU, at N = 250, 500 and 1,000, with GPUKubeSpawner and the gpuhub
service beside stock KubeSpawner and stock jupyterhub-idle-culler 2.0, in one run, on the same
control plane (tests/k8s/testbed.py: 128 kwok nodes of 8 H100s) and equal work.

For each N, each side gets a fresh hub (tests/k8s/hub.py) with 5,000 users in its database, the
first user of each of the 8 teams starting and stopping a server first (as after any earlier
spawn: gpuhub's team namespaces exist with their ResourceQuota), then:

- **storm**: N users POST their one-H100 spawn at once; the seconds until every pod is Running
  and until the hub has every server ready; quota violations (running GPUs of a team over its
  quota, nodes over-committed; both must be 0); the refusals; what the storm cost the API
  server (its own metrics: pod creates answered 201 and 409, mean create and ResourceQuota
  admission time) and what the hub's log says (create tries, pods kept or replaced, reflector
  restarts), and the CPU seconds each process spent from the first spawn until the hub had
  every server ready (the hub, its proxy and the gpuhub service; the API server, etcd, the
  scheduler, the controller manager and kwok; the benchmark's own spawn requests): all of them
  share this machine's cores, so this is where a side's extra time goes. gpuhub's teams have
  128 H100s each (1,024, the pool), so every spawn is admitted, as with stock.
- **restart**: the hub is stopped with SIGTERM (as Kubernetes stops the chart's hub pod) and
  started again on the same databases: the seconds until the REST API answers (through the
  proxy), and until one more user's new spawn is ready; then the
  servers still Running (pods, from the API server) and ready (the hub), and for gpuhub the open
  sessions in the ledger (billed), which must all equal N.
- **tick** (gpuhub): the service's own timing of its ticks (api/v1/status `tick_seconds`, median
  of 3 ticks after the restart) by step; the service's CPU seconds per tick (/proc, over those
  ticks) and resident memory.
- **idle hub**: the hub's CPU seconds over a minute in which the benchmark asks nothing of it
  (its polls of every server; for gpuhub also the service's ticks' listings), and its memory.
- **culling cycle**: one cycle of each culler against its own hub, every server active (nothing
  is culled): gpuhub's `Culler.cycle` (pages at once, the ledger's reports) and stock
  `cull_idle` with `--api-page-size=200` (its best setting; the hub's maximum page), median of 5,
  with the hub's CPU seconds per cycle (median over the cycles no service tick overlapped: a
  tick lists every server through the same hub); gpuhub's each right after a service tick, so
  that it does not queue behind the tick's listing in the one-threaded hub.

`--rounds R` repeats the storm and the restart R times at each N, each pair of sides in the
other order than the pair before, and prints each round's ratio and the medians' (two runs of
one side have differed by up to 40 % on a 2-core machine).

Not a test: nothing here asserts timing. The quota and the survival counts are printed for the
reader to check (tests/k8s check them at CI size).

    .venv/bin/python -m benchmarks.scale [--servers 250 500 1000] [--nodes 128] [--users 5000]
        [--rounds R] [--postgres] [--no-resource-quotas] [--stock-request-timeout S]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub import K8sHub, delete_namespaces, running_hub
from testbed import H100, POD_CREATE, ControlPlane, Json, build_binaries, metric_sum

from benchmarks.spawn_storm import (
    catalog,
    first_spawns,
    singleuser_pods,
    stock_profile_list,
    user_name,
)
from spawner_ext.catalog import load_catalog
from spawner_ext.clock import utcnow
from spawner_ext.hub.ledger_lane import LANE_THREAD
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger
from spawner_ext.service.app import TICK_STEPS
from spawner_ext.service.culler import Culler
from spawner_ext.service.hubapi import HubAPI
from tests.faultdriver import SERVICE_CMDLINE, service_pid

TEAMS = 8
EQUAL_QUOTA = 128  # 8 x 128 = 1,024 H100s: the pool; every spawn is admitted
PAGE_SIZE = 200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def name(index: int) -> str:
    return user_name(index)


@dataclass
class Side:
    label: str
    servers: int
    round: int = 0
    """Which of the `--rounds` pairs of storms at this N (0: the first, the one measured in
    full)."""
    admitted: int = 0
    failed: int = 0
    storm_running_s: float = float("nan")
    storm_ready_s: float = float("nan")
    over_quota: int = 0
    overcommitted: int = 0
    restart_api_s: float = float("nan")
    restart_spawn_s: float = float("nan")
    after_running: int = 0
    after_ready: int = 0
    after_billed: int | None = None
    tick: dict[str, float] = field(default_factory=dict)
    service_cpu_per_tick: float | None = None
    hub_cpu_per_minute: float = float("nan")
    """The hub's CPU seconds per minute with its N servers running and nobody spawning (its
    polls of every server, and for gpuhub the service's ticks asking for its server list)."""
    service_rss_mib: float | None = None
    hub_rss_mib: float = float("nan")
    cull_s: float = float("nan")
    hub_cpu_per_cull: float = float("nan")
    cull_cycles_alone: int | None = None
    """Culling cycles no service tick overlapped (the hub's CPU per cycle is their median)."""
    cull_considered: int | None = None
    """Servers the last culling cycle looked at (gpuhub's: ready ones; N + 1 expected)."""
    pods_created: int | None = None
    """Pod creates the API server answered 201 during the storm (its own count): about N, plus
    one for every pod deleted and made again (a create whose answer timed out inside the API
    server may have made its pod without a 201)."""
    create_conflicts: int | None = None
    """Pod creates the API server answered 409 during the storm: a try that met a pod of the
    name, most often the pod its own earlier, timed-out try made."""
    create_mean_s: float | None = None
    """The API server's mean time to answer a pod create during the storm (its own histogram)."""
    quota_admission_mean_s: float | None = None
    """Its ResourceQuota admission's mean time per create during the storm."""
    storm_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent from the storm's first spawn until the hub had every
    server ready (STORM_PROCESSES), and their sum: the 2 cores all of them share."""
    refused: Counter[str] = field(default_factory=Counter)
    """Storm spawns the hub refused at once, by status and message."""
    hub_log: dict[str, int] = field(default_factory=dict)
    """What the hub's log says happened during the storm (STORM_LOG: lines counted)."""
    errors: list[str] = field(default_factory=list)
    """Steps that failed, with why (the others are still measured)."""


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds so far of a process (all its threads), or of one thread of it."""
    path = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def process_tree(pid: int) -> dict[int, str]:
    """`pid` and its descendants (now), each named by what it runs: the hub, its proxy and
    the gpuhub service (the test hub starts both as its children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes()
            found[current] = (
                "hub"
                if current == pid
                else "gpuhub service"
                if SERVICE_CMDLINE in cmdline
                else "proxy"
                if b"configurable-http-proxy" in cmdline
                else "hub's other children"
            )
        todo += children.get(current, [])
    return found


def hub_threads(pid: int) -> dict[int, str]:
    """The hub's threads now, named by what they run: its event loop (the main thread), the
    gpuhub ledger lane's (gpuhub only; it names itself, `name_os_thread`) and the others (the
    ledger's reads, the asyncio executor's, the kwok stub's)."""
    named: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            comm = (task / "comm").read_text().strip()
            tid = int(task.name)
            named[tid] = (
                HUB_LOOP_THREAD
                if tid == pid
                else HUB_LEDGER_THREAD
                if comm == LANE_THREAD
                else HUB_OTHER_THREADS
            )
    return named


HUB_LOOP_THREAD = "hub: event loop thread"
HUB_LEDGER_THREAD = "hub: ledger lane thread"
HUB_OTHER_THREADS = "hub: other threads"
HUB_THREADS = (HUB_LOOP_THREAD, HUB_LEDGER_THREAD, HUB_OTHER_THREADS)
"""The hub's CPU split by thread (parts of "hub", not added to the processes' sum)."""


def cpu_by_process(plane: ControlPlane, hub: K8sHub) -> dict[tuple[int, str], float]:
    """CPU seconds so far of every process a storm makes work: the hub's tree, the control
    plane's components and this benchmark (its spawn requests' threads); and of the hub's
    threads (HUB_THREADS)."""
    assert hub.process is not None
    named = process_tree(hub.process.pid)
    for component in plane.components.values():
        if component.process is not None:
            named[component.process.pid] = component.name
    named[os.getpid()] = "benchmark"
    cpu: dict[tuple[int, str], float] = {}
    for pid, label in named.items():
        with contextlib.suppress(OSError):
            cpu[(pid, label)] = cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for tid, label in hub_threads(hub.process.pid).items():
            with contextlib.suppress(OSError):
                cpu[(tid, label)] = cpu_seconds(hub.process.pid, tid)
    return cpu


def cpu_spent(
    before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]
) -> dict[str, float]:
    """CPU seconds by process name between two `cpu_by_process` readings (a process started
    in between counts from zero)."""
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        spent[key[1]] = spent.get(key[1], 0.0) + seconds - before.get(key, 0.0)
    return spent


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def create_users(hub: K8sHub, count: int) -> None:
    """`count` users in the hub's database, 500 per request."""
    names = [name(i) for i in range(count)]
    for start in range(0, count, 500):
        response = hub.api("POST", "/users", json={"usernames": names[start : start + 500]})
        if response.status_code not in (201, 409):
            raise RuntimeError(f"creating users: {response.status_code} {response.text[:200]}")


def storm(hub: K8sHub, servers: int, side: Side) -> tuple[list[str], float]:
    """N spawns at once; the users whose spawn was taken, and when it began. Refusals are
    counted on `side` by status and message."""
    from concurrent.futures import ThreadPoolExecutor

    def spawn(index: int) -> tuple[str, int, str]:
        response = requests.post(
            f"{hub.url}hub/api/users/{name(index)}/server",
            json={"profile": "h100-single"},
            headers={"Authorization": f"token {hub.token}"},
            timeout=900,
        )
        return name(index), response.status_code, response.text

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(servers, 250)) as pool:
        answers = list(pool.map(spawn, range(TEAMS, TEAMS + servers)))
    for _, status, text in answers:
        if status not in (201, 202):
            side.refused[f"{status} {refusal_message(text)[:100]}"] += 1
    return [user for user, status, _ in answers if status in (201, 202)], started


def refusal_message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        return text


def restart(hub: K8sHub, extra_user: str) -> tuple[float, float]:
    """SIGTERM to the hub, started again: (s until the API answers, s until
    `extra_user`'s new server is ready)."""
    assert hub.process is not None
    hub.process.send_signal(signal.SIGTERM)
    hub.process.wait(timeout=120)
    hub.process = None
    began = time.monotonic()
    hub.start()  # returns once GET /hub/api/ answers
    api = time.monotonic() - began
    response = hub.spawn(extra_user, {"profile": "h100-single"})
    if response.status_code not in (201, 202):
        raise RuntimeError(f"spawn after restart: {response.status_code} {response.text[:300]}")
    hub.wait_ready(extra_user, timeout=900)
    return api, time.monotonic() - began


def status(hub: K8sHub) -> dict[str, Any]:
    answer: dict[str, Any] = requests.get(
        f"{hub.url}services/gpu-usage/api/v1/status", timeout=30
    ).json()
    return answer


def measure_ticks(hub: K8sHub, side: Side, ticks: int = 3) -> None:
    """The service's own timing of `ticks` ticks (median by step) and its CPU over them."""
    pid = hub.wait("the gpuhub service", lambda: service_pid(hub.workdir), 120)
    assert hub.process is not None
    first = hub.wait("a tick", lambda: status(hub)["ticks"] or None, 300, every=0.5)
    cpu0 = cpu_seconds(pid)
    seen: list[dict[str, float]] = []
    last = first
    while len(seen) < ticks:
        answer = hub.wait("the next tick", lambda done=last: _after(hub, done), 300, every=0.2)
        last = answer["ticks"]
        seen.append(answer["tick_seconds"])
    done = status(hub)["ticks"] - first
    cpu1 = cpu_seconds(pid)
    side.tick = {
        step: statistics.median(t.get(step, float("nan")) for t in seen)
        for step in (*TICK_STEPS, "total")
    }
    side.service_cpu_per_tick = (cpu1 - cpu0) / done
    side.service_rss_mib = rss_mib(pid)


def _after(hub: K8sHub, ticks: int) -> dict[str, Any] | None:
    answer = status(hub)
    return answer if answer["ticks"] > ticks else None


def measure_idle_hub(hub: K8sHub, side: Side, seconds: float = 60) -> None:
    """The hub's CPU over `seconds` with nothing asked of it by the benchmark."""
    assert hub.process is not None
    before = cpu_seconds(hub.process.pid)
    time.sleep(seconds)
    side.hub_cpu_per_minute = (cpu_seconds(hub.process.pid) - before) * 60 / seconds


def measure_culling(hub: K8sHub, side: Side, repeat: int = 5) -> None:
    assert hub.process is not None
    pid = hub.process.pid
    once: Callable[[], Any]
    if hub.ledger_url is not None:
        catalog_in_force = load_catalog(hub.catalog_path)
        ledger = Ledger.open(hub.ledger_url)

        async def ours() -> None:
            api = HubAPI(f"{hub.url}hub/api", hub.token)
            try:
                considered = await Culler(api, ledger).cycle(catalog_in_force, utcnow())
            finally:
                api.close()
            side.cull_considered = len(considered)

        once = ours
    else:
        from jupyterhub_idle_culler import cull_idle

        quiet = logging.getLogger("stock-culler")
        quiet.setLevel(logging.WARNING)

        async def stock() -> None:
            await cull_idle(
                url=f"{hub.url}hub/api",
                api_token=hub.token,
                inactive_limit=3600,
                logger=quiet,
                api_page_size=PAGE_SIZE,
            )

        once = stock
    times: list[float] = []
    cpus: list[float] = []  # the hub's CPU per cycle, cycles a service tick did not overlap
    for _ in range(repeat):
        ticks = None
        if hub.ledger_url is not None:  # right after a tick: not queued behind its listing
            ticks = status(hub)["ticks"]
            hub.wait("the next tick", lambda done=ticks: _after(hub, done), 300, every=0.1)
            ticks = status(hub)["ticks"]
        began, before = time.monotonic(), cpu_seconds(pid)
        asyncio.run(once())
        times.append(time.monotonic() - began)
        cpu = cpu_seconds(pid) - before
        # a tick during the cycle lists every server through the same hub: not the cycle's
        if ticks is None or status(hub)["ticks"] == ticks:
            cpus.append(cpu)
    side.hub_cpu_per_cull = statistics.median(cpus) if cpus else float("nan")
    side.cull_cycles_alone = len(cpus)
    side.cull_s = statistics.median(times)
    if hub.ledger_url is not None:
        ledger.engine.dispose()
        # Checked after the measured cycles: these listings go through the same hub, and
        # counted inside a cycle's window they tripled its hub CPU (seen with lost spawns).
        ready = ready_count(hub)
        if side.cull_considered != ready:
            listed = asyncio.run(HubAPI(f"{hub.url}hub/api", hub.token).running_servers())
            side.errors.append(
                f"culling looked at {side.cull_considered} servers: the service's listing has "
                f"{len(listed)} ({sum(s.ready for s in listed)} ready, "
                f"{sum(bool(s.pending) for s in listed)} pending); page by page the hub lists "
                f"{ready} ready"
            )


STORM_LOG = {
    "create tries": "Attempting to create pod",
    "creates met a pod (409)": "attempting to kill",  # KubeSpawner's "Found existing pod"
    "creates waited for past the timeout (ours)": "waits for the answer to its create",
    "creates that got no answer (ours)": "got no answer",
    "pods kept (ours)": "which its own earlier create made",
    "pods replaced (ours)": "replacing it",
    "pod never showed up (reflector restarted)": "never showed up in reflector",
    "pod did not disappear (reflector restarted)": "did not disappear, restarting",
}
"""Lines of the hub's log counted over the storm (KubeSpawner's own, and GPUKubeSpawner's)."""

STORM_PROCESSES = (
    "hub",
    "gpuhub service",
    "proxy",
    "kube-apiserver",
    "etcd",
    "kube-scheduler",
    "kube-controller-manager",
    "kwok",
    "benchmark",
)
"""The processes whose CPU over the storm is printed (cpu_by_process's names)."""


def count_log(path: Path, offset: int) -> dict[str, int]:
    """STORM_LOG's lines in the hub's log after byte `offset`."""
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return {what: text.count(needle) for what, needle in STORM_LOG.items()}


def api_metrics(plane: ControlPlane) -> dict[str, float]:
    """The API server's own counts of pod creates (/metrics): answered 201 and 409, their
    summed and counted durations, and its ResourceQuota admission's for creates."""
    samples = plane.api.metrics()
    quota = ('name="ResourceQuota"', 'operation="CREATE"')
    admission = "apiserver_admission_controller_admission_duration_seconds"
    return {
        "created": metric_sum(samples, "apiserver_request_total", 'code="201"', *POD_CREATE),
        "conflicts": metric_sum(samples, "apiserver_request_total", 'code="409"', *POD_CREATE),
        "seconds": metric_sum(samples, "apiserver_request_duration_seconds_sum", *POD_CREATE),
        "answered": metric_sum(samples, "apiserver_request_duration_seconds_count", *POD_CREATE),
        "quota_seconds": metric_sum(samples, f"{admission}_sum", *quota),
        "quota_count": metric_sum(samples, f"{admission}_count", *quota),
    }


def record_storm(side: Side, before: dict[str, float], after: dict[str, float]) -> None:
    delta = {key: after[key] - before[key] for key in after}
    side.pods_created = int(delta["created"])
    side.create_conflicts = int(delta["conflicts"])
    side.create_mean_s = delta["seconds"] / delta["answered"] if delta["answered"] else None
    if delta["quota_count"]:
        side.quota_admission_mean_s = delta["quota_seconds"] / delta["quota_count"]


def attempt(side: Side, step: str, measure: Callable[[], None]) -> None:
    """Run one measurement; a failure is recorded on `side` and the run goes on."""
    try:
        measure()
    except Exception as error:  # a benchmark reports what failed rather than stopping
        side.errors.append(f"{step}: {type(error).__name__}: {error}")


def billed(hub: K8sHub) -> int:
    """Open sessions in the ledger that have started: servers being billed now."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from spawner_ext.ledger.models import UsageSession

    ledger = Ledger.open(hub.ledger_url or "")
    try:
        with Session(ledger.engine) as db:
            query = select(func.count()).where(
                UsageSession.ended_at.is_(None), UsageSession.started_at.is_not(None)
            )
            return int(db.scalar(query) or 0)
    finally:
        ledger.engine.dispose()


def users(hub: K8sHub, **params: str) -> list[dict[str, Any]]:
    """Every user the hub lists (with `params`), 200 per page: unpaged, the hub answers the
    first 200 only."""
    found: list[dict[str, Any]] = []
    while True:
        page = hub.api(
            "GET", "/users", params={**params, "limit": "200", "offset": str(len(found))}
        ).json()
        found += page
        if len(page) < 200:
            return found


def ready_count(hub: K8sHub) -> int:
    return len(users(hub, state="ready"))


def without_server(hub: K8sHub, names: set[str]) -> set[str]:
    """Those of `names` whose admitted spawn has failed since: the hub has no server for them."""
    return {u["name"] for u in users(hub) if u["name"] in names and "" not in (u["servers"] or {})}


def pods_of(plane: ControlPlane, prefix: str) -> list[Json]:
    """The notebook pods in this side's namespaces (others may share the control plane)."""
    return [
        pod
        for pod in singleuser_pods(plane)
        if pod["metadata"]["namespace"].startswith(f"{prefix}-")
    ]


def violations(plane: ControlPlane, prefix: str, quota: int | None) -> tuple[int, int]:
    """(teams over `quota` GPUs, nodes with more GPUs bound than they have) among the Running
    pods of this side."""
    per_team: Counter[str] = Counter()
    per_node: Counter[str] = Counter()
    bound: Counter[str] = Counter()
    for pod in singleuser_pods(plane):
        if pod["status"].get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        gpus = int(pod["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        bound[pod["spec"]["nodeName"]] += gpus
        if pod["metadata"]["namespace"].startswith(f"{prefix}-"):
            per_team[pod["metadata"]["labels"].get("gpuhub.io/team", "")] += gpus
            per_node[pod["spec"]["nodeName"]] += gpus
    allocatable = {
        node["metadata"]["name"]: int(node["status"]["allocatable"].get("nvidia.com/gpu", 0))
        for node in plane.api.get("/api/v1/nodes")["items"]
    }
    over_quota = 0 if quota is None else sum(1 for used in per_team.values() if used > quota)
    over_node = sum(1 for node in per_node if bound[node] > allocatable.get(node, 0))
    return over_quota, over_node


def wait_running(
    plane: ControlPlane, hub: K8sHub, prefix: str, names: list[str], timeout: float
) -> tuple[float, set[str]]:
    """(when every admitted spawn's pod is Running, the spawns that failed instead)."""
    deadline = time.monotonic() + timeout
    failed: set[str] = set()
    looked = time.monotonic()
    while time.monotonic() < deadline:
        pods = pods_of(plane, prefix)
        running = sum(1 for pod in pods if pod.get("status", {}).get("phase") == "Running")
        if running >= len(names) - len(failed):
            return time.monotonic(), failed
        if time.monotonic() - looked > 5:
            failed, looked = without_server(hub, set(names)), time.monotonic()
        time.sleep(0.5)
    return float("nan"), without_server(hub, set(names))


def wait_ready(hub: K8sHub, names: list[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    wanted = set(names)
    looked = time.monotonic()
    while time.monotonic() < deadline:
        ready = {user["name"] for user in users(hub, state="ready")}
        if ready >= wanted:
            return time.monotonic()
        if time.monotonic() - looked > 5:
            wanted -= without_server(hub, wanted - ready)
            looked = time.monotonic()
        time.sleep(1)
    return float("nan")


def run_side(
    plane: ControlPlane,
    workdir: Path,
    servers: int,
    users: int,
    ours: bool,
    measure: bool = True,
    ledger_url: str | None = None,
    quotas_on: bool = True,
    round: int = 0,
    stock_request_timeout: int | None = None,
    reconcile_interval: int | None = None,
) -> Side:
    """One side at N = `servers`: storm, restart and what survived it; with `measure`, the
    tick, the idle hub and the culling cycles too (tests/k8s/test_scale_small.py runs it
    without, at CI size). `ledger_url`: gpuhub's ledger (an empty database, upgraded here;
    None: SQLite in the hub's directory). `quotas_on`: gpuhub keeps its teams' ResourceQuota
    backstops (off: the ledger's admission alone holds the quotas). `round`: a later pair of
    storms at the same N, in namespaces of its own. `stock_request_timeout`: stock
    KubeSpawner's k8s_api_request_timeout (None: its default, 3 s). `reconcile_interval`:
    the gpuhub service's tick, seconds (None: the catalog's default, 30 s)."""
    prefix = f"scale-{'gpuhub' if ours else 'stock'}-{servers}" + (f"r{round}" if round else "")
    settings: dict[str, Any] = {"namespace": f"{prefix}-hub", "start_timeout": 900}
    if ours and ledger_url is not None:
        upgrade(ledger_url)
        settings["ledger_url"] = ledger_url
    if ours:
        quotas = (EQUAL_QUOTA,) * TEAMS
        document = catalog(users, prefix, quotas)
        if reconcile_interval is not None:
            document["metering"]["reconcile_interval"] = f"{reconcile_interval}s"
        document["culling"] = {"interval": "1h"}  # the benchmark runs its cycles itself
        settings["catalog"] = document
        settings["resource_quotas"] = quotas_on
    else:
        settings["spawner"] = "kubespawner"
        settings["extra_config"] = f"c.KubeSpawner.profile_list = {stock_profile_list()!r}"
        if stock_request_timeout is not None:
            settings["extra_config"] += (
                f"\nc.KubeSpawner.k8s_api_request_timeout = {stock_request_timeout!r}"
            )
    side = Side("gpuhub" if ours else "stock", servers, round)
    namespaces = [f"{prefix}-hub"] + [f"{prefix}-t{t}" for t in range(TEAMS)]
    (workdir / prefix).mkdir()
    with running_hub(plane, workdir / prefix, **settings) as hub:
        try:
            create_users(hub, users)
            first_spawns(hub, plane, namespaces, TEAMS)
            log_offset, metrics = hub.log_path.stat().st_size, api_metrics(plane)
            cpu_before = cpu_by_process(plane, hub)
            admitted, started = storm(hub, servers, side)
            side.admitted = len(admitted)
            running_at, failed = wait_running(plane, hub, prefix, admitted, timeout=1200)
            side.storm_running_s = running_at - started
            side.storm_ready_s = wait_ready(hub, sorted(set(admitted) - failed), 1200) - started
            side.storm_cpu = cpu_spent(cpu_before, cpu_by_process(plane, hub))
            side.failed = len(failed)
            record_storm(side, metrics, api_metrics(plane))
            side.hub_log = count_log(hub.log_path, log_offset)
            side.over_quota, side.overcommitted = violations(
                plane, prefix, EQUAL_QUOTA if ours else None
            )
            side.restart_api_s, side.restart_spawn_s = restart(hub, name(TEAMS + servers))
            side.after_running = sum(
                1 for p in pods_of(plane, prefix) if p["status"].get("phase") == "Running"
            )
            side.after_ready = ready_count(hub)
            if ours:
                side.after_billed = billed(hub)
            if measure:
                if ours:
                    attempt(side, "tick", lambda: measure_ticks(hub, side))
                assert hub.process is not None
                side.hub_rss_mib = rss_mib(hub.process.pid)
                attempt(side, "idle hub", lambda: measure_idle_hub(hub, side))
                attempt(side, "culling", lambda: measure_culling(hub, side))
        finally:
            hub.stop()
            delete_namespaces(plane, namespaces)
            deadline = time.monotonic() + 600
            while pods_of(plane, prefix) and time.monotonic() < deadline:
                time.sleep(1)
    return side


def table(sides: list[Side]) -> str:
    def f(value: float | int | None, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    rows: list[tuple[str, ...]] = [
        ("", *(f"{s.label} N={s.servers}" + (f" #{s.round + 1}" * bool(s.round)) for s in sides)),
        ("admitted / failed after", *(f"{s.admitted} / {s.failed}" for s in sides)),
        ("storm: s until all pods Running", *(f(s.storm_running_s) for s in sides)),
        ("storm: s until the hub has all ready", *(f(s.storm_ready_s) for s in sides)),
        ("storm: pod creates answered 201", *(f(s.pods_created) for s in sides)),
        ("storm: pod creates answered 409", *(f(s.create_conflicts) for s in sides)),
        ("storm: API server's mean pod create s", *(f(s.create_mean_s, 3) for s in sides)),
        (
            "storm: its ResourceQuota admission s",
            *(f(s.quota_admission_mean_s, 4) for s in sides),
        ),
        *((f"storm log: {what}", *(f(s.hub_log.get(what)) for s in sides)) for what in STORM_LOG),
        *(
            (f"storm CPU s: {what}", *(f(s.storm_cpu.get(what)) for s in sides))
            for what in (STORM_PROCESSES[0], *HUB_THREADS, *STORM_PROCESSES[1:])
        ),
        (
            "storm CPU s: all of these",
            *(f(sum(v for k, v in s.storm_cpu.items() if k not in HUB_THREADS)) for s in sides),
        ),
        (
            "teams over quota / nodes over-committed",
            *(f"{s.over_quota} / {s.overcommitted}" for s in sides),
        ),
        ("restart: s until the REST API answers", *(f(s.restart_api_s) for s in sides)),
        ("restart: s until a new spawn is ready", *(f(s.restart_spawn_s) for s in sides)),
        ("after restart: pods Running (N+1)", *(str(s.after_running) for s in sides)),
        ("after restart: servers ready (N+1)", *(str(s.after_ready) for s in sides)),
        ("after restart: sessions billed (N+1)", *(f(s.after_billed) for s in sides)),
        *(
            (f"tick: {step} s", *(f(s.tick.get(step), 3) if s.tick else "-" for s in sides))
            for step in (*TICK_STEPS, "total")
        ),
        ("service CPU s per tick", *(f(s.service_cpu_per_tick, 3) for s in sides)),
        ("hub CPU s per minute, idle", *(f(s.hub_cpu_per_minute, 1) for s in sides)),
        ("service RSS MiB", *(f(s.service_rss_mib, 0) for s in sides)),
        ("hub RSS MiB", *(f(s.hub_rss_mib, 0) for s in sides)),
        ("culling cycle s (median of 5)", *(f(s.cull_s, 2) for s in sides)),
        ("servers the culling cycle looked at", *(f(s.cull_considered) for s in sides)),
        ("hub CPU s per culling cycle (median)", *(f(s.hub_cpu_per_cull, 2) for s in sides)),
        ("culling cycles no tick overlapped", *(f(s.cull_cycles_alone) for s in sides)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def ratios(sides: list[Side]) -> str:
    """Ours/stock at each N: the first round's every figure; with more rounds, each round's
    storm and the medians of the storm times over the rounds."""
    lines = []
    for servers in sorted({s.servers for s in sides}):
        ours = [s for s in sides if s.servers == servers and s.label == "gpuhub"]
        stock = [s for s in sides if s.servers == servers and s.label == "stock"]
        if not ours or not stock:
            continue
        first, anchor = ours[0], stock[0]
        lines.append(
            f"N={servers}: ours/stock until Running"
            f" {first.storm_running_s / anchor.storm_running_s:.2f}x,"
            f" until ready {first.storm_ready_s / anchor.storm_ready_s:.2f}x,"
            f" restart API {first.restart_api_s / anchor.restart_api_s:.2f}x,"
            f" restart spawn {first.restart_spawn_s / anchor.restart_spawn_s:.2f}x,"
            f" culling cycle {first.cull_s / anchor.cull_s:.2f}x"
        )
        if len(ours) > 1 and len(stock) > 1:
            for a, b in zip(ours, stock, strict=False):
                lines.append(
                    f"  round {a.round + 1}: until Running {a.storm_running_s:.1f} against"
                    f" {b.storm_running_s:.1f} s ({a.storm_running_s / b.storm_running_s:.2f}x),"
                    f" until ready {a.storm_ready_s:.1f} against {b.storm_ready_s:.1f} s"
                )
            running = [statistics.median(s.storm_running_s for s in side) for side in (ours, stock)]
            ready = [statistics.median(s.storm_ready_s for s in side) for side in (ours, stock)]
            lines.append(
                f"  median of {len(ours)} and {len(stock)} rounds: until Running"
                f" {running[0]:.1f} against {running[1]:.1f} s ({running[0] / running[1]:.2f}x),"
                f" until ready {ready[0]:.1f} against {ready[1]:.1f} s"
                f" ({ready[0] / ready[1]:.2f}x)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--keep", type=Path, help="keep the hubs' directories here")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="pairs of storms at each N (default 1): the first measured in full, the later "
        "ones storm and restart only, each pair in the other order (stock first in the "
        "second), and the storm times' medians printed (two runs of one side differ by up to "
        "40 %% on this machine)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="gpuhub's ledger on a throwaway PostgreSQL server (tests/postgres.py), a database "
        "per N, instead of SQLite in the hub's directory",
    )
    parser.add_argument(
        "--stock-request-timeout",
        type=int,
        metavar="S",
        help="stock KubeSpawner's k8s_api_request_timeout (default: its own, 3 s): how long one "
        "try of a pod create may take before KubeSpawner gives it up and tries again",
    )
    parser.add_argument(
        "--reconcile-interval",
        type=int,
        metavar="S",
        help="the gpuhub service's tick (metering.reconcile_interval), seconds (default: the "
        "catalog's, 30 s); each tick lists every server through the hub, during a storm too",
    )
    parser.add_argument(
        "--no-resource-quotas",
        action="store_true",
        help="gpuhub without its teams' ResourceQuota backstops (what they cost a storm)",
    )
    args = parser.parse_args(argv)
    if (
        max(args.servers) + TEAMS + 1 > args.nodes * H100.gpus
        or max(args.servers) + TEAMS + 1 > args.users
    ):
        parser.error("--servers must leave room: N + 9 GPUs and users at most")
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    if args.stock_request_timeout is not None and args.stock_request_timeout < 1:
        parser.error(
            f"--stock-request-timeout must be 1 second or more, not {args.stock_request_timeout}"
        )
    if args.reconcile_interval is not None and args.reconcile_interval < 1:
        parser.error(
            f"--reconcile-interval must be 1 second or more, not {args.reconcile_interval}"
        )
    print(f"{platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    sides: list[Side] = []
    with (
        tempfile.TemporaryDirectory(prefix="scale-") as scratch,
        ControlPlane(build_binaries()) as plane,
        contextlib.ExitStack() as stack,
    ):
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        plane.add_kwok_gpu_nodes(args.nodes, H100)
        postgres = None
        if args.postgres:
            from tests.postgres import start_server

            postgres = stack.enter_context(contextlib.contextmanager(start_server)())
        for servers, round in itertools.product(args.servers, range(args.rounds)):
            for ours in (True, False) if round % 2 == 0 else (False, True):
                began = time.monotonic()
                url = None
                if ours and postgres is not None:
                    url = postgres.create_database(f"scale_{servers}_{round}")
                side = run_side(
                    plane,
                    workdir,
                    servers,
                    args.users,
                    ours,
                    ledger_url=url,
                    quotas_on=not args.no_resource_quotas,
                    measure=round == 0,
                    round=round,
                    stock_request_timeout=args.stock_request_timeout,
                    reconcile_interval=args.reconcile_interval,
                )
                sides.append(side)
                print(
                    f"  {side.label} N={servers} round {round + 1}:"
                    f" {time.monotonic() - began:.0f} s, "
                    f"load {os.getloadavg()[0]:.2f}",
                    *(f"\n  refused {n}x: {why}" for why, n in side.refused.most_common()),
                    *(f"\n  failed: {e}" for e in side.errors),
                    flush=True,
                )
            print(table(sides), ratios(sides), sep="\n", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
