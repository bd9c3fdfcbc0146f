"""Money is counted once, whatever crashes: the hub SIGKILLed at seeded random moments across
more than 100 spawn/stop cycles of real servers, and the gpuhub service SIGKILLed likewise.
Afterwards every server process that ran has exactly its lifetime billed (to within one
reconcile tick), in sessions that do not overlap, and nothing else is billed.

The truth is taken from the machine, not from the hub: a watcher thread reads /proc every 0.1 s
and records each server process's start (from the kernel) and when it was last seen alive."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.local.processes import process_start_time

from .conftest import Hub, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
TICK = 3  # seconds between reconciliations in this test's catalog
START_GRACE = 20  # seconds; orphans (servers the killed hub never recorded) end after this
SEED = 20261201
WORKERS = {"ada": {"profile": "h100-single"}, "grace": {"profile": "h100-single"},
           "lin": {"profile": "h100-single", "team": "vision"}}  # fmt: skip
CYCLES_PER_WORKER = 34  # 102 spawn/stop cycles in all
SLACK = 1.0  # seconds: the watcher's poll, whole-second billing, clocks read a moment apart


def catalog_text(**extra: str) -> str:
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    return text.replace("metering:\n", f"metering:\n  start_grace: {START_GRACE}s\n", 1)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("faults")
    catalog = workdir / "catalog.yaml"
    catalog.write_text(catalog_text())
    hub = Hub(workdir, "6xh100-80gb", "--config", str(catalog))
    hub.extra_config.write_text(
        hub.extra_config.read_text() + "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}\n"
    )
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


# --- the truth: server processes and their lifetimes ----------------------------------------


@dataclass
class Lifetime:
    pid: int
    started: float
    last_seen: float


class Watcher(threading.Thread):
    """Records every server process of one hub (session leaders carrying GPUHUB_SERVER)."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(daemon=True)
        self.marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub_port(hub)}/hub/api".encode()
        self.seen: dict[int, Lifetime] = {}
        self.problems: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                known = self.seen.get(pid)
                if known is not None:
                    if _alive(pid):
                        started = process_start_time(pid)
                        if started and abs(started.timestamp() - known.started) > 1:
                            self.problems.append(f"pid {pid} was reused by another server")
                        known.last_seen = now
                    continue
                with contextlib.suppress(OSError):
                    env = (entry / "environ").read_bytes()
                    if self.marker not in env or b"GPUHUB_SERVER=" not in env:
                        continue
                    if os.getpgid(pid) != pid or not _alive(pid):
                        continue  # a kernel or other child of a server
                    started = process_start_time(pid)
                    if started is not None:
                        self.seen[pid] = Lifetime(pid, started.timestamp(), now)
            time.sleep(0.1)

    def alive(self) -> list[int]:
        return [pid for pid in self.seen if _alive(pid)]


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def hub_port(hub: Hub) -> int:
    return int((hub.state_dir / "hub-port").read_text())


# --- driving the hub while it is being killed -------------------------------------------------


def patiently(call: Callable[[], requests.Response], timeout: float = 120) -> requests.Response:
    """The call, retried while the hub is down or restarting (no answer, or 5xx)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            response = call()
            if response.status_code < 500:
                return response
        if time.monotonic() > deadline:
            pytest.fail("the hub did not come back")
        time.sleep(0.3)


def server_model(hub: Hub, user: str) -> dict[str, Any] | None:
    """The user's default server as the hub lists it, asked until the hub answers with it (while
    it restarts, the proxy may answer with a page of its own)."""
    for _ in range(600):
        response = patiently(lambda: hub.api("GET", f"/users/{user}"))
        with contextlib.suppress(ValueError, KeyError):
            model: dict[str, Any] | None = response.json()["servers"].get("")
            return model
        time.sleep(0.2)
    pytest.fail(f"the hub never listed {user}'s servers")


def cycle(hub: Hub, user: str, options: dict[str, str], rng: random.Random) -> None:
    """Start a server, let it run a moment, stop it; whatever the hub's crashes do meanwhile."""
    patiently(lambda: hub.api("POST", f"/users/{user}/server", json=options))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        model = server_model(hub, user)
        if model is None:  # the hub died before it recorded the spawn: spawn again
            patiently(lambda: hub.api("POST", f"/users/{user}/server", json=options))
        elif model["ready"]:
            break
        time.sleep(0.3)
    time.sleep(rng.uniform(0, 2))
    while server_model(hub, user) is not None:
        patiently(lambda: hub.api("DELETE", f"/users/{user}/server"))
        time.sleep(0.5)


def ready(hub: Hub) -> bool:
    with contextlib.suppress(requests.RequestException):
        return hub.api("GET", "/").status_code == 200
    return False


# --- checking the ledger against the truth ----------------------------------------------------


