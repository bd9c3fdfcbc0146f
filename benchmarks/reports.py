"""Usage reports over a big ledger: a month's team report on SQLite and PostgreSQL, and the
memory of a streamed CSV export.

Fills a scratch ledger with the admission benchmark's year of history (benchmarks/admission.py),
then times `usage_rows` (the SQL aggregation the API, `gpuhub report` and the metrics use) for
the biggest team's month, grouped by user, and by day x user x profile. The floor beside it is
the cheapest query that reads the same rows: a plain indexed SUM over that team's month.
Then it streams a CSV export of every team's year, one row per session (by session x user x
profile x GPU type: the million rows), and prints the process's resident memory after 10,000
rows and at the end (and the peak).
Target: the month's report under 1 s at 1M rows; export memory flat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from spawner_ext.ledger.engine import make_engine, upgrade
from spawner_ext.ledger.models import UsageSession
from spawner_ext.reports.export import csv_lines
from spawner_ext.reports.query import Dimension, Period, UsageQuery
from spawner_ext.reports.usage import usage_rows

from .admission import NOW, history, machine, plan_teams, postgres_server, scratch_database

TARGET_SECONDS = 1.0
MONTH = Period(date(2026, 11, 1), date(2026, 12, 1))
YEAR = Period(date(2025, 11, 28), date(2026, 11, 29))


@dataclass
class Timing:
    backend: str
    rows: int
    report: str
    median: float
    worst: float
    floor: float
    result_rows: int


@dataclass
class Export:
    backend: str
    rows: int
    csv_rows: int
    rss_10k_mib: float
    rss_end_mib: float
    peak_mib: float
    seconds: float


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(run: Callable[[], int], repeat: int) -> tuple[list[float], int]:
    times, count = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - start)
    return times, count


def floor_query(engine: Engine, team: str) -> int:
    s = UsageSession
    query = select(func.sum(s.gpu_seconds)).where(
        s.team == team, s.started_at >= MONTH.start, s.started_at < MONTH.end
    )
    with engine.connect() as connection:
        connection.execute(query).scalar()
    return 1


def analyze(engine: Engine) -> None:
    """Planner statistics for the freshly filled table, as autovacuum (PostgreSQL) or a
    periodic ANALYZE (SQLite) keeps them on a live ledger."""
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()


def run_case(
    backend: str, rows: int, server: Any, workdir: Path, *, repeat: int, log: Callable[[str], None]
) -> tuple[list[Timing], Export]:
    plans = plan_teams(12)
    team = plans[0].key
    timings = []
    with scratch_database(backend, rows, server, workdir) as database:
        upgrade(database.url, "0002")
        start = time.perf_counter()
        database.fill(history(rows, plans, NOW))
        upgrade(database.url)
        log(f"{backend} {rows:,} rows: filled and migrated in {time.perf_counter() - start:.1f} s")
        engine = make_engine(database.url)
        analyze(engine)
        try:
            floor_times, _ = timed(lambda: floor_query(engine, team), repeat)
            for name, by in (
                ("month by user", (Dimension.USER,)),
                (
                    "month by day x user x profile",
                    (Dimension.DAY, Dimension.USER, Dimension.PROFILE),
                ),
            ):
                query = UsageQuery((team,), MONTH, by)
                times, count = timed(lambda q=query: len(list(usage_rows(engine, q, NOW))), repeat)
                timings.append(
                    Timing(
                        backend,
                        rows,
                        name,
                        statistics.median(times),
                        max(times),
                        statistics.median(floor_times),
                        count,
                    )
                )
                log(f"  {name}: median {statistics.median(times):.3f} s, {count} rows")
            export = stream_export(engine, backend, rows)
            log(f"  export: {export}")
        finally:
            engine.dispose()
    return timings, export


def stream_export(engine: Engine, backend: str, rows: int) -> Export:
    # One row per session: every billing row of the year, as a chargeback export asks.
    by = (Dimension.SESSION, Dimension.USER, Dimension.PROFILE, Dimension.GPU_TYPE)
    query = UsageQuery(None, YEAR, by)
    at_10k = 0.0
    count = 0
    start = time.perf_counter()
    with open(os.devnull, "w") as sink:
        for line in csv_lines(usage_rows(engine, query, NOW), by):
            sink.write(line)
            count += 1
            if count == 10_001:
                at_10k = rss_mib()
    return Export(
        backend, rows, count - 1, at_10k, rss_mib(), peak_mib(), time.perf_counter() - start
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reports", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each report")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"machine: {machine()}; load average {os.getloadavg()}")
    timings: list[Timing] = []
    exports: list[Export] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="gpuhub-bench-") as tmp:
        server = postgres_server(stack, log) if "postgresql" in args.backends else None
        for backend in args.backends:
            if backend == "postgresql" and server is None:
                continue
            for rows in args.rows:
                found, export = run_case(
                    backend, rows, server, Path(tmp), repeat=args.repeat, log=log
                )
                timings += found
                exports.append(export)
    load = os.getloadavg()[0]
    print(f"Usage reports, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}, load {load:.2f}")
    print(f"Target: a month's team report under {TARGET_SECONDS} s (✗ marks a miss).\n")
    print(
        table(
            [
                "backend",
                "ledger rows",
                "report",
                "median s",
                "worst s",
                "floor s (indexed SUM)",
                "rows out",
            ],
            [
                [
                    t.backend,
                    f"{t.rows:,}",
                    t.report,
                    f"{t.median:.3f}" + ("" if t.median < TARGET_SECONDS else " ✗"),
                    f"{t.worst:.3f}",
                    f"{t.floor:.4f}",
                    f"{t.result_rows:,}",
                ]
                for t in timings
            ],
        )
    )
    print()
    print(
        table(
            [
                "backend",
                "ledger rows",
                "CSV rows streamed",
                "RSS after 10k rows (MiB)",
                "RSS at the end (MiB)",
                "peak RSS (MiB)",
                "seconds",
            ],
            [
                [
                    e.backend,
                    f"{e.rows:,}",
                    f"{e.csv_rows:,}",
                    f"{e.rss_10k_mib:.1f}",
                    f"{e.rss_end_mib:.1f}",
                    f"{e.peak_mib:.1f}",
                    f"{e.seconds:.1f}",
                ]
                for e in exports
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
