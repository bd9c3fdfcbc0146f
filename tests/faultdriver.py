"""Driving a real hub through spawn/stop cycles while something kills it (or its gpuhub service)
at seeded random moments, and checking the ledger against the truth afterwards. Used by the local
fault test (tests/integration/test_faults.py) and the Kubernetes one (tests/k8s/test_faults.py);
each brings a watcher that records the real lifetimes of its servers (processes, pods)."""

from __future__ import annotations

import contextlib
import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from spawner_ext.ledger.models import UsageSession


class Target(Protocol):
    """A hub the driver talks to (tests/integration's Hub, tests/k8s's K8sHub)."""

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response: ...


@dataclass
class Lifetime:
    """One server's real life: where it ran (its runtime reference) and from when to when."""

    ref: str
    started: float
    last_seen: float


@dataclass
class Outcome:
    kills: dict[str, list[float]] = field(default_factory=dict)
    """What was killed -> the recovery time of each kill, in seconds."""
    cycles: int = 0


def patiently(call: Callable[[], requests.Response], timeout: float = 180) -> requests.Response:
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


def server_model(hub: Target, user: str) -> dict[str, Any] | None:
    """The user's default server as the hub lists it, asked until the hub answers with it (while
    it restarts, the proxy may answer with a page of its own)."""
    for _ in range(600):
        response = patiently(lambda: hub.api("GET", f"/users/{user}"))
        with contextlib.suppress(ValueError, KeyError):
            model: dict[str, Any] | None = response.json()["servers"].get("")
            return model
        time.sleep(0.2)
    pytest.fail(f"the hub never listed {user}'s servers")


def cycle(hub: Target, user: str, options: Mapping[str, str], rng: random.Random) -> None:
    """Start a server, let it run a moment, stop it; whatever crashes happen meanwhile."""
    patiently(lambda: hub.api("POST", f"/users/{user}/server", json=dict(options)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = server_model(hub, user)
        if model is None:  # the hub died before it recorded the spawn, or it failed: again
            patiently(lambda: hub.api("POST", f"/users/{user}/server", json=dict(options)))
        elif model["ready"]:
            break
        time.sleep(0.3)
    time.sleep(rng.uniform(0, 1))
    while server_model(hub, user) is not None:
        patiently(lambda: hub.api("DELETE", f"/users/{user}/server"))
        time.sleep(0.5)


def run_cycles(
    hub: Target,
    workers: Mapping[str, Mapping[str, str]],
    cycles_per_worker: int,
    kills: Mapping[str, Callable[[], float]],
    rng: random.Random,
    pause: tuple[float, float] = (15, 30),
) -> Outcome:
    """Every worker's cycles at once, while one of `kills` (each returns its recovery time)
    fires every `pause` seconds: each kind twice first, then chosen at random."""
    outcome = Outcome({name: [] for name in kills}, len(workers) * cycles_per_worker)
    failures: list[BaseException] = []

    def work(user: str, options: Mapping[str, str], seed: int) -> None:
        own = random.Random(seed)
        try:
            patiently(lambda: hub.api("POST", f"/users/{user}"))
            for _ in range(cycles_per_worker):
                cycle(hub, user, options, own)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(user, options, rng.randrange(2**32)), daemon=True)
        for user, options in workers.items()
    ]
    for thread in threads:
        thread.start()
    names = sorted(kills)
    while any(t.is_alive() for t in threads):
        deadline = time.monotonic() + rng.uniform(*pause)
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.2)
        if any(t.is_alive() for t in threads):
            # Each kind at least twice (in turn) before the kinds are chosen at random.
            fewest = min(names, key=lambda n: len(outcome.kills[n]))
            name = fewest if len(outcome.kills[fewest]) < 2 else rng.choice(names)
            outcome.kills[name].append(kills[name]())
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return outcome


def service_pid(hub_dir: Path) -> int | None:
    """The pid of the gpuhub service started for the hub whose files are under `hub_dir`."""
    marker = bytes(hub_dir)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if b"spawner_ext\x00service" in cmdline and marker in cmdline:
                    return int(entry.name)
    return None