def all_sessions(hub: Hub) -> list[UsageSession]:
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        with Session(ledger.engine) as db:
            return list(db.scalars(select(UsageSession).order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()


def check_billing(hub: Hub, lifetimes: dict[int, Lifetime], since: datetime) -> dict[str, float]:
    sessions = [s for s in all_sessions(hub) if s.requested_at >= since]
    assert [s.id for s in sessions if s.ended_at is None] == [], "every session is closed"
    billed = [s for s in sessions if (s.gpu_seconds or 0) > 0]
    by_ref: dict[str, list[UsageSession]] = {}
    for s in billed:
        assert s.runtime_ref, f"session {s.id} is billed but names no server"
        by_ref.setdefault(s.runtime_ref, []).append(s)
    refs = {f"local:{pid}" for pid in lifetimes}
    assert set(by_ref) <= refs, f"billed servers that never ran: {set(by_ref) - refs}"
    errors = []
    for pid, life in lifetimes.items():
        mine = sorted(by_ref.get(f"local:{pid}", []), key=lambda s: s.started_at or s.ended_at)
        assert mine, f"server pid {pid} ran {life.last_seen - life.started:.0f}s unbilled"
        for first, second in itertools.pairwise(mine):
            assert first.ended_at and second.started_at
            assert first.ended_at <= second.started_at, f"pid {pid} billed twice: {mine}"
        seconds = sum((s.gpu_seconds or 0) / s.gpu_count for s in mine)
        error = seconds - (life.last_seen - life.started)
        assert abs(error) <= TICK + SLACK, f"pid {pid}: billed {seconds}s, off by {error:.1f}s"
        errors.append(abs(error))
    return {
        "servers": len(lifetimes),
        "max_error_s": max(errors),
        "mean_error_s": statistics.mean(errors),
    }


def run_cycles(
    hub: Hub, kill: Callable[[], float], rng: random.Random
) -> tuple[Watcher, list[float]]:
    """Every worker's cycles, while `kill` (returning its recovery time) fires at random."""
    watcher = Watcher(hub)
    watcher.start()
    recoveries: list[float] = []
    finished = threading.Event()
    failures: list[BaseException] = []

    def work(user: str, options: dict[str, str], seed: int) -> None:
        own = random.Random(seed)
        patiently(lambda: hub.api("POST", f"/users/{user}"))
        try:
            for _ in range(CYCLES_PER_WORKER):
                cycle(hub, user, options, own)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(user, options, rng.randrange(2**32)), daemon=True)
        for user, options in WORKERS.items()
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        pause = rng.uniform(20, 40)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.2)
        if any(t.is_alive() for t in threads):
            recoveries.append(kill())
    for thread in threads:
        thread.join()
    finished.set()
    if failures:
        raise failures[0]
    wait_for("every server to end", lambda: not watcher.alive(), START_GRACE + 60, 0.5)
    time.sleep(0.5)
    watcher.done.set()
    watcher.join()
    assert watcher.problems == []
    return watcher, recoveries


@pytest.mark.integration
def test_hub_sigkill_at_random_moments_bills_every_server_exactly_once(hub: Hub) -> None:
    rng = random.Random(SEED)

    def kill_hub() -> float:
        killed = time.monotonic()
        hub.crash()
        hub.start()
        wait_for("the hub to serve again", lambda: ready(hub), 120, 0.1)
        return time.monotonic() - killed

    since = datetime.now(UTC)
    watcher, recoveries = run_cycles(hub, kill_hub, rng)
    time.sleep(3 * TICK)  # the restarted hub's service reconciles the last of them
    figures = check_billing(hub, watcher.seen, since)
    assert len(recoveries) >= 5
    print(
        f"\nhub SIGKILL x{len(recoveries)} over {len(WORKERS) * CYCLES_PER_WORKER} cycles: "
        f"{figures['servers']} servers, billing error max {figures['max_error_s']:.1f}s "
        f"mean {figures['mean_error_s']:.2f}s (tick {TICK}s); recovery (kill to hub serving) "
        f"median {statistics.median(recoveries):.1f}s max {max(recoveries):.1f}s"
    )


def service_pid(hub: Hub) -> int | None:
    marker = b"spawner_ext\x00service"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (
                    marker in (entry / "cmdline").read_bytes()
                    and str(hub.state_dir).encode() in (entry / "cmdline").read_bytes()
                ):
                    return int(entry.name)
    return None


def service_status(hub: Hub) -> dict[str, Any] | None:
    with contextlib.suppress(requests.RequestException, ValueError):
        response = requests.get(f"{hub.url}services/gpu-usage/api/v1/status", timeout=5)
        if response.status_code == 200:
            status: dict[str, Any] = response.json()
            return status
    return None


@pytest.mark.integration
def test_service_sigkill_at_random_moments_bills_every_server_exactly_once(hub: Hub) -> None:
    rng = random.Random(SEED + 1)
    wait_for("the gpuhub service", lambda: service_pid(hub), 60, 0.2)

    def kill_service() -> float:
        pid = service_pid(hub)
        assert pid is not None, "the gpuhub service runs"
        killed = time.monotonic()
        os.kill(pid, 9)
        new = wait_for(
            "JupyterHub to restart the service",
            lambda: (p := service_pid(hub)) != pid and p,
            120,
            0.2,
        )
        assert new
        before = datetime.now(UTC).isoformat()
        wait_for(
            "the new service to tick",
            lambda: (s := service_status(hub)) and s["last_tick_at"] and s["last_tick_at"] > before,
            120,
            0.2,
        )
        return time.monotonic() - killed

    since = datetime.now(UTC)
    watcher, recoveries = run_cycles(hub, kill_service, rng)
    time.sleep(3 * TICK)
    figures = check_billing(hub, watcher.seen, since)
    print(
        f"\nservice SIGKILL x{len(recoveries)}: {figures['servers']} servers, billing error max "
        f"{figures['max_error_s']:.1f}s; recovery (kill to ticking again) median "
        f"{statistics.median(recoveries):.1f}s max {max(recoveries):.1f}s"
    )
