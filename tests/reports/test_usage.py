"""Usage reports summed by the database (SQLite and PostgreSQL) against hand-computed figures:
sessions across day, month and period edges, a price change mid-month, open sessions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from spawner_ext.ledger.store import Ledger
from spawner_ext.reports.query import Dimension, Period, UsageQuery
from spawner_ext.reports.usage import UsageRow, columns, usage_rows
from tests.reports.conftest import add_session

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
NOVEMBER = Period(date(2026, 11, 1), date(2026, 12, 1))
DECEMBER = Period(date(2026, 12, 1), date(2027, 1, 1))


def at(day: int, hour: int, month: int = 11, minute: int = 0, second: float = 0) -> datetime:
    whole = int(second)
    return datetime(2026, month, day, hour, minute, whole, int((second - whole) * 1e6), UTC)


@pytest.fixture
def history(ledger: Ledger) -> Ledger:
    engine = ledger.engine
    # ada: 2 H100 at 8.20 an hour, 23:00 on 30 Nov to 01:00 on 1 Dec (a day and month edge)
    add_session(engine, "ada", at(30, 23), at(1, 1, month=12), gpus=2, price="8.20")
    # bob: one H100, at 4.10 for two hours, then at 5.00 (the price changed) for one hour
    add_session(engine, "bob", at(10, 10), at(10, 12), price="4.10")
    add_session(engine, "bob", at(20, 10), at(20, 11), price="5.00")
    # lin: an A100 since midnight on 1 Dec, still running at NOW (6 hours)
    add_session(
        engine, "lin", at(1, 0, month=12), None, profile="a100", gpu_type="a100-40gb", price="2"
    )
    # a CPU server: counted as a session, no GPU-hours, no cost
    add_session(
        engine, "ada", at(12, 9), at(12, 17), profile="cpu-small", gpu_type=None, gpus=0, price="0"
    )
    # whole seconds are billed: 10.4 s counts 10 s
    add_session(engine, "bob", at(21, 10, second=0.5), at(21, 10, second=10.9), price="3600")
    # spawns that failed before they started: nothing billed, not counted
    add_session(engine, "bob", at(22, 10), at(22, 11), gpus=4, started=False)
    add_session(engine, "ada", at(23, 10), at(23, 11), profile="cpu-small", gpus=0, started=False)
    # another team's, and one before the period
    add_session(engine, "grace", at(15, 8), at(15, 9), team="nlp")
    add_session(engine, "ada", at(31, 22, month=10), at(31, 23, month=10))
    return ledger


def report(
    ledger: Ledger,
    period: Period,
    *by: Dimension,
    teams: tuple[str, ...] | None = ("vision",),
    user: str | None = None,
) -> list[dict[str, object]]:
    query = UsageQuery(teams, period, by, user)
    return [row.as_json(by) for row in usage_rows(ledger.engine, query, NOW)]


def test_by_user_splits_sessions_at_the_period_and_keeps_each_sessions_price(
    history: Ledger,
) -> None:
    assert report(history, NOVEMBER, Dimension.USER) == [
        # 1 h of 2 GPUs at 8.20 before midnight; a CPU session with nothing billed
        {
            "team": "vision",
            "user": "ada",
            "gpu_hours": 2.0,
            "cost": 8.2,
            "currency": "USD",
            "idle_gpu_hours": None,
            "sessions": 2,
            "busy_gpu_hours": None,
            "measured_gpu_hours": 0.0,
            "utilization": None,
        },
        # 2 h at 4.10 + 1 h at 5.00 + 10 s at 3600.00 an hour
        {
            "team": "vision",
            "user": "bob",
            "gpu_hours": 3.0028,
            "cost": 23.2,
            "currency": "USD",
            "idle_gpu_hours": None,
            "sessions": 3,
            "busy_gpu_hours": None,
            "measured_gpu_hours": 0.0,
            "utilization": None,
        },
    ]


def test_open_sessions_count_until_now_and_the_next_month_gets_the_rest(history: Ledger) -> None:
    rows = report(history, DECEMBER, Dimension.USER, Dimension.GPU_TYPE)
    assert [(r["user"], r["gpu_type"], r["gpu_hours"], r["cost"], r["sessions"]) for r in rows] == [
        ("ada", "h100-80gb", 2.0, 8.2, 1),
        ("lin", "a100-40gb", 6.0, 12.0, 1),
    ]


def test_by_day_puts_each_hour_in_its_own_day(history: Ledger) -> None:
    period = Period(date(2026, 11, 30), date(2026, 12, 2))
    rows = report(history, period, Dimension.DAY, Dimension.PROFILE)
    assert [(r["day"], r["profile"], r["gpu_hours"]) for r in rows] == [
        ("2026-11-30", "h100-single", 2.0),
        ("2026-12-01", "a100", 6.0),
        ("2026-12-01", "h100-single", 2.0),
    ]


def test_no_grouping_is_one_row_per_team_and_every_team_for_an_admin(history: Ledger) -> None:
    rows = report(history, NOVEMBER, teams=None)
    assert [(r["team"], r["gpu_hours"], r["sessions"]) for r in rows] == [
        ("nlp", 1.0, 1),
        ("vision", 5.0028, 5),
    ]


def test_a_users_own_report_has_only_their_sessions(history: Ledger) -> None:
    rows = report(history, NOVEMBER, Dimension.PROFILE, user="ada", teams=None)
    assert [(r["profile"], r["gpu_hours"]) for r in rows] == [
        ("cpu-small", 0.0),
        ("h100-single", 2.0),
    ]


def key_of(ledger: Ledger) -> Callable[[int], str]:
    """A session's key from its ledger id."""

    def key(session_id: int) -> str:
        row = ledger.session(session_id)
        assert row is not None
        return row.uid

    return key


