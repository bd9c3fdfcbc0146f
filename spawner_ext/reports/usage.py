"""Usage rows from the ledger: one SQL aggregation (on SQLite and PostgreSQL), so a month of a
team's million sessions is summed by the database, not by Python.

A session counts from `started_at` for the seconds it was billed (`gpu_seconds / gpu_count`
after it ended; until now while open). Its seconds are split exactly at the edges of the period
and of each day: a session from 23:00 to 01:00 puts one hour in each day. Cost is the session's
price per hour (of the whole server, as in force when it was admitted: later price changes never
rewrite history) times its hours in the row.

Utilisation is GPU-seconds busy over GPU-seconds measured: the notebook extension's reports
(ledger table session_gpu_use, per session and UTC day) say, for the time they cover, how many of
a session's GPUs were above the culling threshold. Held time no report covered (a server without
the extension, a MIG slice whose utilisation NVML does not tell, a gap in the reports) is neither
busy nor idle: it is not measured, and a row with none measured has no utilisation (None)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import (
    Engine,
    Float,
    Integer,
    Select,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from ..ledger.engine import READ_ONLY
from ..ledger.models import (
    UTILIZATION_COLUMNS,
    IdleGPUDay,
    ServerActivity,
    SessionGPUUse,
    UsageSession,
)
from .query import Dimension, UsageQuery

HOURS = Decimal("0.0001")
RATIO = Decimal("0.0001")
CENTS = Decimal("0.01")
EPOCH_JULIAN_DAY = 2440587.5
DAY_SECONDS = 86400
RUNNING = "running"
"""The end_reason of a session still open."""


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
    """GPU-hours the row's GPUs sat idle, by the notebook extension's reports; None when no
    session of the row was sampled (no extension, or from before it)."""
    session: str | None = None
    """The ledger session's key, when grouped by session."""
    end_reason: str | None = None
    """How the row's sessions ended (`running`: not yet), when grouped by end_reason."""
    measured_gpu_hours: Decimal = Decimal(0)
    """GPU-hours of the row whose utilisation the notebook extension's reports measured."""
    busy_gpu_hours: Decimal | None = None
    """Of those, GPU-hours busy (above the culling threshold); None when none was measured."""
    utilization: Decimal | None = None
    """Busy over measured GPU-seconds (0 to 1, 4 decimals); None when none was measured (0
    means measured and never busy, never "not known")."""

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
            busy_gpu_hours=None if self.busy_gpu_hours is None else float(self.busy_gpu_hours),
            measured_gpu_hours=float(self.measured_gpu_hours),
            utilization=None if self.utilization is None else float(self.utilization),
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
        "busy_gpu_hours",
        "measured_gpu_hours",
        "utilization",
    ]


def usage_rows(engine: Engine, query: UsageQuery, now: datetime) -> Iterator[UsageRow]:
    """The report's rows, streamed from the database in order (team, then the `by` columns)."""
    dialect = engine.dialect.name
    reads = engine.execution_options(**{READ_ONLY: True})
    streamed = {"stream_results": True, "yield_per": 1000}
    with reads.connect() as connection:
        if dialect == "postgresql":
            # The planner's row guess for generate_series makes it JIT-compile the query:
            # seconds of compiling for a tenth of a second of work.
            connection.exec_driver_sql("SET LOCAL jit = off")
        span = 0
        if Dimension.DAY in query.by:
            span = int(connection.execute(span_statement(dialect, query, now)).scalar() or 0)
        statement = usage_statement(dialect, query, now, span)
        for found in connection.execute(statement, execution_options=streamed):
            yield _row(found._mapping, query)


def billed_sessions(dialect: str, query: UsageQuery, now: datetime) -> Any:
    """Each session of the report, with the part of its billed time inside the period, in epoch
    seconds (`low`, `high`) and whole days from the period's start (`first_day`, `last_day`)."""
    period = query.period
    s = _overlapping(query)
    start = _epoch(dialect, s.started_at)
    billed_end = case(
        (s.ended_at.is_(None), literal(now.astimezone(UTC).timestamp())),
        (
            and_(s.gpu_count > 0, s.gpu_seconds.is_not(None)),
            start + cast(s.gpu_seconds, Float) / s.gpu_count,
        ),
        else_=_epoch(dialect, s.ended_at),
    )
    origin = period.start.timestamp()
    low = _greatest(dialect, start, literal(origin, Float))
    high = _least(dialect, billed_end, literal(period.end.timestamp(), Float))
    return (
        select(
            s.id,
            s.uid,
            s.team,
            s.currency,
            s.user,
            s.profile,
            s.gpu_type,
            s.gpu_count,
            s.end_reason,
            cast(s.price_per_hour, Float).label("price"),
            s.price_per_hour.label("price_per_hour"),
            low.label("low"),
            high.label("high"),
            _floor(dialect, (low - origin) / DAY_SECONDS).label("first_day"),
            _floor(dialect, (high - origin) / DAY_SECONDS).label("last_day"),
        )
        .where(high > low)
        .subquery("billed")
    )


