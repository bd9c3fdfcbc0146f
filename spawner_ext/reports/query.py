"""What a usage report asks for, parsed from query parameters or CLI arguments (pure), with the
error a person reads when a parameter is wrong.

Periods are half-open UTC days: `since=2026-11-01&until=2026-12-01` is November. Without them a
report covers the current month so far."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

MAX_DAYS = 3660
"""The longest period a report may cover (ten years)."""
MAX_DAYS_BY_DAY = 400
"""The longest period a report grouped by day may cover."""


class ReportError(ValueError):
    """A report parameter is wrong; the message says which and what is allowed."""


class Dimension(enum.StrEnum):
    """What rows are grouped by, besides team and currency (always)."""

    USER = "user"
    PROFILE = "profile"
    GPU_TYPE = "gpu_type"
    DAY = "day"
    SESSION = "session"
    """One row per ledger session (its id): the raw records a chargeback script reconciles."""
    END_REASON = "end_reason"
    """How the sessions ended (stopped, culled-gpu-idle, budget, node-lost, ...; `running` for
    those still open): what the culler and the budgets stopped, and what it cost."""


ALIASES = {
    "gpu-type": Dimension.GPU_TYPE,
    "end-reason": Dimension.END_REASON,
    "reason": Dimension.END_REASON,
}


@dataclass(frozen=True)
class Period:
    since: date
    until: date
    """Exclusive."""

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, time(), UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.until, time(), UTC)

    def days(self) -> list[date]:
        return [self.since + timedelta(days=n) for n in range((self.until - self.since).days)]


@dataclass(frozen=True)
class UsageQuery:
    """Which sessions a report sums, and how it groups them."""

    teams: tuple[str, ...] | None
    """None: every team (and sessions of no team)."""
    period: Period
    by: tuple[Dimension, ...]
    user: str | None = None
    """Only this user's sessions (a data scientist's own usage)."""


def current_month(today: date) -> Period:
    start = today.replace(day=1)
    following = (start + timedelta(days=32)).replace(day=1)
    return Period(start, following)


def parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ReportError(f"{name}={value!r} is not a date; use YYYY-MM-DD (UTC)") from None


def parse_period(since: str | None, until: str | None, today: date) -> Period:
    default = current_month(today)
    start = parse_day(since, "since") if since else default.since
    end = parse_day(until, "until") if until else default.until
    if not since and until:
        start = (end - timedelta(days=1)).replace(day=1)  # the month `until` closes
    if not until and since:
        end = max(default.until, start + timedelta(days=1))
    if start >= end:
        raise ReportError(
            f"since ({start}) must be before until ({end}); until is exclusive: "
            f"since={start}&until={start + timedelta(days=1)} is one day"
        )
    if (end - start).days > MAX_DAYS:
        raise ReportError(f"the period is {(end - start).days} days; at most {MAX_DAYS}")
    return Period(start, end)


def parse_by(values: Iterable[str]) -> tuple[Dimension, ...]:
    """`by` values, repeated or comma-separated, in the order given (duplicates dropped)."""
    found: list[Dimension] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if not name:
                continue
            dimension = ALIASES.get(name) or next((d for d in Dimension if d.value == name), None)
            if dimension is None:
                choices = ", ".join(d.value for d in Dimension)
                raise ReportError(f"by={name!r} is not a grouping; choose from {choices}")
            if dimension not in found:
                found.append(dimension)
    return tuple(found)


def parse_usage_query(
    params: Mapping[str, Sequence[str]],
    *,
    known_teams: Iterable[str],
    today: date,
) -> UsageQuery:
    """Query parameters (each name -> its values) -> a UsageQuery, or ReportError. Unknown
    parameter names are refused too (a typo must not silently widen a report)."""
    allowed = {"team", "since", "until", "by", "user", "format"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ReportError(
            f"unknown parameter {unknown[0]!r}; parameters: {', '.join(sorted(allowed))}"
        )
    teams_known = sorted(set(known_teams))
    teams: list[str] = []
    for value in params.get("team", []):
        for team in filter(None, (t.strip() for t in value.split(","))):
            if team not in teams_known:
                raise ReportError(f"unknown team {team!r}; teams: {', '.join(teams_known)}")
            if team not in teams:
                teams.append(team)
    period = parse_period(_one(params, "since"), _one(params, "until"), today)
    by = parse_by(params.get("by", []))
    if Dimension.DAY in by and len(period.days()) > MAX_DAYS_BY_DAY:
        raise ReportError(
            f"by=day over {len(period.days())} days; at most {MAX_DAYS_BY_DAY} (choose a "
            "shorter period)"
        )
    return UsageQuery(tuple(teams) or None, period, by, _one(params, "user"))


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v for v in params.get(name, []) if v != ""]
    if len(values) > 1:
        raise ReportError(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None
