"""Billing rules: pure functions of (sessions, quotas, now). Admission (may this server start?)
is policy/admission.py, shared with the form's preview.

Billing: a session is billed from `started_at` (its server is running with its GPUs bound) to
`ended_at` (its server is gone), in whole seconds. GPU-seconds = seconds x GPU count. Cost =
seconds / 3600 x the server's price per hour in force when it was admitted. Budgets count
GPU-hours per calendar month in UTC; a session spanning a month boundary counts in both months.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from ..catalog import Quota
from ..policy.admission import Holding, next_month_start, summed_holdings

CENT_MILLIONTHS = Decimal("0.000001")


def month_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def billed_seconds(started: datetime | None, ended: datetime) -> int:
    """Whole seconds from start to end; 0 for a session that never started."""
    if started is None:
        return 0
    return max(int((ended - started).total_seconds()), 0)


def session_cost(price_per_hour: Decimal, seconds: int) -> Decimal:
    return (price_per_hour * seconds / 3600).quantize(CENT_MILLIONTHS, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Span:
    """The billed part of a session: what budgets and reports sum."""

    user: str
    gpu_type: str | None
    gpu_count: int
    started: datetime | None
    ended: datetime | None
    borrowed: bool = False
    """Run on other teams' quota (usage_sessions.borrowed)."""


def holdings_of(spans: Iterable[Span]) -> tuple[Holding, ...]:
    """What a team's open spans hold, per user and GPU type: the holdings admission counts."""
    return summed_holdings((s.user, s.gpu_type, s.borrowed, s.gpu_count) for s in spans)


def gpu_seconds_between(spans: Iterable[Span], start: datetime, end: datetime) -> int:
    """GPU-seconds of `spans` that fall within [start, end); open spans run until `end`."""
    total = 0
    for span in spans:
        if span.started is None or span.gpu_count == 0:
            continue
        lo = max(span.started, start)
        hi = min(span.ended or end, end)
        if hi > lo:
            total += int((hi - lo).total_seconds()) * span.gpu_count
    return total


def month_key(moment: datetime) -> str:
    """'YYYY-MM' of the UTC calendar month of `moment`."""
    return f"{moment.astimezone(UTC):%Y-%m}"


def month_pieces(started: datetime, ended: datetime, gpu_count: int) -> list[tuple[str, int]]:
    """A billed span split at month boundaries: [(month key, GPU-seconds in that month)]."""
    pieces = []
    start = started
    while start < ended:
        end = min(next_month_start(start), ended)
        seconds = int((end - start).total_seconds()) * gpu_count
        if seconds:
            pieces.append((month_key(start), seconds))
        start = end
    return pieces


def over_budget_grace_over(
    quota: Quota, hours_used: Decimal, over_since: datetime | None, now: datetime
) -> bool:
    """True when running GPU servers of an over-budget team must be stopped now."""
    grace = quota.stop_running_over_budget_after
    budget = quota.monthly_gpu_hours
    if grace is None or budget is None or hours_used < budget or over_since is None:
        return False
    return now - over_since >= grace


def reconcile_end(last_seen: datetime | None, started: datetime | None, now: datetime) -> datetime:
    """Best known end of a session whose server is found gone: when it was last seen running
    (never later than now, never earlier than its start)."""
    candidates = [t for t in (last_seen, started) if t is not None]
    end = max(candidates) if candidates else now
    return min(end, now)
