"""Usage rows from the ledger: one SQL aggregation (on SQLite and PostgreSQL), so a month of a
team's million sessions is summed by the database, not by Python.

A session counts from `started_at` for the seconds it was billed (`gpu_seconds / gpu_count`
after it ended; until now while open). Its seconds are split exactly at the edges of the period
and of each day: a session from 23:00 to 01:00 puts one hour in each day. Cost is the session's
price per hour (of the whole server, as in force when it was admitted: later price changes never
rewrite history) times its hours in the row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import (
    Engine,
    Float,
    Select,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    or_,
    select,
    union_all,
)

from ..ledger.engine import READ_ONLY
from ..ledger.models import UsageSession
from .query import Dimension, UsageQuery

HOURS = Decimal("0.0001")
CENTS = Decimal("0.01")
EPOCH_JULIAN_DAY = 2440587.5


@dataclass(frozen=True)
class UsageRow:
    """One group of a report. Fields of dimensions the report is not grouped by are None."""

    team: str | None
    currency: str
    day: date | None
    user: str | None
    profile: str | None
    gpu_type: str | None
    gpu_hours: Decimal
    cost: Decimal
    sessions: int
    idle_gpu_hours: Decimal | None = None
    """Recorded by GPU-aware culling (planned); None until then."""

    def as_json(self, by: tuple[Dimension, ...]) -> dict[str, Any]:
        row: dict[str, Any] = {"team": self.team}
        for dimension in by:
            value = getattr(self, dimension.value)
            row[dimension.value] = value.isoformat() if isinstance(value, date) else value
        row.update(
            gpu_hours=float(self.gpu_hours),
            cost=float(self.cost),
            currency=self.currency,
            idle_gpu_hours=None if self.idle_gpu_hours is None else float(self.idle_gpu_hours),
            sessions=self.sessions,
        )
        return row


def columns(by: tuple[Dimension, ...]) -> list[str]:
    """The columns of a report grouped `by`, in order (CSV header, table)."""
    return [
        "team",
        *(d.value for d in by),
        "gpu_hours",
        "cost",
        "currency",
        "idle_gpu_hours",
        "sessions",
    ]


def usage_rows(engine: Engine, query: UsageQuery, now: datetime) -> Iterator[UsageRow]:
    """The report's rows, streamed from the database in order (team, then the `by` columns)."""
    statement = usage_statement(engine.dialect.name, query, now)
    reads = engine.execution_options(**{READ_ONLY: True}, stream_results=True, yield_per=1000)
    with reads.connect() as connection:
        for found in connection.execute(statement):
            yield _row(found._mapping, query.by)


def usage_statement(dialect: str, query: UsageQuery, now: datetime) -> Select[Any]:
    s = UsageSession
    period = query.period
    now_epoch = now.astimezone(UTC).timestamp()
    start = _epoch(dialect, s.started_at)
    billed_end = case(
        (s.ended_at.is_(None), literal(now_epoch)),
        (
            and_(s.gpu_count > 0, s.gpu_seconds.is_not(None)),
            start + cast(s.gpu_seconds, Float) / s.gpu_count,
        ),
        else_=_epoch(dialect, s.ended_at),
    )
    intervals = _intervals(query).subquery("intervals")
    low = _greatest(dialect, start, intervals.c.low)
    high = _least(dialect, billed_end, intervals.c.high)
    seconds = high - low
    filters = [
        s.started_at.is_not(None),
        s.started_at < period.end,
        or_(s.ended_at.is_(None), s.ended_at > period.start),
    ]
    if query.teams is not None:
        filters.append(s.team.in_(query.teams))
    if query.user is not None:
        filters.append(s.user == query.user)
    groups: list[Any] = [s.team.label("team"), s.currency.label("currency")]
    if Dimension.DAY in query.by:
        groups.append(intervals.c.day.label("day"))
    for dimension, column in (
        (Dimension.USER, s.user),
        (Dimension.PROFILE, s.profile),
        (Dimension.GPU_TYPE, s.gpu_type),
    ):
        if dimension in query.by:
            groups.append(column.label(dimension.value))
    order = [groups[0], *groups[2:], groups[1]]
    return (
        select(
            *groups,
            func.sum(seconds * s.gpu_count).label("gpu_seconds"),
            func.sum(seconds * cast(s.price_per_hour, Float)).label("price_seconds"),
            func.count(func.distinct(s.id)).label("sessions"),
        )
        .select_from(s)
        .join(intervals, and_(start < intervals.c.high, billed_end > intervals.c.low))
        .where(*filters)
        .group_by(*(g.element for g in groups))
        .order_by(*(g.element for g in order))
    )


def _intervals(query: UsageQuery) -> Any:
    """The period, or each of its days: (day, low, high) in epoch seconds."""
    period = query.period
    if Dimension.DAY in query.by:
        spans = [(d, _day_start(d)) for d in period.days()]
        bounds = [(d, low, low + 86400) for d, low in spans]
    else:
        bounds = [(period.since, period.start.timestamp(), period.end.timestamp())]
    selects = [
        select(
            literal(d.isoformat()).label("day"),
            literal(low, Float).label("low"),
            literal(high, Float).label("high"),
        )
        for d, low, high in bounds
    ]
    return selects[0] if len(selects) == 1 else union_all(*selects)


def _day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _epoch(dialect: str, column: Any) -> Any:
    if dialect == "sqlite":
        return (func.julianday(column) - EPOCH_JULIAN_DAY) * 86400.0
    return cast(extract("epoch", column), Float)


def _greatest(dialect: str, a: Any, b: Any) -> Any:
    return func.max(a, b) if dialect == "sqlite" else func.greatest(a, b)


def _least(dialect: str, a: Any, b: Any) -> Any:
    return func.min(a, b) if dialect == "sqlite" else func.least(a, b)


def _row(found: Any, by: tuple[Dimension, ...]) -> UsageRow:
    gpu_seconds = Decimal(repr(float(found["gpu_seconds"] or 0)))
    price_seconds = Decimal(repr(float(found["price_seconds"] or 0)))
    day = found["day"] if Dimension.DAY in by else None
    return UsageRow(
        team=found["team"],
        currency=found["currency"],
        day=date.fromisoformat(day) if isinstance(day, str) else day,
        user=found["user"] if Dimension.USER in by else None,
        profile=found["profile"] if Dimension.PROFILE in by else None,
        gpu_type=found["gpu_type"] if Dimension.GPU_TYPE in by else None,
        gpu_hours=(gpu_seconds / 3600).quantize(HOURS, rounding=ROUND_HALF_UP),
        cost=(price_seconds / 3600).quantize(CENTS, rounding=ROUND_HALF_UP),
        sessions=int(found["sessions"]),
    )
