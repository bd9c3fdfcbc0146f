"""Admission benchmark: how long `Ledger.admit` takes to decide with 100k and 1M billing rows,
on SQLite and PostgreSQL. It prints its figures; it asserts nothing about time.

Run: .venv/bin/python -m benchmarks.admission [--rows 100000 1000000]
     [--backends sqlite postgresql] [--decisions N] [--explain]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import (
    Engine,
    event,
    text,
)
from sqlalchemy.orm import Session

from spawner_ext.catalog import Catalog, parse_catalog
from spawner_ext.catalog.loader import read_catalog_text
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import AdmissionRefused, Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.rules import month_start
from spawner_ext.ledger.store import Ledger

ROOT = Path(__file__).parents[1]
EXAMPLE_CATALOG = ROOT / "hub_config" / "catalog.yaml"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
"""Late in a month, so the month's GPU-hours sum covers 27.5 days of history (near the worst)."""
HISTORY = timedelta(days=365)
TARGET_P99_MS = 5.0
SERVER_NAME = "bench"
"""Decisions use a server name no historical open session has, so `_close_stale` closes nothing
and the open set stays as filled."""

COLUMNS = (
    "user",
    "team",
    "server_name",
    "profile",
    "gpu_type",
    "gpu_count",
    "price_per_hour",
    "currency",
    "requested_at",
    "started_at",
    "last_seen_at",
    "ended_at",
    "end_reason",
    "gpu_seconds",
    "cost",
    "runtime_ref",
    "catalog_version",
)
TIME_COLUMNS = tuple(COLUMNS.index(c) for c in ("requested_at", "started_at", "last_seen_at"))
TIME_COLUMNS += (COLUMNS.index("ended_at"),)
Row = tuple[Any, ...]


# --- the population: teams, users, profiles ----------------------------------------------------


@dataclass(frozen=True)
class GPUProfile:
    slug: str
    gpu_type: str
    count: int
    price_per_hour: Decimal


@dataclass
class TeamPlan:
    """One team of the benchmark: a key, the example team whose quota it copies, its users,
    its share of the sessions and the GPU profiles it may start."""

    key: str
    template: str
    weight: float
    users: list[str]
    profiles: list[GPUProfile] = field(default_factory=list)
    quota: dict[str, int] = field(default_factory=dict)
    month_gpu_seconds: int = 0
    open_users: list[str] = field(default_factory=list)


