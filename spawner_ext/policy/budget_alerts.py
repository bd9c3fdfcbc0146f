"""Budget alerts (pure): which of a team's thresholds it has newly crossed this month, on actual
use and on the month's forecast, and what the alert says (email text, webhook JSON). The gpuhub
service gathers the usage and what has fired (service/budget_alerts.py) and queues the alerts in
the outbox (ledger/budget_alerts.py); nothing here reads a clock or a database.

The forecast is the month's end at its average rate so far: GPU-hours used so far x the month's
length / the time gone since the month began (the rate `gpuhub report`'s burn-down uses). It
is not made before `forecast_after` of the month is gone.

Each basis fires its highest crossed threshold once it is above every one fired before on that
basis this month; lower thresholds crossed at the same time (a first look mid-month, a service
that was down) are passed over, so a team gets one alert, not three, for one jump."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..catalog.budget_alerts import ACTUAL, FORECAST, AlertRecipients, BudgetAlerts
from ..catalog.schema import Team
from .admission import next_month_start

EVENT = "budget.alert"
"""The webhook body's `event`."""
HOURS = Decimal("0.001")


@dataclass(frozen=True)
class BudgetAlert:
    """One threshold a team crossed, as its alert reports it."""

    team: str
    month: str
    """'YYYY-MM', UTC."""
    threshold: int
    """Percent of the monthly budget."""
    basis: str
    """ACTUAL or FORECAST: which of `used` and `forecast` crossed the threshold."""
    used: Decimal
    """GPU-hours used this month so far."""
    budget: Decimal
    """The month's budget in GPU-hours."""
    forecast: Decimal | None
    """GPU-hours at the month's end at its rate so far; None before `forecast_after`."""


