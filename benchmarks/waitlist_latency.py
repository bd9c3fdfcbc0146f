"""The wait-list benchmark's timings (run by benchmarks/waitlist.py): `Ledger.join` and
`Ledger.admit` with 1,000 requests in line, on SQLite and PostgreSQL, beside bare transactions on
the same engine, and a cProfile of whatever misses the 5 ms p99 target. Prints nothing itself."""

from __future__ import annotations

import cProfile
import io
import math
import pstats
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, text
from sqlalchemy.orm import Session

from benchmarks.admission import Stats, floor
from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import AdmissionRefused, Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.models import WaitlistRequest
from spawner_ext.ledger.store import Ledger
from spawner_ext.ledger.waitlist import JoinRequest

ROOT = Path(__file__).parents[1]
EXAMPLE_CATALOG = ROOT / "hub_config" / "catalog.yaml"
GPU_TYPE = "h100-80gb"
CAPACITY = 8
TARGET_P99_MS = 5.0

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
INSTALL = "local"
LINE_TEAMS = ("vision", "nlp")  # the example catalog's teams that may start H100 profiles


class StepClock:
    """The ledger's clock, moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def h100_spawn(user: str, team: str, server: str = "bench") -> Request:
    return Request(user, server, team, "h100-single", GPU_TYPE, 1, Decimal("4.10"), "USD", "bench")


def prepare_ledger(
    url: str, catalog: Catalog, waiting: int, seed: int, history_days: float = 8
) -> tuple[Ledger, StepClock]:
    """A ledger with `history_days` of H100 sessions (8: what the fair share reads, about 700
    sessions), 8 H100s all running servers, `waiting` requests in the H100 line (bulk-inserted,
    as joins would leave them) and 8 free A100s with an empty line."""
    upgrade(url)
    rng = random.Random(seed)
    clock = StepClock(NOW - timedelta(days=history_days))
    ledger = Ledger.open(url, clock=clock, install=INSTALL)
    ledger.set_capacity(GPU_TYPE, 10_000)
    n = 0
    while clock.now < NOW - timedelta(hours=14):
        team = LINE_TEAMS[n % 2]
        admitted = ledger.admit(catalog, h100_spawn(f"h{n % 40:02d}", team, f"h{n}"))
        ledger.mark_started(admitted.session, f"local:{n}", at=clock.now + timedelta(seconds=30))
        length = timedelta(minutes=min(rng.lognormvariate(math.log(60), 1.0), 720))
        ledger.close(admitted.session_id, EndReason.STOPPED, at=clock.now + length)
        clock.now += timedelta(minutes=rng.uniform(5, 30))
        n += 1
    clock.now = NOW - timedelta(hours=2)
    ledger.set_capacity(GPU_TYPE, CAPACITY)
    ledger.set_capacity("a100-40gb", CAPACITY)
    for i in range(CAPACITY):
        admitted = ledger.admit(catalog, h100_spawn(f"r{i}", LINE_TEAMS[i % 2]))
        ledger.mark_started(admitted.session, f"local:r{i}")
    rows = [
        {
            "uid": f"{i:032x}",
            "install": INSTALL,
            "user": f"w{i:04d}",
            "server_name": "",
            "team": LINE_TEAMS[i % 2],
            "profile": "h100-single",
            "gpu_type": GPU_TYPE,
            "gpu_count": 1,
            "options": '{"profile": "h100-single"}',
            "start": "ask" if i % 3 else "auto",
            "state": "waiting",
            "joined_at": NOW - timedelta(minutes=100) + timedelta(seconds=5 * i),
            "start_attempts": 0,
        }
        for i in range(waiting)
    ]
    if rows:
        with ledger.engine.begin() as connection:
            connection.execute(insert(WaitlistRequest), rows)
    clock.now = NOW
    return ledger, clock


@dataclass(frozen=True)
class Timed:
    backend: str
    what: str
    stats: Stats
    samples: int


def time_calls(
    calls: int, budget_s: float, one: Callable[[int], None], undo: Callable[[int], None]
) -> list[float]:
    """Time `one(i)` up to `calls` times (fewer once `budget_s` of timed calls is spent); run
    `undo(i)` untimed after each, so the state stays as prepared."""
    timings: list[float] = []
    for i in range(calls):
        start = time.perf_counter()
        one(i)
        timings.append(time.perf_counter() - start)
        undo(i)
        if sum(timings) > budget_s and len(timings) >= 5:
            break
    return timings


def latency_case(
    backend: str,
    url: str,
    waiting: int,
    calls: int,
    budget_s: float,
    seed: int,
    log: Callable[[str], None],
    history_days: float = 8,
) -> tuple[list[Timed], dict[str, str]]:
    """Time join, a refused and an admitted direct spawn, and the bare transaction; profile
    whatever has a p99 over the target. Returns the timings and the profiles."""
    catalog = load_catalog(EXAMPLE_CATALOG)
    start = time.perf_counter()
    ledger, _ = prepare_ledger(url, catalog, waiting, seed, history_days)
    log(f"{backend}: ledger prepared in {time.perf_counter() - start:.1f} s ({waiting:,} waiting)")
    joined: list[str] = []

    def join_request(i: int) -> JoinRequest:
        team = LINE_TEAMS[i % 2]
        return JoinRequest(
            f"j{i:05d}", "", team, "h100-single", GPU_TYPE, 1, {"profile": "h100-single"}
        )

    def join(i: int) -> None:
        joined.append(ledger.join(catalog, join_request(i)).id)

    def join_locked(i: int) -> None:
        joined.append(ledger.join(catalog, join_request(i), place=False).id)

    def unjoin(i: int) -> None:
        with ledger.engine.begin() as connection:
            connection.execute(delete(WaitlistRequest).where(WaitlistRequest.uid == joined[-1]))

    def refused(i: int) -> None:
        try:
            ledger.admit(catalog, h100_spawn(f"d{i:05d}", LINE_TEAMS[i % 2]))
        except AdmissionRefused:
            return
        raise AssertionError("a direct H100 spawn past a full line must be refused")

    admitted_ids: list[int] = []

    def admitted(i: int) -> None:
        spawn = Request(
            f"a{i:05d}", "bench", "vision", "a100-single", "a100-40gb", 1, Decimal("1.80"),
            "USD", "bench",
        )  # fmt: skip
        admitted_ids.append(ledger.admit(catalog, spawn).session_id)

    def close(i: int) -> None:
        ledger.close(admitted_ids[-1], EndReason.STOPPED)

    def nothing(i: int) -> None:
        pass

    cases: list[tuple[str, Callable[[int], None], Callable[[int], None]]] = [
        (f"join, {waiting:,} waiting: the transaction (type's lock held)", join_locked, unjoin),
        (f"join, {waiting:,} waiting: with its place read after", join, unjoin),
        (f"admit H100, refused ({waiting:,} waiting)", refused, nothing),
        ("admit A100, admitted (empty line)", admitted, close),
    ]
    results: list[Timed] = []
    profiles: dict[str, str] = {}
    try:
        for what, one, undo in cases:
            for i in range(3):  # warm-up, untimed
                one(10_000 + i)
                undo(10_000 + i)
            timings = time_calls(calls, budget_s, one, undo)
            stats = Stats.of(timings)
            results.append(Timed(backend, what, stats, len(timings)))
            log(f"  {what}: p50 {stats.p50:.2f} ms, p99 {stats.p99:.2f} ms ({len(timings)} calls)")
            if stats.p99 > TARGET_P99_MS:
                profiles[f"{backend}: {what}"] = profile(one, undo, max(3, min(20, len(timings))))
        results.append(
            Timed(
                backend,
                "bare: BEGIN, SELECT 1, COMMIT",
                Stats.of(floor(ledger.engine, calls)),
                calls,
            )
        )
        results.append(
            Timed(
                backend,
                "bare: BEGIN, INSERT 1 row, COMMIT",
                Stats.of(insert_floor(ledger.engine, calls)),
                calls,
            )
        )
    finally:
        ledger.engine.dispose()
    return results, profiles


def insert_floor(engine: Engine, count: int) -> list[float]:
    """The cheapest writing transaction on the same engine: one row into a scratch table (on
    SQLite the commit of a write waits for the disk, as every admission's does)."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS bench_floor (n INTEGER)"))
    timings = []
    for n in range(count):
        start = time.perf_counter()
        with Session(engine) as db, db.begin():
            db.execute(text("INSERT INTO bench_floor (n) VALUES (:n)"), {"n": n})
        timings.append(time.perf_counter() - start)
    return timings


def profile(one: Callable[[int], None], undo: Callable[[int], None], calls: int) -> str:
    """cProfile of `calls` calls: the functions with the most cumulative and own time."""
    profiler = cProfile.Profile()
    for i in range(calls):
        profiler.enable()
        one(20_000 + i)
        profiler.disable()
        undo(20_000 + i)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(18)
    stats.sort_stats("tottime").print_stats(8)
    return f"{calls} calls\n" + out.getvalue()


@contextmanager
def scratch_url(backend: str, server: Any, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        path = workdir / "waitlist.sqlite"
        try:
            yield f"sqlite:///{path}"
        finally:
            path.unlink(missing_ok=True)
        return
    name = "bench_waitlist"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


def latency_table(results: Sequence[Timed]) -> str:
    lines = [
        "| backend | call | calls | p50 (ms) | p95 | p99 | max | mean |",
        "|" + "---|" * 8,
    ]
    for r in results:
        s = r.stats
        miss = " ✗" if s.p99 > TARGET_P99_MS and not r.what.startswith("bare") else ""
        lines.append(
            f"| {r.backend} | {r.what} | {r.samples} | {s.p50:.2f} | {s.p95:.2f} "
            f"| {s.p99:.2f}{miss} | {s.max:.2f} | {s.mean:.2f} |"
        )
    return "\n".join(lines)