def _overlapping(query: UsageQuery) -> Any:
    """The sessions that may overlap the period: those that ended after it began, and the open
    ones, as two index range reads on (team, ended_at) rather than a scan of all the team's
    history (a single OR would read every session started before the period's end)."""
    u = UsageSession
    period = query.period
    common: list[ColumnElement[bool]] = []
    if query.teams is not None:
        common.append(u.team.in_(query.teams))
    if query.user is not None:
        common.append(u.user == query.user)
    columns = (
        u.id,
        u.uid,
        u.team,
        u.currency,
        u.user,
        u.profile,
        u.gpu_type,
        u.gpu_count,
        u.price_per_hour,
        u.started_at,
        u.ended_at,
        u.gpu_seconds,
        func.coalesce(u.end_reason, literal(RUNNING)).label("end_reason"),
    )
    # No condition on started_at here: SQLite's planner would then read (team, started_at),
    # the team's whole history. Sessions that start after the period (or never started) have
    # no billed time inside it and are dropped by `high > low`.
    # A spawn that failed before it started was never billed. (Its NULL start must not reach
    # the arithmetic: PostgreSQL's GREATEST and LEAST skip NULLs, which would bill it for the
    # whole period.)
    ended = select(*columns).where(*common, u.ended_at > period.start, u.started_at.is_not(None))
    running = select(*columns).where(*common, u.ended_at.is_(None), u.started_at < period.end)
    return union_all(ended, running).subquery("sessions").c


def span_statement(dialect: str, query: UsageQuery, now: datetime) -> Select[Any]:
    """How many day boundaries the longest session of the report crosses."""
    billed = billed_sessions(dialect, query, now)
    return select(func.max(billed.c.last_day - billed.c.first_day))


def usage_statement(dialect: str, query: UsageQuery, now: datetime, span: int = 0) -> Select[Any]:
    """The aggregation. Grouped by day, each session is joined with the day offsets it covers
    (PostgreSQL: generate_series per session; SQLite: the offsets 0..`span`, kept when
    covered), so the work grows with the sessions and their length, not with the period."""
    billed = billed_sessions(dialect, query, now)
    groups: list[Any] = [billed.c.team.label("team"), billed.c.currency.label("currency")]
    seconds: Any = billed.c.high - billed.c.low
    source: Any = billed
    condition = None
    by_day = Dimension.DAY in query.by
    day: Any = None
    if by_day:
        if dialect == "postgresql":  # each session's own days, and nothing else
            offsets = (
                func.generate_series(0, billed.c.last_day - billed.c.first_day)
                .table_valued("k")
                .render_derived()
                .lateral("offsets")
            )
            joined = true()
        else:
            offsets = _offsets(span).subquery("offsets")
            joined = offsets.c.k <= billed.c.last_day - billed.c.first_day
        day = (billed.c.first_day + offsets.c.k).label("day")
        origin = query.period.start.timestamp()
        day_low = literal(origin, Float) + day * DAY_SECONDS
        seconds = _least(dialect, billed.c.high, day_low + DAY_SECONDS) - _greatest(
            dialect, billed.c.low, day_low
        )
        source = billed.join(offsets, joined)
        condition = seconds > 0
        groups.append(day)
    idle_seconds, source = _with_idle(dialect, query, billed, source, day if by_day else None)
    (busy, measured), source = _with_use(dialect, query, billed, source, day if by_day else None)
    for dimension in (Dimension.USER, Dimension.PROFILE, Dimension.GPU_TYPE, Dimension.END_REASON):
        if dimension in query.by:
            groups.append(billed.c[dimension.value].label(dimension.value))
    if Dimension.SESSION in query.by:
        # The session's key (ids repeat after a restore), in the order sessions were opened.
        groups.append(billed.c.uid.label("session"))
    order = [g.element for g in (groups[0], *groups[2:], groups[1])]
    if Dimension.SESSION in query.by:
        order.insert(-2, func.min(billed.c.id))
    statement = select(
        *groups,
        func.sum(seconds * billed.c.gpu_count).label("gpu_seconds"),
        func.sum(seconds * billed.c.price).label("price_seconds"),
        func.count(func.distinct(billed.c.id)).label("sessions"),
        func.sum(idle_seconds).label("idle_seconds"),
        func.sum(busy).label("busy_gpu_seconds"),
        func.sum(measured).label("measured_gpu_seconds"),
    ).select_from(source)
    if condition is not None:
        statement = statement.where(condition)
    return statement.group_by(*(g.element for g in groups)).order_by(*order)


