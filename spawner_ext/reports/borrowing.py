"""The borrowing report (pure): per team and the chosen groupings (user, day, GPU type), the
GPU-hours the team borrowed, lent and lost to reclaim in a period, from its borrowed sessions
and their loans (read by ledger/borrow_reads.py).

- **borrowed**: the team's borrowed sessions (charged to it), by the user who ran them.
- **lent**: other teams' borrowed sessions on the team's quota: each session's billed seconds
  times the GPUs of its loan from the team. Lent hours are the team's, not any person's: their
  rows have no user, so a lender's lead never reads the borrowing team's people by name (the
  borrowing team's own rows name them, for whoever may read that team).
- **reclaimed**: the team's borrowed sessions that ended `reclaimed`: their GPU-hours (by the
  days they were billed on), and `reclaims`, each counted once, in the row of its last billed
  second (the day it was stopped).

Seconds are billed as the usage rows bill them (reports/usage.py): from `started_at` for
`gpu_seconds / gpu_count` seconds once closed, until now while open, split exactly at the edges
of the period and of each UTC day."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..end_reason import EndReason
from ..ledger.borrow_reads import BorrowedSession
from .query import Dimension, ReportError, UsageQuery

DIMENSIONS = (Dimension.USER, Dimension.DAY, Dimension.GPU_TYPE)
"""What borrowing rows may be grouped by (besides the team, always)."""
HOURS = Decimal("0.0001")
MICROSECONDS = Decimal(1_000_000)
FIGURES = (
    "borrowed_gpu_hours",
    "borrowed_sessions",
    "lent_gpu_hours",
    "lent_sessions",
    "reclaimed_gpu_hours",
    "reclaims",
)


@dataclass(frozen=True)
class BorrowingRow:
    """One group. Fields of dimensions the report is not grouped by are None; so is `user` in
    a row of lent hours."""

    team: str | None
    day: date | None
    user: str | None
    gpu_type: str | None
    borrowed_gpu_hours: Decimal
    borrowed_sessions: int
    """The team's borrowed sessions billed in the row."""
    lent_gpu_hours: Decimal
    lent_sessions: int
    """Other teams' borrowed sessions billed in the row that ran on the team's quota."""
    reclaimed_gpu_hours: Decimal
    """GPU-hours (in the row) of the team's borrowed sessions that ended `reclaimed`."""
    reclaims: int
    """The team's borrowed sessions reclaimed in the row (by the day they were stopped)."""

    def as_json(self, by: tuple[Dimension, ...]) -> dict[str, Any]:
        row: dict[str, Any] = {"team": self.team}
        for dimension in by:
            value = getattr(self, dimension.value)
            row[dimension.value] = value.isoformat() if isinstance(value, date) else value
        for name in FIGURES:
            value = getattr(self, name)
            row[name] = float(value) if isinstance(value, Decimal) else value
        return row


def columns(by: tuple[Dimension, ...]) -> list[str]:
    """The columns of a borrowing report grouped `by`, in order (CSV header, table)."""
    return ["team", *(d.value for d in by), *FIGURES]


def check_grouping(query: UsageQuery) -> UsageQuery:
    """The query, or ReportError when it groups by what borrowing rows do not have."""
    for dimension in query.by:
        if dimension not in DIMENSIONS:
            choices = ", ".join(d.value for d in DIMENSIONS)
            raise ReportError(
                f"by={dimension.value!r} is not a grouping of the borrowing report; choose "
                f"from {choices}"
            )
    return query


@dataclass
class _Group:
    borrowed: Decimal = Decimal(0)
    borrowed_sessions: set[int] = field(default_factory=set)
    lent: Decimal = Decimal(0)
    lent_sessions: set[int] = field(default_factory=set)
    reclaimed: Decimal = Decimal(0)
    reclaims: int = 0


Key = tuple[str | None, date | None, str | None, str | None]
"""(team, day, user, GPU type) of a group."""