def month_of(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month `now` is in: its start and the next month's start."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC), next_month_start(now)


def forecast_hours(used: Decimal, now: datetime) -> Decimal:
    """GPU-hours at the end of `now`'s month at the month's average rate so far."""
    start, end = month_of(now)
    gone = Decimal((now - start).total_seconds())
    if gone <= 0:
        return used
    month = Decimal((end - start).total_seconds())
    return (used * month / gone).quantize(HOURS, rounding=ROUND_HALF_UP)


def reached(hours: Decimal, budget: Decimal, threshold: int) -> bool:
    """True when `hours` is at least `threshold` percent of `budget` (and some were used: a
    budget of 0 is crossed by the first GPU-second)."""
    return hours > 0 and hours * 100 >= budget * threshold


def alerts_due(
    team: str,
    alerts: BudgetAlerts,
    budget: Decimal,
    used: Decimal,
    now: datetime,
    fired: Collection[tuple[int, str]] = (),
) -> list[BudgetAlert]:
    """The alerts to send now for `team`, which used `used` of `budget` GPU-hours this month
    by `now`; `fired`: the (threshold, basis) already sent this month. At most one per basis."""
    start, _ = month_of(now)
    month = f"{start:%Y-%m}"
    forecast = forecast_hours(used, now) if now - start >= alerts.forecast_after else None
    due = []
    for basis in (ACTUAL, FORECAST):
        hours = used if basis == ACTUAL else forecast
        if basis not in alerts.basis or hours is None:
            continue
        crossed = [t for t in alerts.thresholds if reached(hours, budget, t)]
        before = max((t for t, b in fired if b == basis), default=0)
        if crossed and max(crossed) > before:
            due.append(BudgetAlert(team, month, max(crossed), basis, used, budget, forecast))
    return due


def recipient_names(
    team: Team,
    to: AlertRecipients,
    admins: Collection[str],
    members: Mapping[str, Collection[str]],
) -> list[str]:
    """The user names an alert of `team` is emailed to, each once, in a stable order: its
    `leads.users` and the `members` of its `leads.groups` (with `to.leads`), and `admins` (with
    `to.admins`). Group names compare exactly, as the leads' JupyterHub role takes them."""
    names: list[str] = []
    if to.leads:
        names += team.leads.users
        for group in team.leads.groups:
            names += sorted(members.get(group, ()))
    if to.admins:
        names += sorted(admins)
    return list(dict.fromkeys(names))


# --- what an alert says ------------------------------------------------------------------------


def _hours(value: Decimal) -> str:
    """1234.5 -> '1,234.5'; whole numbers without decimals."""
    rounded = value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    text = f"{rounded:,.1f}"
    return text[:-2] if text.endswith(".0") else text


def _percent(hours: Decimal, budget: Decimal) -> str:
    if budget <= 0:
        return "over 100%"
    return f"{(hours * 100 / budget).quantize(Decimal(1), rounding=ROUND_HALF_UP)}%"


def _month_name(month: str) -> str:
    return f"{datetime.strptime(month, '%Y-%m'):%B %Y}"


def alert_subject(alert: BudgetAlert, team_name: str) -> str:
    month = _month_name(alert.month)
    if alert.basis == ACTUAL:
        return f"GPU budget: {team_name} has used {alert.threshold}% of {month}'s budget"
    return f"GPU budget: {team_name} is on course for {alert.threshold}% of {month}'s budget"


def alert_summary(alert: BudgetAlert, team_name: str) -> str:
    """One line for chat (the webhook's `text`, Slack-compatible plain text)."""
    month = _month_name(alert.month)
    used = (
        f"{_hours(alert.used)} of {_hours(alert.budget)} GPU-hours "
        f"({_percent(alert.used, alert.budget)})"
    )
    if alert.basis == ACTUAL:
        return (
            f"Budget alert: team {team_name} ({alert.team}) has used {used} of its {month} "
            f"GPU budget, crossing {alert.threshold}%."
        )
    assert alert.forecast is not None
    return (
        f"Budget alert: team {team_name} ({alert.team}) is on course to use "
        f"{_hours(alert.forecast)} GPU-hours in {month} "
        f"({_percent(alert.forecast, alert.budget)} of its budget, crossing {alert.threshold}%); "
        f"used so far: {used}."
    )


def alert_text(
    alert: BudgetAlert, team_name: str, cost: Decimal | None, currency: str, stop_after: str | None
) -> str:
    """The email's body. `stop_after`: the team's `stop_running_over_budget_after`, spoken
    (None: running servers are left alone when the budget is used up)."""
    _, end = month_of(datetime.strptime(alert.month, "%Y-%m").replace(tzinfo=UTC))
    lines = [alert_summary(alert, team_name), ""]
    if alert.forecast is not None:
        lines.append(
            f"At its average rate so far this month, the team ends {_month_name(alert.month)} "
            f"at about {_hours(alert.forecast)} GPU-hours "
            f"({_percent(alert.forecast, alert.budget)} of {_hours(alert.budget)})."
        )
    if cost is not None:
        lines.append(f"Cost so far this month: {cost:,.2f} {currency}.")
    then = "new GPU servers of the team are refused"
    if stop_after is not None:
        then += f", and its running GPU servers are stopped {stop_after} later"
    lines += [
        f"When the budget is used up, {then}. It starts afresh on {end:%-d %B %Y} at 00:00 UTC.",
        "",
        "You get this as a lead of the team, an admin of the hub, or on the team's alert "
        "list. Each threshold is sent once a month.",
    ]
    return "\n".join(lines) + "\n"


def _number(value: Decimal | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def alert_event(
    alert: BudgetAlert, team_name: str, cost: Decimal | None, currency: str
) -> dict[str, Any]:
    """The webhook's JSON body (docs/how-to/budget-alerts.md): GPU-hours as numbers, the cost
    so far in `currency`, and `text` for chat tools that show a `text` field (Slack)."""
    return {
        "event": EVENT,
        "team": alert.team,
        "team_name": team_name,
        "month": alert.month,
        "threshold": alert.threshold,
        "basis": alert.basis,
        "used": _number(alert.used),
        "budget": _number(alert.budget),
        "forecast": _number(alert.forecast),
        "cost": _number(cost),
        "currency": currency,
        "text": alert_summary(alert, team_name),
    }
