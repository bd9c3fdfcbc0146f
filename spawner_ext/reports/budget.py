"""A team's budget burn-down for the month (pure): GPU-hours used day by day against the
monthly budget, and the day it runs out at the month's rate so far."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .query import current_month


@dataclass(frozen=True)
class BurnDown:
    team: str
    month: str
    budget_gpu_hours: Decimal | None
    used_gpu_hours: Decimal
    days: tuple[tuple[date, Decimal], ...]
    """Cumulative GPU-hours at the end of each day of the month so far."""
    runs_out_on: date | None
    """At the month's rate so far; None when it does not run out this month (or no budget)."""

    def as_json(self) -> dict[str, Any]:
        budget = self.budget_gpu_hours
        return {
            "team": self.team,
            "month": self.month,
            "budget_gpu_hours": None if budget is None else float(budget),
            "used_gpu_hours": float(self.used_gpu_hours),
            "remaining_gpu_hours": None if budget is None else float(budget - self.used_gpu_hours),
            "used_ratio": None if not budget else round(float(self.used_gpu_hours / budget), 4),
            "days": [{"day": d.isoformat(), "used_gpu_hours": float(h)} for d, h in self.days],
            "runs_out_on": self.runs_out_on.isoformat() if self.runs_out_on else None,
        }


def burn_down(
    team: str, budget: Decimal | None, daily: Mapping[date, Decimal], now: datetime
) -> BurnDown:
    """`daily`: GPU-hours used on each day of the month so far (days without use may be absent)."""
    month = current_month(now.date())
    total = Decimal(0)
    days = []
    day = month.since
    while day <= now.date():
        total += daily.get(day, Decimal(0))
        days.append((day, total))
        day += timedelta(days=1)
    return BurnDown(
        team=team,
        month=month.since.strftime("%Y-%m"),
        budget_gpu_hours=budget,
        used_gpu_hours=total,
        days=tuple(days),
        runs_out_on=_runs_out(budget, total, month.start, month.end, now),
    )


def _runs_out(
    budget: Decimal | None, used: Decimal, start: datetime, end: datetime, now: datetime
) -> date | None:
    if budget is None:
        return None
    if used >= budget:
        return now.astimezone(UTC).date()
    elapsed = Decimal(str((now - start).total_seconds()))
    if used <= 0 or elapsed <= 0:
        return None
    seconds_left = (budget - used) / used * elapsed
    when = now + timedelta(seconds=float(seconds_left))
    return when.astimezone(UTC).date() if when < end else None