def test_by_session_gives_each_sessions_own_part_of_the_period(ledger: Ledger) -> None:
    """The raw records of a chargeback: one row per session, cut at the period's edges."""
    engine = ledger.engine
    edge = add_session(engine, "ada", at(30, 23), at(1, 1, month=12), gpus=2, price="8.20")
    first = add_session(engine, "bob", at(10, 10), at(10, 12), price="4.10")
    second = add_session(engine, "bob", at(20, 10), at(20, 11), price="5.00")
    rows = report(ledger, NOVEMBER, Dimension.SESSION, Dimension.USER)
    key = key_of(ledger)
    assert [(r["session"], r["user"], r["gpu_hours"], r["cost"], r["sessions"]) for r in rows] == [
        (key(edge), "ada", 2.0, 8.2, 1),
        (key(first), "bob", 2.0, 8.2, 1),
        (key(second), "bob", 1.0, 5.0, 1),
    ], "each session by its key (not its id, which a restore hands out again), oldest first"
    assert "session" in columns((Dimension.SESSION,))


def test_by_end_reason_shows_what_culling_and_budgets_stopped(ledger: Ledger) -> None:
    engine = ledger.engine
    add_session(engine, "ada", at(10, 10), at(10, 12), reason="culled-gpu-idle")
    add_session(engine, "bob", at(11, 10), at(11, 11), reason="culled-gpu-idle")
    add_session(engine, "bob", at(12, 10), at(12, 13))  # stopped
    add_session(engine, "lin", at(1, 0, month=12), None)  # still running
    rows = report(ledger, DECEMBER, Dimension.END_REASON) + report(
        ledger, NOVEMBER, Dimension.END_REASON
    )
    assert [(r["end_reason"], r["gpu_hours"], r["sessions"]) for r in rows] == [
        ("running", 6.0, 1),
        ("culled-gpu-idle", 3.0, 2),
        ("stopped", 3.0, 1),
    ]
    assert "end_reason" in columns((Dimension.END_REASON,))


def test_days_sum_to_the_period(history: Ledger) -> None:
    """Splitting is exact: the days of a period add up to the period, to the GPU-second."""
    whole = report(history, NOVEMBER, Dimension.USER)
    days = report(history, NOVEMBER, Dimension.USER, Dimension.DAY)
    for row in whole:
        mine = [d for d in days if d["user"] == row["user"]]
        assert sum(Decimal(str(d["gpu_hours"])) for d in mine) == Decimal(str(row["gpu_hours"]))


def test_columns_follow_the_grouping() -> None:
    assert columns((Dimension.DAY, Dimension.USER)) == [
        "team",
        "day",
        "user",
        "gpu_hours",
        "cost",
        "currency",
        "idle_gpu_hours",
        "sessions",
        "busy_gpu_hours",
        "measured_gpu_hours",
        "utilization",
    ]


def test_a_row_without_culling_data_says_idle_is_unknown() -> None:
    row = UsageRow("vision", "USD", None, None, None, None, Decimal("1"), Decimal("2"), 1)
    assert row.as_json(())["idle_gpu_hours"] is None


def test_a_long_session_from_before_the_period_fills_each_day_it_covers(ledger: Ledger) -> None:
    """12:00 on 28 Nov to 06:00 on 2 Dec, asked for 29 Nov to 2 Dec: whole days in between, and
    nothing outside the period."""
    add_session(ledger.engine, "eve", at(28, 12), at(2, 6, month=12), team="nlp", gpus=2)
    period = Period(date(2026, 11, 29), date(2026, 12, 2))
    rows = report(ledger, period, Dimension.DAY, teams=("nlp",))
    assert [(r["day"], r["gpu_hours"]) for r in rows] == [
        ("2026-11-29", 48.0),
        ("2026-11-30", 48.0),
        ("2026-12-01", 48.0),
    ]
    assert [r["gpu_hours"] for r in report(ledger, period, teams=("nlp",))] == [144.0]


def test_idle_gpu_hours_are_the_recorded_waste_and_unknown_where_nothing_was_sampled(
    ledger: Ledger,
) -> None:
    from sqlalchemy.orm import Session

    from spawner_ext.ledger.models import IdleGPUDay, ServerActivity

    engine = ledger.engine
    sampled = add_session(engine, "ada", at(30, 22), at(1, 2, month=12), gpus=2)
    quiet = add_session(engine, "ada", at(20, 10), at(20, 11))  # sampled, never idle
    add_session(engine, "bob", at(20, 10), at(20, 11))  # never sampled (no extension)
    with Session(engine) as db, db.begin():
        for session in (sampled, quiet):
            db.add(
                ServerActivity(
                    session_id=session,
                    reported_at=at(20, 11),
                    gpu_activity="idle",
                    kernel_busy=False,
                    idle_gpu_seconds=0,
                    samples="[]",
                )
            )
        db.add(IdleGPUDay(session_id=sampled, day=date(2026, 11, 30), gpu_seconds=3600))
        db.add(IdleGPUDay(session_id=sampled, day=date(2026, 12, 1), gpu_seconds=7200))
    rows = report(ledger, NOVEMBER, Dimension.USER)
    assert [(r["user"], r["idle_gpu_hours"]) for r in rows] == [("ada", 1.0), ("bob", None)]
    days = report(ledger, Period(date(2026, 11, 30), date(2026, 12, 2)), Dimension.DAY)
    assert [(r["day"], r["idle_gpu_hours"]) for r in days] == [
        ("2026-11-30", 1.0),
        ("2026-12-01", 2.0),
    ]
    by_session = report(ledger, NOVEMBER, Dimension.SESSION)
    assert {r["session"]: r["idle_gpu_hours"] for r in by_session}[key_of(ledger)(quiet)] == 0.0