def service_ticked_since(hub_url: str, moment: str) -> bool:
    """True once the gpuhub service behind `hub_url` reports a tick later than `moment`."""
    with contextlib.suppress(requests.RequestException, ValueError, KeyError):
        response = requests.get(f"{hub_url}services/gpu-usage/api/v1/status", timeout=5)
        last: str | None = response.json()["last_tick_at"]
        return last is not None and last > moment
    return False


def check_billing(
    sessions: Sequence[UsageSession], lifetimes: Sequence[Lifetime], tolerance: float
) -> dict[str, float]:
    """Every session closed; every billed second within a real server's life; each server's
    lives billed once (sessions that do not overlap), to within `tolerance` seconds (one tick
    and measuring slack: reconciliation sees what runs once a tick)."""
    assert [s.id for s in sessions if s.ended_at is None] == [], "every session is closed"
    billed = [s for s in sessions if (s.gpu_seconds or 0) > 0]
    claimed: dict[int, list[UsageSession]] = {}
    for s in billed:
        assert s.runtime_ref and s.started_at, f"session {s.id} is billed but names no server"
        start = s.started_at.timestamp()
        lives = [
            i
            for i, life in enumerate(lifetimes)
            if life.ref == s.runtime_ref
            and life.started - tolerance <= start <= life.last_seen + tolerance
        ]
        assert lives, f"session {s.id} ({s.runtime_ref}) is billed for a server that never ran"
        # A pod name is used again by the next pod of the same server: a session belongs to
        # the life it overlaps most (then to the one that started nearest to it).
        end = s.ended_at.timestamp() if s.ended_at else start

        def fit(i: int, start: float = start, end: float = end) -> tuple[float, float]:
            life = lifetimes[i]
            overlap = min(end, life.last_seen) - max(start, life.started)
            return (max(overlap, 0.0), -abs(life.started - start))

        nearest = max(lives, key=fit)
        claimed.setdefault(nearest, []).append(s)
    errors = []
    for i, life in enumerate(lifetimes):
        mine = sorted(claimed.get(i, []), key=lambda s: s.started_at.timestamp())  # type: ignore[union-attr]
        # A server that lived less than a tick unseen (its hub died before recording it, and
        # the next spawn replaced it) may go unbilled: its error is its whole life.
        assert mine or life.last_seen - life.started <= tolerance, (
            f"{life.ref} ran {life.last_seen - life.started:.0f}s unbilled"
        )
        for first, second in itertools.pairwise(mine):
            assert first.ended_at and second.started_at
            assert first.ended_at <= second.started_at, (
                f"{life.ref} billed twice: {[_describe(s) for s in mine]}; it ran from "
                f"{life.started:.1f} to {life.last_seen:.1f}; its other lives: "
                f"{[(o.started, o.last_seen) for o in lifetimes if o.ref == life.ref]}"
            )
        seconds = sum((s.gpu_seconds or 0) / s.gpu_count for s in mine)
        error = seconds - (life.last_seen - life.started)
        assert abs(error) <= tolerance, (
            f"{life.ref}: billed {seconds}s, off by {error:.1f}s; it ran from {life.started:.1f} "
            f"to {life.last_seen:.1f}; sessions: {[_describe(s) for s in mine]}; its other lives: "
            f"{[(o.started, o.last_seen) for o in lifetimes if o.ref == life.ref]}"
        )
        errors.append(abs(error))
    return {
        "servers": len(lifetimes),
        "max_error_s": max(errors),
        "mean_error_s": statistics.mean(errors),
    }


def _describe(session: UsageSession) -> str:
    start = session.started_at.timestamp() if session.started_at else None
    end = session.ended_at.timestamp() if session.ended_at else None
    return f"#{session.id} {start}-{end} {session.end_reason} {session.gpu_seconds} GPU-s"


def report(what: str, outcome: Outcome, figures: Mapping[str, float], tick: float) -> str:
    kills = "; ".join(
        f"{name} SIGKILL x{len(times)}, recovery median {statistics.median(times):.1f}s "
        f"max {max(times):.1f}s"
        for name, times in outcome.kills.items()
        if times
    )
    return (
        f"\n{what}: {outcome.cycles} spawn/stop cycles, {figures['servers']:.0f} servers; {kills}; "
        f"billing error max {figures['max_error_s']:.1f}s mean {figures['mean_error_s']:.2f}s "
        f"(tick {tick:.0f}s)"
    )
