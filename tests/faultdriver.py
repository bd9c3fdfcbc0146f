"""The truth about servers, measured by the tests themselves, and a driver that crashes a hub while
servers come and go.

Watchers record each server's life from their own polling, never from what billing reads:
`ProcessWatcher` looks through /proc for local server processes, `PodWatcher` lists pods through
the Kubernetes API. `run_cycles` drives a real hub through spawn/hold/stop cycles while something
kills it (or its gpuhub service) at seeded random moments, and `check_billing` compares the ledger
with the watched lives. Used by the fault tests (tests/integration/test_faults.py,
tests/k8s/test_faults.py) and by the crash tests that bill single servers."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger


class Target(Protocol):
    """A hub the driver talks to (tests/integration's Hub, tests/k8s's K8sHub)."""

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response: ...


# --- the truth: lives of servers, as the tests see them ------------------------------------------


@dataclass
class Lifetime:
    """One server's real life: where it ran (its runtime reference, as the ledger names it) and
    from when to when a watcher saw it (epoch seconds of the watcher's own clock readings)."""

    ref: str
    started: float
    """When the watcher first saw it (at most one poll after it began)."""
    last_seen: float
    """When the watcher last saw it (at most one poll before it ended)."""
    server: str = ""
    """Its GPUHUB_SERVER ('user/servername'), as its environment says."""
    devices: tuple[str, ...] = ()
    """The simulated GPUs it was given (GPUHUB_SIMULATED_DEVICES), as its environment says."""

    @property
    def seconds(self) -> float:
        return self.last_seen - self.started


class ProcessWatcher(threading.Thread):
    """Records every server process of one local hub: session leaders whose environment carries
    the hub's API URL (`marker`, e.g. b"JUPYTERHUB_API_URL=http://127.0.0.1:PORT/hub/api") and
    GPUHUB_SERVER, and whose parent is no such server (kernels inherit both). A life runs from
    the first scan of /proc that finds the process to the last that finds it alive (not a
    zombie); `every` seconds between scans."""

    def __init__(self, marker: bytes, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.marker = marker
        self.every = every
        self.lives: dict[tuple[int, str], Lifetime] = {}
        """(pid, the kernel's start tick of the process: tells a reused pid apart) -> life."""
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.scan()
            time.sleep(self.every)

    def scan(self) -> None:
        now = time.time()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                self._look(int(entry.name), entry, now)

    def _look(self, pid: int, entry: Path, now: float) -> None:
        stat = _stat(entry)
        if stat is None or stat[0] == "Z":
            return
        key = (pid, stat[1])
        known = self.lives.get(key)
        if known is not None:
            known.last_seen = now
            return
        if any(p == stat[2] for p, _ in self.lives):
            return  # a kernel, or another child of a server
        with contextlib.suppress(OSError):
            env = (entry / "environ").read_bytes()
            if self.marker in env and b"GPUHUB_SERVER=" in env and os.getpgid(pid) == pid:
                variables = dict(item.split(b"=", 1) for item in env.split(b"\0") if b"=" in item)
                devices = variables.get(b"GPUHUB_SIMULATED_DEVICES", b"").decode()
                self.lives[key] = Lifetime(
                    f"local:{pid}",
                    now,
                    now,
                    server=variables.get(b"GPUHUB_SERVER", b"").decode(),
                    devices=tuple(d for d in devices.split(",") if d),
                )

    def alive(self) -> list[int]:
        """Pids of the watched servers that run now."""
        found = []
        for pid, start in self.lives:
            stat = _stat(Path(f"/proc/{pid}"))
            if stat is not None and stat[0] != "Z" and stat[1] == start:
                found.append(pid)
        return found

    def devices(self) -> dict[str, tuple[str, ...]]:
        """Server key -> simulated devices, of the watched servers that run now."""
        alive = set(self.alive())
        return {
            life.server: life.devices for (pid, _), life in list(self.lives.items()) if pid in alive
        }

    def shared(self) -> list[tuple[Lifetime, Lifetime]]:
        """Pairs of lives that held the same device at overlapping times (should be none)."""
        lives = sorted(self.lives.values(), key=lambda life: life.started)
        return [
            (a, b)
            for n, a in enumerate(lives)
            for b in lives[n + 1 :]
            if set(a.devices) & set(b.devices) and b.started <= a.last_seen
        ]

    def life_of(self, pid: int) -> Lifetime | None:
        """The newest life of `pid`."""
        lives = [life for (p, _), life in self.lives.items() if p == pid]
        return max(lives, key=lambda life: life.started) if lives else None

    def stop(self) -> list[Lifetime]:
        self.done.set()
        self.join()
        return sorted(self.lives.values(), key=lambda life: life.started)


def _stat(entry: Path) -> tuple[str, str, int] | None:
    """(state, start time in clock ticks, parent pid) of a process; None when it is gone."""
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19], int(fields[1])


class PodWatcher(threading.Thread):
    """Records every pod `list_pods` returns (one namespace's pods, as the API server serves them)
    by uid: a life runs from the first listing that shows it Running to the last listing that
    shows it at all (a pod being deleted still holds its GPUs). `every` seconds between listings;
    when a listing fails, the lives are not extended."""

    def __init__(self, list_pods: Callable[[], Iterable[Mapping[str, Any]]], every: float = 0.2):
        super().__init__(daemon=True)
        self.list_pods = list_pods
        self.every = every
        self.lives: dict[str, Lifetime] = {}
        self.present: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(Exception):
                self.scan()
            time.sleep(self.every)

    def scan(self) -> None:
        pods = list(self.list_pods())
        now = time.time()
        present = set()
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            uid = meta["uid"]
            if uid in self.lives:
                self.lives[uid].last_seen = now
                present.add(uid)
            elif status.get("phase") == "Running":
                self.lives[uid] = Lifetime(f"{meta['namespace']}/{meta['name']}", now, now)
                present.add(uid)
        self.present = present

    def life(self, ref: str) -> Lifetime | None:
        """The newest life at runtime reference `ref` (namespace/name)."""
        lives = [life for life in self.lives.values() if life.ref == ref]
        return max(lives, key=lambda life: life.started) if lives else None

    def stop(self, timeout: float = 120) -> list[Lifetime]:
        """Once no watched pod is left (within `timeout` seconds), every life."""
        deadline = time.monotonic() + timeout
        while self.present and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.present, "every pod ends"
        self.done.set()
        self.join()
        return sorted(self.lives.values(), key=lambda life: life.started)


# --- the driver ----------------------------------------------------------------------------------


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


def cycle(
    hub: Target,
    user: str,
    options: Mapping[str, str],
    hold: tuple[float, float],
    rng: random.Random,
) -> None:
    """Start a server, let it run for `hold` seconds (uniform), stop it; whatever crashes happen
    meanwhile."""
    patiently(lambda: hub.api("POST", f"/users/{user}/server", json=dict(options)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = server_model(hub, user)
        if model is None:  # the hub died before it recorded the spawn, or it failed: again
            patiently(lambda: hub.api("POST", f"/users/{user}/server", json=dict(options)))
        elif model["ready"]:
            break
        time.sleep(0.3)
    time.sleep(rng.uniform(*hold))
    while server_model(hub, user) is not None:
        patiently(lambda: hub.api("DELETE", f"/users/{user}/server"))
        time.sleep(0.5)


def run_cycles(
    hub: Target,
    workers: Mapping[str, Mapping[str, str]],
    cycles_per_worker: int,
    kills: Mapping[str, Callable[[], float]],
    rng: random.Random,
    *,
    hold: tuple[float, float],
    pause: tuple[float, float],
    kills_each: int,
) -> Outcome:
    """Every worker's cycles at once, while one of `kills` (each returns its recovery time)
    fires every `pause` seconds (uniform): the kinds in turn until each has fired `kills_each`
    times, then chosen at random. Workers go on cycling past `cycles_per_worker` until every
    kind has fired that often, so that every kill lands among running servers."""
    outcome = Outcome({name: [] for name in kills})
    failures: list[BaseException] = []
    enough = threading.Event()
    lock = threading.Lock()

    def work(user: str, options: Mapping[str, str], seed: int) -> None:
        own = random.Random(seed)
        try:
            patiently(lambda: hub.api("POST", f"/users/{user}"))
            for done in itertools.count():
                if done >= cycles_per_worker and enough.is_set():
                    break
                cycle(hub, user, options, hold, own)
                with lock:
                    outcome.cycles += 1
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
            fewest = min(names, key=lambda n: len(outcome.kills[n]))
            name = fewest if len(outcome.kills[fewest]) < kills_each else rng.choice(names)
            outcome.kills[name].append(kills[name]())
            if all(len(times) >= kills_each for times in outcome.kills.values()):
                enough.set()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return outcome


# --- local hubs ----------------------------------------------------------------------------------


SERVICE_CMDLINE = b"spawner_ext\x00service"
"""What the command line of a gpuhub service process holds (`python -m spawner_ext service`)."""


def service_pid(hub_dir: Path) -> int | None:
    """The pid of the gpuhub service started for the hub whose files are under `hub_dir`."""
    marker = bytes(hub_dir)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if SERVICE_CMDLINE in cmdline and marker in cmdline:
                    return int(entry.name)
    return None


def service_ticked_since(hub_url: str, moment: str) -> bool:
    """True once the gpuhub service behind `hub_url` reports a tick later than `moment`."""
    with contextlib.suppress(requests.RequestException, ValueError, KeyError):
        response = requests.get(f"{hub_url}services/gpu-usage/api/v1/status", timeout=5)
        last: str | None = response.json()["last_tick_at"]
        return last is not None and last > moment
    return False


# --- the check -----------------------------------------------------------------------------------


def sessions_since(ledger_url: str, since: datetime | None = None) -> list[UsageSession]:
    """The ledger's sessions requested at or after `since` (None: all), in the order they were
    made."""
    ledger = Ledger.open(ledger_url)
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession)
            if since is not None:
                query = query.where(UsageSession.requested_at >= since)
            return list(db.scalars(query.order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()


def check_billing(
    sessions: Sequence[UsageSession], lifetimes: Sequence[Lifetime], tolerance: float
) -> dict[str, float]:
    """The ledger against the watched lives:

    - every session is closed; one whose server never started bills nothing;
    - every session that started bills more than 0 s, for a life the watchers saw at its
      runtime reference that began within `tolerance` of the session's start;
    - every life is billed, in sessions that do not overlap, for its length to within
      `tolerance` seconds (one reconcile tick and the measuring slack).

    A life billed nothing, or twice, is off by its whole length; the tests' servers live much
    longer than `tolerance`, so that fails."""
    # (This module is no test module: pytest does not explain its asserts; the messages do.)
    still_open = [_describe(s) for s in sessions if s.ended_at is None]
    assert still_open == [], f"every session is closed; open: {still_open}"
    never_started = [_describe(s) for s in sessions if s.started_at is None and s.gpu_seconds]
    assert never_started == [], f"sessions whose server never started bill: {never_started}"
    started = [s for s in sessions if s.started_at is not None]
    zero = [_describe(s) for s in started if not s.gpu_seconds]
    assert zero == [], f"{len(zero)} of {len(started)} started sessions bill 0 s: {zero[:5]}"
    claimed: dict[int, list[UsageSession]] = {}
    for s in started:
        assert s.runtime_ref and s.started_at, f"session {s.id} is billed but names no server"
        start = s.started_at.timestamp()
        lives = [
            i
            for i, life in enumerate(lifetimes)
            if life.ref == s.runtime_ref
            and life.started - tolerance <= start <= life.last_seen + tolerance
        ]
        assert lives, f"session {_describe(s)} is billed for a server that never ran"
        # A pod name is used again by the next pod of the same server: a session belongs to
        # the life it overlaps most (then to the one that started nearest to it).
        end = s.ended_at.timestamp() if s.ended_at else start

        def fit(i: int, start: float = start, end: float = end) -> tuple[float, float]:
            life = lifetimes[i]
            overlap = min(end, life.last_seen) - max(start, life.started)
            return (max(overlap, 0.0), -abs(life.started - start))

        claimed.setdefault(max(lives, key=fit), []).append(s)
    errors = []
    for i, life in enumerate(lifetimes):
        mine = sorted(claimed.get(i, []), key=lambda s: s.started_at.timestamp())  # type: ignore[union-attr]
        others = [(o.started, o.last_seen) for o in lifetimes if o.ref == life.ref]
        assert mine, (
            f"{life.ref} ran {life.seconds:.1f}s ({life.started:.1f} to {life.last_seen:.1f}) "
            f"and was billed nothing; its other lives: {others}"
        )
        for first, second in itertools.pairwise(mine):
            assert first.ended_at and second.started_at
            assert first.ended_at <= second.started_at, (
                f"{life.ref} billed twice: {[_describe(s) for s in mine]}; it ran from "
                f"{life.started:.1f} to {life.last_seen:.1f}; its other lives: {others}"
            )
        seconds = sum((s.gpu_seconds or 0) / s.gpu_count for s in mine)
        error = seconds - life.seconds
        assert abs(error) <= tolerance, (
            f"{life.ref}: billed {seconds}s, off by {error:.1f}s; it ran from {life.started:.1f} "
            f"to {life.last_seen:.1f}; sessions: {[_describe(s) for s in mine]}; its other lives: "
            f"{others}"
        )
        errors.append(error)
    return {
        "servers": len(lifetimes),
        "shortest_s": min(life.seconds for life in lifetimes),
        "longest_s": max(life.seconds for life in lifetimes),
        "max_error_s": max(abs(e) for e in errors),
        "mean_error_s": statistics.mean(abs(e) for e in errors),
        "mean_signed_error_s": statistics.mean(errors),
    }


def _describe(session: UsageSession) -> str:
    start = session.started_at.timestamp() if session.started_at else None
    end = session.ended_at.timestamp() if session.ended_at else None
    return (
        f"#{session.id} {session.runtime_ref} {start}-{end} {session.end_reason} "
        f"{session.gpu_seconds} GPU-s"
    )


def report(
    what: str, outcome: Outcome, figures: Mapping[str, float], tick: float, tolerance: float
) -> str:
    kills = "; ".join(
        f"{name} SIGKILL x{len(times)}, recovery median {statistics.median(times):.1f}s "
        f"max {max(times):.1f}s"
        for name, times in outcome.kills.items()
        if times
    )
    return (
        f"\n{what}: {outcome.cycles} spawn/stop cycles, {figures['servers']:.0f} servers that "
        f"lived {figures['shortest_s']:.0f}-{figures['longest_s']:.0f}s; {kills}; billing error "
        f"max {figures['max_error_s']:.1f}s mean {figures['mean_error_s']:.2f}s (signed mean "
        f"{figures['mean_signed_error_s']:+.2f}s; tick {tick:.0f}s, bound {tolerance:.0f}s)"
    )