def plan_teams(count: int) -> list[TeamPlan]:
    """The example catalog's teams (vision, nlp, teaching) and clones of them up to `count`
    teams; shares of the sessions fall as 1/rank (a few big teams, a long tail)."""
    templates = ["nlp", "vision", "teaching"]
    teams = []
    for rank in range(count):
        template = templates[rank % 3]
        key = template if rank < 3 else f"{template}-{rank + 1:02d}"
        users = max(8, 60 // (rank + 1))
        teams.append(
            TeamPlan(key, template, 1 / (rank + 1), [f"{key}-u{n:02d}" for n in range(users)])
        )
    return teams


def bench_catalog(teams: Sequence[TeamPlan], budgets: dict[str, int] | None = None) -> Catalog:
    """The example catalog with the clone teams added (same quotas as their template) and, when
    given, monthly budgets replaced by `budgets` (GPU-hours by team)."""
    raw = yaml.safe_load(read_catalog_text(EXAMPLE_CATALOG))
    base = raw["teams"]
    raw["teams"] = {}
    for team in teams:
        entry = dict(base[team.template])
        entry["users"] = list(team.users)
        entry["display_name"] = f"{base[team.template].get('display_name', team.template)}"
        if budgets is not None:
            entry["quota"] = {**entry["quota"], "monthly_gpu_hours": budgets[team.key]}
        raw["teams"][team.key] = entry
    for profile in raw["profiles"]:
        allowed = profile.get("allowed_teams")
        if allowed is not None:
            profile["allowed_teams"] = [t.key for t in teams if t.template in allowed]
    catalog = parse_catalog(yaml.safe_dump(raw, sort_keys=False), "<benchmark catalog>")
    for team in teams:
        team.profiles = gpu_profiles(catalog, team.key)
        team.quota = dict(catalog.teams[team.key].quota.gpus)
    return catalog


def gpu_profiles(catalog: Catalog, team: str) -> list[GPUProfile]:
    """The GPU profiles `team` may start (as the spawn form offers them)."""
    spec = catalog.teams[team]
    found = []
    for profile in catalog.profiles:
        if profile.gpu is None:
            continue
        if profile.allowed_teams is not None and team not in profile.allowed_teams:
            continue
        if spec.profiles is not None and profile.slug not in spec.profiles:
            continue
        if spec.quota.gpus.get(profile.gpu.type, 0) == 0:
            continue
        price = catalog.gpu_types[profile.gpu.type].price_per_hour * profile.gpu.count
        found.append(GPUProfile(profile.slug, profile.gpu.type, profile.gpu.count, price))
    return found


# --- the history: N rows over the last year ----------------------------------------------------

END_REASONS = [
    (EndReason.STOPPED, 50),
    (EndReason.CULLED_IDLE, 30),
    (EndReason.CULLED_GPU_IDLE, 12),
    (EndReason.RECONCILED, 3),
    (EndReason.NODE_LOST, 1),
]


def history(
    rows: int, teams: Sequence[TeamPlan], now: datetime, *, seed: int = 1, chunk: int = 20_000
) -> Iterator[list[Row]]:
    """`rows` closed sessions in time order over the year before `now`, in chunks: 40% CPU-only,
    4% failed spawns, the rest GPU servers of a lognormal length (median 1 h, cut at 3 days).
    Adds each team's GPU-seconds this month to `TeamPlan.month_gpu_seconds`."""
    rng = random.Random(seed)
    cum_weights = []
    total = 0.0
    for team in teams:
        total += team.weight
        cum_weights.append(total)
    reasons = [r.value for r, _ in END_REASONS]
    reason_weights = [w for _, w in END_REASONS]
    first = now - HISTORY
    step = (HISTORY - timedelta(hours=2)) / max(rows, 1)
    month = month_start(now)
    batch: list[Row] = []
    for i in range(rows):
        (team,) = rng.choices(teams, cum_weights=cum_weights)
        user = rng.choice(team.users)
        requested = first + step * (i + rng.random())
        server = "" if rng.random() < 0.8 else rng.choice(("gpu", "big", "exp"))
        if rng.random() < 0.4 or not team.profiles:
            profile, gpu_type, count, price = "cpu-small", None, 0, Decimal(0)
        else:
            gpu = rng.choice(team.profiles)
            profile, gpu_type, count, price = gpu.slug, gpu.gpu_type, gpu.count, gpu.price_per_hour
        head = (user, team.key, server, profile, gpu_type, count, float(price), "USD")
        if rng.random() < 0.04:
            ended = requested + timedelta(seconds=rng.uniform(30, 600))
            failed = EndReason.FAILED.value
            batch.append((*head, requested, None, None, ended, failed, 0, 0.0, None, "bench"))
        else:
            started = requested + timedelta(seconds=rng.uniform(5, 90))
            seconds = min(int(rng.lognormvariate(math.log(3600), 1.0)), 3 * 86400)
            ended = min(started + timedelta(seconds=seconds), now - timedelta(minutes=5))
            seconds = max(int((ended - started).total_seconds()), 0)
            reason = (
                EndReason.MAX_AGE.value
                if seconds >= 3 * 86400
                else rng.choices(reasons, weights=reason_weights)[0]
            )
            cost = round(float(price) * seconds / 3600, 6)
            ref = f"gpuhub-{team.key}/jupyter-{user}"
            batch.append(
                (
                    *head,
                    requested,
                    started,
                    ended,
                    ended,
                    reason,
                    seconds * count,
                    cost,
                    ref,
                    "bench",
                )
            )
            if count and ended > month:
                team.month_gpu_seconds += int((ended - max(started, month)).total_seconds()) * count
        if len(batch) >= chunk:
            yield batch
            batch = []
    yield batch + open_sessions(teams, now, rng)


def open_sessions(teams: Sequence[TeamPlan], now: datetime, rng: random.Random) -> list[Row]:
    """Servers running now, a few dozen: per team, one GPU of each GPU type it may use, and a
    full quota of the scarce ones (quota of 4 or less), each held by another user."""
    rows: list[Row] = []
    for team in teams:
        users = iter(team.users)
        for gpu in {p.gpu_type: p for p in team.profiles if p.count == 1}.values():
            quota = team.quota[gpu.gpu_type]
            for _ in range(quota if quota <= 4 else 1):
                user = next(users)
                team.open_users.append(user)
                started = now - timedelta(seconds=rng.uniform(600, 20 * 3600))
                month = max(started, month_start(now))
                team.month_gpu_seconds += int((now - month).total_seconds())
                head = (user, team.key, "", gpu.slug, gpu.gpu_type, 1, float(gpu.price_per_hour))
                ref = f"gpuhub-{team.key}/jupyter-{user}"
                requested = started - timedelta(seconds=20)
                rows.append(
                    (*head, "USD", requested, started, now, None, None, None, None, ref, "bench")
                )
    return rows


def budgets_for(teams: Sequence[TeamPlan]) -> dict[str, int]:
    """Monthly budgets that leave the biggest team at half its budget, put every fourth team
    at 85% (admitted with a warning) and every fourth over budget (refused)."""
    budgets = {}
    for rank, team in enumerate(teams):
        used = team.month_gpu_seconds / 3600
        share = (0.5, 0.85, 0.5, 1.1)[rank % 4]
        budgets[team.key] = max(1, math.ceil(used / share))
    return budgets


# --- filling a database ------------------------------------------------------------------------


@dataclass
class Database:
    """A scratch ledger database, filled; `url` for SQLAlchemy, `fill` bulk-loads rows."""

    backend: str
    url: str
    fill: Callable[[Iterator[list[Row]]], None]


def sqlite_time(value: datetime | None) -> str | None:
    """A time as the ledger's UTCDateTime stores it on SQLite (naive UTC, microseconds)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def fill_sqlite(path: str, chunks: Iterator[list[Row]]) -> None:
    """Bulk insert with executemany in one transaction, through the indexes `upgrade` built."""
    placeholders = ", ".join("?" for _ in COLUMNS)
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    sql = f"INSERT INTO usage_sessions ({names}) VALUES ({placeholders})"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for batch in chunks:
            converted = []
            for row in batch:
                values = list(row)
                for i in TIME_COLUMNS:
                    values[i] = sqlite_time(values[i])
                converted.append(values)
            connection.executemany(sql, converted)
        connection.execute("COMMIT")
    finally:
        connection.close()


def fill_postgresql(conninfo: str, chunks: Iterator[list[Row]]) -> None:
    """Bulk load with COPY, then VACUUM ANALYZE as autovacuum would do soon after."""
    import psycopg

    names = ", ".join(f'"{c}"' for c in COLUMNS)
    copy_sql = f"COPY usage_sessions ({names}) FROM STDIN"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        with (
            connection.transaction(),
            connection.cursor() as cursor,
            cursor.copy(copy_sql) as copy,
        ):
            for batch in chunks:
                for row in batch:
                    copy.write_row(row)
        connection.execute("VACUUM ANALYZE usage_sessions")


# --- measuring ---------------------------------------------------------------------------------


class StepClock:
    """The ledger's clock: starts at `now` and moves one second per decision."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> None:
        self.now += timedelta(seconds=1)


def requests(teams: Sequence[TeamPlan], count: int, *, seed: int = 2) -> list[Request]:
    """Spawn requests for GPU profiles, teams weighted as in the history; a third of them from
    users who already hold a GPU (so some hit the per-user cap)."""
    rng = random.Random(seed)
    eligible = [t for t in teams if t.profiles]
    weights = [t.weight for t in eligible]
    made = []
    for _ in range(count):
        (team,) = rng.choices(eligible, weights=weights)
        pool = team.open_users if team.open_users and rng.random() < 0.33 else team.users
        gpu = rng.choice(team.profiles)
        made.append(
            Request(
                rng.choice(pool),
                SERVER_NAME,
                team.key,
                gpu.slug,
                gpu.gpu_type,
                gpu.count,
                gpu.price_per_hour,
                "USD",
                "bench",
            )
        )
    return made


@dataclass(frozen=True)
class Stats:
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = sorted(s * 1000 for s in seconds)

        def pct(p: float) -> float:
            return ms[min(len(ms) - 1, math.ceil(p / 100 * len(ms)) - 1)]

        return cls(pct(50), pct(95), pct(99), ms[-1], statistics.fmean(ms))


def measure(
    ledger: Ledger, catalog: Catalog, batch: Sequence[Request], clock: StepClock, *, warmup: int
) -> tuple[list[float], Counter[str]]:
    """Time each `Ledger.admit` (its own transaction, commit included); close each admitted
    session again, untimed, so the open set stays as it was."""
    timings: list[float] = []
    outcomes: Counter[str] = Counter()
    for n, request in enumerate(batch):
        start = time.perf_counter()
        try:
            admission = ledger.admit(catalog, request)
        except AdmissionRefused as refused:
            elapsed = time.perf_counter() - start
            outcome = refused.decision.reason or "refused"
        else:
            elapsed = time.perf_counter() - start
            outcome = "admitted, warned" if admission.warning else "admitted"
            ledger.close(admission.session_id, EndReason.STOPPED)
        clock.tick()
        if n >= warmup:
            timings.append(elapsed)
            outcomes[outcome] += 1
    return timings, outcomes


def floor(engine: Engine, count: int) -> list[float]:
    """The cheapest transaction on the same engine: BEGIN (IMMEDIATE on SQLite), SELECT 1,
    COMMIT, through an ORM session as the ledger's are."""
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        with Session(engine) as db, db.begin():
            db.execute(text("SELECT 1")).one()
        timings.append(time.perf_counter() - start)
    return timings


# --- running the cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    backend: str
    rows: int
    variant: str
    fill_seconds: float
    admit: Stats
    floor: Stats
    outcomes: Counter[str]
    load: tuple[float, float, float]


@contextmanager
def scratch_database(backend: str, rows: int, server: Any, workdir: Path) -> Iterator[Database]:
    if backend == "sqlite":
        path = workdir / f"ledger-{rows}.sqlite"
        try:
            yield Database(backend, f"sqlite:///{path}", lambda c: fill_sqlite(str(path), c))
        finally:
            path.unlink(missing_ok=True)
        return
    name = f"bench_admission_{rows}"
    url, conninfo = server.create_database(name), server.conninfo(name)
    try:
        yield Database(backend, url, lambda c: fill_postgresql(conninfo, c))
    finally:
        server.drop_database(name)


def run_case(
    backend: str,
    rows: int,
    decisions: int,
    server: Any,
    workdir: Path,
    *,
    teams: int = 12,
    warmup: int = 50,
    explain: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> list[Result]:
    """Fill a scratch ledger with `rows` rows and time `decisions` admissions on it."""
    plans = plan_teams(teams)
    bench_catalog(plans)
    results = []
    with scratch_database(backend, rows, server, workdir) as database:
        # Fill at the previous schema, then migrate: the monthly totals of the history are built
        # by migration 0003's backfill, as on a real hub that upgrades.
        upgrade(database.url, "0002")
        start = time.perf_counter()
        database.fill(history(rows, plans, NOW))
        fill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        upgrade(database.url)
        log(
            f"{backend} {rows:,} rows: filled in {fill_seconds:.1f} s, "
            f"migrated to head in {time.perf_counter() - start:.1f} s"
        )
        catalog = bench_catalog(plans, budgets_for(plans))
        batch = requests(plans, decisions + warmup)
        clock = StepClock(NOW)
        ledger = Ledger.open(database.url, clock=clock)
        try:
            load = os.getloadavg()
            floor_stats = Stats.of(floor(ledger.engine, decisions))
            timings, outcomes = measure(ledger, catalog, batch, clock, warmup=warmup)
            result = Result(
                backend,
                rows,
                "shipped",
                fill_seconds,
                Stats.of(timings),
                floor_stats,
                outcomes,
                load,
            )
            log(f"  admission: {format_stats(result.admit)}")
            results.append(result)
            if explain:
                log(explain_admission(ledger, catalog, plans[0]))
        finally:
            ledger.engine.dispose()
    return results


def explain_admission(ledger: Ledger, catalog: Catalog, team: TeamPlan) -> str:
    """The plan and DB-API time (execute + fetchall, no ORM) of each SELECT one admission of the
    biggest team runs, captured from the engine as it runs them."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    gpu = team.profiles[0]
    probe = Request(
        team.users[-1],
        SERVER_NAME,
        team.key,
        gpu.slug,
        gpu.gpu_type,
        gpu.count,
        gpu.price_per_hour,
        "USD",
        "bench",
    )
    event.listen(ledger.engine, "before_cursor_execute", capture)
    try:
        try:
            admission = ledger.admit(catalog, probe)
            ledger.close(admission.session_id, EndReason.STOPPED)
        except AdmissionRefused:
            pass
    finally:
        event.remove(ledger.engine, "before_cursor_execute", capture)
    postgres = ledger.engine.dialect.name == "postgresql"
    lines = [f"  queries of one admission for team {team.key!r}:"]
    raw = ledger.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in captured:
            one_line = " ".join(statement.split())
            start = time.perf_counter()
            cursor.execute(statement, parameters)
            fetched = len(cursor.fetchall())
            elapsed = (time.perf_counter() - start) * 1000
            lines.append(f"    {elapsed:7.2f} ms {fetched:6d} rows  {one_line}")
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
            cursor.execute(prefix + statement, parameters)
            for plan in cursor.fetchall():
                lines.append(f"        {plan[0] if postgres else plan[-1]}")
        raw.rollback()
    finally:
        raw.close()
    return "\n".join(lines)


# --- reporting ---------------------------------------------------------------------------------


def format_stats(stats: Stats) -> str:
    return (
        f"p50 {stats.p50:.2f} ms, p95 {stats.p95:.2f}, p99 {stats.p99:.2f}, "
        f"max {stats.max:.2f}, mean {stats.mean:.2f}"
    )


def markdown_table(results: Sequence[Result]) -> str:
    head = (
        "| backend | rows | variant | fill (s) | p50 (ms) | p95 | p99 | max | mean "
        "| floor `SELECT 1` p50 / p99 (ms) | outcomes | load 1/5/15 min |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in results:
        a, f = r.admit, r.floor
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
        marker = "" if a.p99 < TARGET_P99_MS else " ✗"
        lines.append(
            f"| {r.backend} | {r.rows:,} | {r.variant} | {r.fill_seconds:.1f} "
            f"| {a.p50:.2f} | {a.p95:.2f} | {a.p99:.2f}{marker} | {a.max:.2f} | {a.mean:.2f} "
            f"| {f.p50:.3f} / {f.p99:.3f} | {outcomes} "
            f"| {r.load[0]:.2f} / {r.load[1]:.2f} / {r.load[2]:.2f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} x {cpu}, {memory:.0f} GiB; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.admission", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--decisions", type=int, default=1000, help="timed decisions per case")
    parser.add_argument("--teams", type=int, default=12, help="teams in the history (>= 3)")
    parser.add_argument(
        "--explain", action="store_true", help="print each admission query's plan and time"
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"machine: {machine()}; load average {os.getloadavg()}")
    results: list[Result] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="gpuhub-bench-") as tmp:
        server = None
        if "postgresql" in args.backends:
            server = postgres_server(stack, log)
        for backend in args.backends:
            if backend == "postgresql" and server is None:
                continue
            for rows in args.rows:
                results += run_case(
                    backend,
                    rows,
                    args.decisions,
                    server,
                    Path(tmp),
                    teams=args.teams,
                    explain=args.explain,
                    log=log,
                )
    print(f"Admission decisions, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"Target: p99 under {TARGET_P99_MS} ms (✗ marks a miss).\n")
    print(markdown_table(results))
    return 0


def postgres_server(stack: ExitStack, log: Callable[[str], None]) -> Any:
    """A throwaway PostgreSQL server (tests/postgres.py), or None with the reason logged."""
    import pytest

    from tests.postgres import start_server

    try:
        server = stack.enter_context(contextmanager(start_server)())
    except pytest.skip.Exception as skipped:
        log(f"PostgreSQL skipped: {skipped.msg}")
        return None
    import psycopg

    admin = f"host={server.host} port={server.port} user={server.user} dbname=postgres"
    with psycopg.connect(admin) as connection:
        version = connection.execute("SHOW server_version").fetchone()
    log(f"PostgreSQL {version[0] if version else '?'} at {server.host}:{server.port} (fsync=off)")
    return server


if __name__ == "__main__":
    # Stopped with SIGTERM, it still stops its PostgreSQL server and removes its scratch files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
