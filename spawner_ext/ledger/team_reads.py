"""What a team holds and has used, read inside a ledger transaction: its open GPU spans and its
GPU-hours this month as the budget counts them. Shared by admission and the wait-list's line."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import TeamMonthUsage, UsageSession
from .rules import Span, gpu_seconds_between, month_key, month_start


def open_spans(db: Session, team: str) -> list[Span]:
    """The team's admitted, not yet ended GPU sessions (started or not), of every install."""
    rows = db.execute(
        select(
            UsageSession.user,
            UsageSession.gpu_type,
            UsageSession.gpu_count,
            UsageSession.started_at,
            UsageSession.ended_at,
            UsageSession.borrowed,
        ).where(
            UsageSession.team == team,
            UsageSession.ended_at.is_(None),
            UsageSession.gpu_count > 0,
        )
    )
    return [Span(*row) for row in rows]


def hours_this_month(
    db: Session, team: str, now: datetime, spans: list[Span] | None = None
) -> Decimal:
    """Closed sessions' GPU-seconds this month (one row of the monthly totals) plus the team's
    open sessions up to now, in GPU-hours."""
    closed = db.scalar(
        select(TeamMonthUsage.gpu_seconds).where(
            TeamMonthUsage.team == team, TeamMonthUsage.month == month_key(now)
        )
    )
    spans = open_spans(db, team) if spans is None else spans
    seconds = (closed or 0) + gpu_seconds_between(spans, month_start(now), now)
    return (Decimal(seconds) / 3600).quantize(Decimal("0.001"))