def _with_idle(dialect: str, query: UsageQuery, billed: Any, source: Any, day: Any) -> Any:
    """Each row's idle GPU-seconds (waste, recorded per session and UTC day by the activity
    reports) and the source joined with them: NULL for a session never sampled (no activity
    row: nothing is known), 0 for one sampled and never idle."""
    d = IdleGPUDay
    period = query.period
    keys: list[Any] = [d.session_id]
    if day is not None:
        keys.append(_day_offset(dialect, d.day, query).label("k"))
    idle = (
        select(*keys, func.sum(d.gpu_seconds).label("gpu_seconds"))
        .where(d.day >= period.since, d.day < period.until)
        .group_by(*keys)
        .subquery("idle")
    )
    sampled = select(ServerActivity.session_id).subquery("sampled")
    joined = idle.c.session_id == billed.c.id
    if day is not None:
        joined = and_(joined, idle.c.k == day.element)
    source = source.outerjoin(sampled, sampled.c.session_id == billed.c.id).outerjoin(idle, joined)
    value = case((sampled.c.session_id.is_(None), None), else_=func.coalesce(idle.c.gpu_seconds, 0))
    return value, source


def _with_use(dialect: str, query: UsageQuery, billed: Any, source: Any, day: Any) -> Any:
    """Each row's busy and measured GPU-seconds (the session's GPU use on the period's days, per
    day when grouped by day), and the source joined with them: NULL for a session without GPU
    use (never reported: nothing is known)."""
    u = SessionGPUUse
    period = query.period
    keys: list[Any] = [u.session_id]
    if day is not None:
        keys.append(_day_offset(dialect, u.day, query).label("k"))
    measured_seconds = sum((u.__table__.c[name] for name in UTILIZATION_COLUMNS), literal(0))
    use = (
        select(
            *keys,
            func.sum(u.busy_gpu_seconds).label("busy_gpu_seconds"),
            func.sum(measured_seconds).label("measured_seconds"),
        )
        .where(u.day >= period.since, u.day < period.until)
        .group_by(*keys)
        .subquery("use")
    )
    joined = use.c.session_id == billed.c.id
    if day is not None:
        joined = and_(joined, use.c.k == day.element)
    measured = use.c.measured_seconds * billed.c.gpu_count
    return (use.c.busy_gpu_seconds, measured), source.outerjoin(use, joined)


def _day_offset(dialect: str, column: Any, query: UsageQuery) -> Any:
    """Days from the period's first day to a Date column's day."""
    since = query.period.since
    if dialect == "sqlite":
        return cast(func.julianday(column) - func.julianday(since.isoformat()), Integer)
    return column - literal(since)


def _offsets(span: int) -> Any:
    selects = [select(literal(k, Integer).label("k")) for k in range(span + 1)]
    return selects[0] if len(selects) == 1 else union_all(*selects)


def _floor(dialect: str, value: Any) -> Any:
    """Whole days of a non-negative number (SQLite's CAST truncates; PostgreSQL's rounds)."""
    if dialect == "sqlite":
        return cast(value, Integer)
    return cast(func.floor(value), Integer)


def _epoch(dialect: str, column: Any) -> Any:
    if dialect == "sqlite":
        return (func.julianday(column) - EPOCH_JULIAN_DAY) * 86400.0
    return cast(extract("epoch", column), Float)


def _greatest(dialect: str, a: Any, b: Any) -> Any:
    return func.max(a, b) if dialect == "sqlite" else func.greatest(a, b)


def _least(dialect: str, a: Any, b: Any) -> Any:
    return func.min(a, b) if dialect == "sqlite" else func.least(a, b)


def _row(found: Any, query: UsageQuery) -> UsageRow:
    by = query.by
    gpu_seconds = Decimal(repr(float(found["gpu_seconds"] or 0)))
    price_seconds = Decimal(repr(float(found["price_seconds"] or 0)))
    idle = found["idle_seconds"]
    idle_hours = None if idle is None else (Decimal(int(idle)) / 3600).quantize(HOURS)
    measured = int(found["measured_gpu_seconds"] or 0)
    busy = None if not measured else int(found["busy_gpu_seconds"] or 0)
    day = found["day"] if Dimension.DAY in by else None
    if day is not None:
        day = query.period.since + timedelta(days=int(day))
    return UsageRow(
        team=found["team"],
        currency=found["currency"],
        day=day,
        user=found["user"] if Dimension.USER in by else None,
        profile=found["profile"] if Dimension.PROFILE in by else None,
        gpu_type=found["gpu_type"] if Dimension.GPU_TYPE in by else None,
        session=str(found["session"]) if Dimension.SESSION in by else None,
        end_reason=found["end_reason"] if Dimension.END_REASON in by else None,
        gpu_hours=(gpu_seconds / 3600).quantize(HOURS, rounding=ROUND_HALF_UP),
        cost=(price_seconds / 3600).quantize(CENTS, rounding=ROUND_HALF_UP),
        sessions=int(found["sessions"]),
        idle_gpu_hours=idle_hours,
        measured_gpu_hours=(Decimal(measured) / 3600).quantize(HOURS),
        busy_gpu_hours=None if busy is None else (Decimal(busy) / 3600).quantize(HOURS),
        utilization=None if busy is None else (Decimal(busy) / measured).quantize(RATIO),
    )
