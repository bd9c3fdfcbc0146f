"""Team utilisation in the usage rows (SQLite and PostgreSQL): busy GPU-seconds over measured
GPU-seconds, from GPU use written as the ledger keeps it (one row per session and UTC day), against
ratios worked out by hand here. Never reported: not measured (None), never 0; measured and never
busy: 0.0; a MIG slice (no utilisation from NVML): not measured."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UTILIZATION_COLUMNS, SessionGPUUse
from spawner_ext.ledger.store import Ledger
from spawner_ext.reports.query import Dimension, Period, UsageQuery
from spawner_ext.reports.usage import usage_rows
from tests.reports.conftest import add_session

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
NOVEMBER = Period(date(2026, 11, 1), date(2026, 12, 1))
EDGE = Period(date(2026, 11, 30), date(2026, 12, 2))


def at(day: int, hour: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def use(
    session_id: int,
    day: date,
    *,
    busy_gpu_seconds: int,
    histogram: dict[int, int],
    observed: int | None = None,
    unknown: bool = False,
) -> SessionGPUUse:
    """A day of a session's GPU use: `histogram` maps a bucket (0..19) to its seconds."""
    seconds = dict.fromkeys(UTILIZATION_COLUMNS, 0)
    for bucket, value in histogram.items():
        seconds[UTILIZATION_COLUMNS[bucket]] = value
    return SessionGPUUse(
        session_id=session_id,
        day=day,
        reports=10,
        observed_seconds=sum(histogram.values()) if observed is None else observed,
        busy_seconds=busy_gpu_seconds,
        busy_gpu_seconds=busy_gpu_seconds,
        utilization_unknown=unknown,
        peak_memory_mib=1000,
        memory_total_mib=81559,
        peak_gpus_in_use=1,
        **seconds,
    )


@pytest.fixture
def measured(ledger: Ledger) -> Ledger:
    engine = ledger.engine
    # ada: 2 GPUs, 22:00 on 30 Nov to 02:00 on 1 Dec. 30 Nov: utilisation known for 5400 s
    # (10,800 GPU-s), 2700 GPU-s busy; 1 Dec: known for 7200 s (14,400 GPU-s), 7200 busy.
    ada = add_session(engine, "ada", at(30, 22), at(1, 2, month=12), gpus=2, price="8.20")
    # bob: 1 GPU for an hour, measured all of it (3600 GPU-s), never busy
    bob = add_session(engine, "bob", at(20, 10), at(20, 11))
    # lin: never reported (a server without the notebook extension)
    add_session(engine, "lin", at(21, 10), at(21, 12))
    # eve: a MIG slice; reports speak for an hour but NVML gives no utilisation for it
    eve = add_session(
        engine, "eve", at(22, 10), at(22, 11), profile="mig-slice", gpu_type="a100-1g10gb"
    )
    with Session(engine) as db, db.begin():
        db.add(use(ada, date(2026, 11, 30), busy_gpu_seconds=2700, histogram={0: 3600, 18: 1800}))
        db.add(use(ada, date(2026, 12, 1), busy_gpu_seconds=7200, histogram={19: 7200}))
        db.add(use(bob, date(2026, 11, 20), busy_gpu_seconds=0, histogram={0: 3600}))
        db.add(
            use(
                eve,
                date(2026, 11, 22),
                busy_gpu_seconds=0,
                histogram={},
                observed=3600,
                unknown=True,
            )
        )
    return ledger


def report(ledger: Ledger, period: Period, *by: Dimension) -> list[dict[str, object]]:
    query = UsageQuery(("vision",), period, by)
    return [row.as_json(by) for row in usage_rows(ledger.engine, query, NOW)]


def figures(row: dict[str, object]) -> tuple[object, ...]:
    return (row["busy_gpu_hours"], row["measured_gpu_hours"], row["utilization"])


def test_utilisation_per_user_is_busy_over_measured_and_none_where_nothing_was_measured(
    measured: Ledger,
) -> None:
    """broken once: measured GPU-seconds not multiplied by the session's GPUs (ada read 0.5)."""
    rows = {r["user"]: figures(r) for r in report(measured, NOVEMBER, Dimension.USER)}
    assert rows == {
        "ada": (0.75, 3.0, 0.25),  # November's day only: 2700 / 10,800
        "bob": (0.0, 1.0, 0.0),  # measured and idle: 0.0, not missing
        "lin": (None, 0.0, None),  # no report: not measured
        "eve": (None, 0.0, None),  # MIG: observed, but no utilisation to measure
    }


def test_utilisation_per_profile_adds_up_seconds_not_ratios(measured: Ledger) -> None:
    """ada's and bob's h100-single: (2700 + 0) / (10,800 + 3600), not the mean of 0.25 and 0."""
    rows = {r["profile"]: figures(r) for r in report(measured, NOVEMBER, Dimension.PROFILE)}
    assert rows["h100-single"] == (0.75, 4.0, 0.1875)
    assert rows["mig-slice"] == (None, 0.0, None)


def test_utilisation_per_day_takes_each_days_reports(measured: Ledger) -> None:
    """broken once: the use joined by session only, so each day read both days' seconds."""
    rows = [(r["day"], *figures(r)) for r in report(measured, EDGE, Dimension.DAY)]
    assert rows == [
        ("2026-11-30", 0.75, 3.0, 0.25),
        ("2026-12-01", 2.0, 4.0, 0.5),  # 7200 / 14,400
    ]
    team = report(measured, EDGE)
    assert [figures(r) for r in team] == [(2.75, 7.0, round(9900 / 25200, 4))]
