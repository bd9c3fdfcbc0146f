"""Money is counted once on Kubernetes too: across more than 100 spawn/stop cycles through a real
hub and GPUKubeSpawner on the real control plane (kwok GPU nodes), the hub and the gpuhub service
are SIGKILLed at seeded random moments. Afterwards every pod that ran has exactly its lifetime
billed (to within one reconcile tick), in sessions that do not overlap, and nothing else is.

The truth comes from the API server: a watcher lists the pods every 0.2 s and records, per pod
uid, when it started (`status.startTime`) and when it was last seen Running."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hub import K8sHub, delete_namespaces, running_hub
from sqlalchemy import select
from sqlalchemy.orm import Session
from testbed import H100, ControlPlane, Json

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from tests.faultdriver import (
    Lifetime,
    check_billing,
    report,
    run_cycles,
    service_pid,
    service_ticked_since,
)

pytestmark = [pytest.mark.k8s, pytest.mark.faults]

POOL_LABEL = "gpuhub.test/pool"
TICK = 2
SLACK = 2.0  # seconds: whole-second pod timestamps, the watcher's poll
SEED = 20261202
USERS = ["ada", "lin", "kai", "grace"]
CYCLES_PER_WORKER = 26  # 104 cycles
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def catalog(pool: str, prefix: str) -> Json:
    return {
        "metering": {"currency": "USD", "reconcile_interval": f"{TICK}s", "start_grace": "20s"},
        "kubernetes": {"namespace_template": f"{prefix}-{{team}}"},
        "gpu_types": {
            "h100-80gb": {
                "display_name": "NVIDIA H100 80GB",
                "resource": "nvidia.com/gpu",
                "price_per_hour": 4.10,
                "node_selector": {"nvidia.com/gpu.product": H100.product, POOL_LABEL: pool},
                "tolerations": TOLERATIONS,
            }
        },
        "teams": {
            "vision": {"users": USERS, "quota": {"gpus": {"h100-80gb": 8}}},
        },
        "profiles": [
            {"display_name": "One H100", "slug": "h100-single", "gpu": {"type": "h100-80gb"}},
        ],
    }


@pytest.fixture(scope="module")
def hub(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sHub]:
    pool = secrets.token_hex(3)
    prefix = f"gf-{pool}"
    spec = dataclasses.replace(H100, gpus=8, labels={POOL_LABEL: pool})
    nodes = control_plane.add_kwok_gpu_nodes(1, spec)
    try:
        with running_hub(
            control_plane,
            tmp_path_factory.mktemp("k8s-faults"),
            namespace=f"{prefix}-hub",
            catalog=catalog(pool, prefix),
            start_timeout=60,
        ) as started:
            started.create_users(USERS)
            started.prefix = prefix  # type: ignore[attr-defined]
            yield started
    finally:
        delete_namespaces(control_plane, [f"{prefix}-hub", f"{prefix}-vision"])
        for node in nodes:
            control_plane.api.delete(f"/api/v1/nodes/{node}")


class PodWatcher(threading.Thread):
    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        super().__init__(daemon=True)
        self.plane = plane
        self.namespace = namespace
        self.seen: dict[str, Lifetime] = {}
        self.live: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(Exception):
                pods = self.plane.api.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]
                now = time.time()
                live = set()
                for pod in pods:
                    meta, status = pod["metadata"], pod.get("status") or {}
                    if status.get("phase") != "Running" or not status.get("startTime"):
                        continue
                    uid = meta["uid"]
                    live.add(uid)
                    if uid not in self.seen:
                        started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
                        ref = f"{meta['namespace']}/{meta['name']}"
                        self.seen[uid] = Lifetime(ref, started.timestamp(), now)
                    else:
                        self.seen[uid].last_seen = now
                self.live = live
            time.sleep(0.2)

    def stop(self) -> list[Lifetime]:
        deadline = time.monotonic() + 120
        while self.live and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.live, "every pod ends"
        self.done.set()
        self.join()
        return list(self.seen.values())


def test_hub_and_service_sigkills_at_random_moments_bill_every_pod_exactly_once(
    hub: K8sHub, control_plane: ControlPlane
) -> None:
    def kill_hub() -> float:
        killed = time.monotonic()
        hub.kill()
        hub.start()  # returns once the hub's API answers
        return time.monotonic() - killed

    def kill_service() -> float:
        pid = hub.wait("the gpuhub service", lambda: service_pid(hub.workdir), 120)
        killed, moment = time.monotonic(), datetime.now(UTC).isoformat()
        os.kill(pid, signal.SIGKILL)
        hub.wait(
            "a new service to tick", lambda: service_ticked_since(hub.url, moment), 120, every=0.2
        )
        return time.monotonic() - killed

    since = datetime.now(UTC)
    watcher = PodWatcher(control_plane, f"{hub.prefix}-vision")  # type: ignore[attr-defined]
    watcher.start()
    workers = {user: {"profile": "h100-single"} for user in USERS}
    outcome = run_cycles(
        hub,
        workers,
        CYCLES_PER_WORKER,
        {"hub": kill_hub, "service": kill_service},
        random.Random(SEED),
        pause=(2, 5),  # kwok pods start at once: cycles are quick here
    )
    lifetimes = watcher.stop()
    time.sleep(3 * TICK)
    ledger = Ledger.open(hub.ledger_url or "")
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession).where(UsageSession.requested_at >= since)
            sessions = list(db.scalars(query.order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()
    figures = check_billing(sessions, lifetimes, TICK + SLACK)
    assert all(times for times in outcome.kills.values()), outcome.kills
    print(report("Kubernetes", outcome, figures, TICK))