def borrowing_rows(
    sessions: Iterable[BorrowedSession], query: UsageQuery, now: datetime
) -> list[BorrowingRow]:
    """The report's rows, ordered by team, then the `by` columns (rows without a user last)."""
    check_grouping(query)
    by = query.by
    groups: dict[Key, _Group] = defaultdict(_Group)

    def key(team: str | None, day: date, user: str | None, gpu_type: str | None) -> Key:
        return (
            team,
            day if Dimension.DAY in by else None,
            user if Dimension.USER in by else None,
            gpu_type if Dimension.GPU_TYPE in by else None,
        )

    for s in sessions:
        pieces = billed_pieces(s, query, now)
        if not pieces:
            continue
        if _charged_to_readable(s, query):
            reclaimed = s.end_reason == EndReason.RECLAIMED.value
            last_day, _, ends_inside = pieces[-1]
            for day, seconds in ((d, x) for d, x, _ in pieces):
                group = groups[key(s.team, day, s.user, s.gpu_type)]
                group.borrowed += seconds * s.gpu_count
                group.borrowed_sessions.add(s.id)
                if reclaimed:
                    group.reclaimed += seconds * s.gpu_count
            if reclaimed and ends_inside:
                groups[key(s.team, last_day, s.user, s.gpu_type)].reclaims += 1
        if query.user is not None:
            continue  # lent hours are no person's
        for lender, gpus in s.loans:
            if query.teams is not None and lender not in query.teams:
                continue
            for day, seconds, _ in pieces:
                group = groups[key(lender, day, None, s.gpu_type)]
                group.lent += seconds * gpus
                group.lent_sessions.add(s.id)
    return [_row(k, g) for k, g in sorted(groups.items(), key=lambda item: _order(item[0], by))]


def _charged_to_readable(s: BorrowedSession, query: UsageQuery) -> bool:
    return (query.teams is None or s.team in query.teams) and (
        query.user is None or s.user == query.user
    )


def billed_end(s: BorrowedSession, now: datetime) -> datetime:
    """The end of a session's billed time (the usage rows' rule)."""
    if s.ended_at is None:
        return now
    if s.gpu_count > 0 and s.gpu_seconds is not None:
        return s.started_at + timedelta(seconds=s.gpu_seconds / s.gpu_count)
    return s.ended_at


def billed_pieces(
    s: BorrowedSession, query: UsageQuery, now: datetime
) -> list[tuple[date, Decimal, bool]]:
    """The session's billed seconds inside the period, per UTC day: (day, seconds, whether the
    piece holds the session's last billed second), in order of days."""
    end = billed_end(s, now)
    low, high = max(s.started_at, query.period.start), min(end, query.period.end)
    pieces: list[tuple[date, Decimal, bool]] = []
    while low < high:
        day = low.date()
        midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), low.tzinfo)
        upper = min(high, midnight)
        micro = (upper - low) // timedelta(microseconds=1)
        pieces.append((day, Decimal(micro) / MICROSECONDS, upper == end))
        low = upper
    return pieces


def _order(key: Key, by: tuple[Dimension, ...]) -> tuple[Any, ...]:
    team, day, user, gpu_type = key
    values = {Dimension.DAY: day, Dimension.USER: user, Dimension.GPU_TYPE: gpu_type}
    return (
        (team is None, team or ""),
        *((values[d] is None, values[d] or "") for d in by),
    )


def _hours(gpu_seconds: Decimal) -> Decimal:
    return (gpu_seconds / 3600).quantize(HOURS, rounding=ROUND_HALF_UP)


def _row(key: Key, group: _Group) -> BorrowingRow:
    team, day, user, gpu_type = key
    return BorrowingRow(
        team=team,
        day=day,
        user=user,
        gpu_type=gpu_type,
        borrowed_gpu_hours=_hours(group.borrowed),
        borrowed_sessions=len(group.borrowed_sessions),
        lent_gpu_hours=_hours(group.lent),
        lent_sessions=len(group.lent_sessions),
        reclaimed_gpu_hours=_hours(group.reclaimed),
        reclaims=group.reclaims,
    )
