"""What the users of a running server are told before gpuhub stops it, besides the culler's
warning (culling.py): what they can do about a stop that Keep cannot delay, whom to ask, and
their team's budget notice (from the warning threshold: the share used; at 100 %: when its GPU
servers are stopped), and the deadlines that apply to the server (its GPU meter's panel). Pure:
the gpuhub service (its answer to the notebook extension) and the hub's home page gather the
inputs; the budget's own decisions are admission.py's, the culling rules culling.py's."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..catalog import Quota, Team
from ..catalog.durations import spoken_duration
from ..end_reason import EndReason
from .admission import budget_used_up, budget_warning, next_month_start
from .culling import CullSettings, ServerActivity, cull_deadlines, keep_delays

MAX_NAMES = 4
"""Leads named at most in one notice; the rest are counted."""
NOBODY = "your hub's admins"
"""Whom to ask when a team has no leads (or the server is charged to no team)."""


def _or_list(items: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} or {items[-1]}"


def whom_to_ask(team: Team | None) -> str:
    """The team's leads, as the catalog names them: 'ada or a member of vision-leads (the leads
    of Computer Vision Lab)'; NOBODY without leads."""
    if team is None:
        return NOBODY
    users, groups = list(team.leads.users), list(team.leads.groups)
    if not users and not groups:
        return NOBODY
    names = users[:MAX_NAMES]
    if groups and len(names) < MAX_NAMES:
        shown = groups[: MAX_NAMES - len(names)]
        names.append(f"a member of {_or_list(shown)}")
        groups = groups[len(shown) :]
    more = len(users) - len(users[:MAX_NAMES]) + len(groups)
    if more:
        names.append(f"{more} other lead{'s' if more != 1 else ''}")
    who = _or_list(names)
    return f"{who} (the leads of {team.display_name})" if team.display_name else who


def stop_advice(reason: str | None, ask: str) -> str:
    """What to do about a coming stop, shown with the culler's warning: '' for a stop Keep can
    delay (idleness: the warning offers Keep); else that Keep cannot, and whom to ask."""
    if keep_delays(reason):
        return ""
    if reason == EndReason.BUDGET:
        return f"Keep cannot delay this: save your work. To raise the budget, ask {ask}."
    if reason == EndReason.RECLAIMED:
        return (
            "Keep cannot delay this. Start again when your team's own quota has room, or wait "
            "for a GPU in line."
        )
    if reason == EndReason.MAX_AGE:
        return (
            "Keep cannot delay this: save your work, and start a new server after it. "
            f"For longer runs, ask {ask}."
        )
    return f"Keep cannot delay this: save your work. Ask {ask}."


def _month_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def budget_stop_at(
    quota: Quota, hours_used: Decimal, over_since: datetime | None, now: datetime
) -> datetime | None:
    """When the team's running GPU servers are stopped for its budget (the budget stage,
    service/metering.py): `stop_running_over_budget_after` after the service first saw it over
    budget this month (`over_since`; not seen yet: from now). None while it is under budget, or
    without a stop stage."""
    grace = quota.stop_running_over_budget_after
    if grace is None or not budget_used_up(quota, hours_used):
        return None
    since = over_since if over_since is not None and over_since >= _month_start(now) else now
    return since + grace


class BudgetLevel(enum.StrEnum):
    WARNING = "warning"
    """At or past the team's `budget_warning_percent`, not yet at 100 %."""
    USED_UP = "used-up"
    """At or past 100 %: new GPU servers are refused, running ones stopped after the grace."""


@dataclass(frozen=True)
class BudgetNotice:
    """What the users of a team's running GPU servers are told about its monthly budget."""

    team: str
    team_name: str
    level: BudgetLevel
    percent_used: int
    resets_at: datetime
    stop_at: datetime | None
    """When the team's running GPU servers are stopped; None: they are not (yet)."""
    leads: str
    """Whom to ask (whom_to_ask)."""
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "team": self.team,
            "team_name": self.team_name,
            "level": self.level.value,
            "percent_used": self.percent_used,
            "resets_at": self.resets_at.isoformat(),
            "stop_at": self.stop_at.isoformat() if self.stop_at else None,
            "leads": self.leads,
            "message": self.message,
        }


def _gpu_hours(hours: Decimal) -> str:
    """'1 GPU-hour', '2000 GPU-hours'."""
    return f"{hours} GPU-hour{'' if hours == 1 else 's'}"


def _duration(delta: timedelta) -> str:
    """'45 s', '12 min', '1 h 55 min', '2 d 4 h'."""
    return spoken_duration(int(delta.total_seconds()))


def budget_notice(
    team: str,
    entry: Team,
    hours_used: Decimal | None,
    over_since: datetime | None,
    now: datetime,
) -> BudgetNotice | None:
    """The notice for the users of `team`'s running GPU servers, or None below its warning
    threshold (or without a budget, or without metering). The levels are admission's own
    decisions (`budget_warning`, `budget_used_up`); `over_since` is the ledger's record of when
    the service first saw the team over budget (None: not seen yet)."""
    quota = entry.quota
    budget = quota.monthly_gpu_hours
    if budget is None or hours_used is None:
        return None
    if budget_used_up(quota, hours_used):
        level = BudgetLevel.USED_UP
    elif budget_warning(team, quota, hours_used, now) is not None:
        level = BudgetLevel.WARNING
    else:
        return None
    percent = 100 if budget <= 0 else int(hours_used * 100 / budget)
    name = entry.display_name or team
    resets = next_month_start(now)
    ask = whom_to_ask(entry)
    stop_at = budget_stop_at(quota, hours_used, over_since, now)
    grace = quota.stop_running_over_budget_after
    if level is BudgetLevel.WARNING:
        then = (
            f"At 100% new GPU servers are refused, and running ones are stopped "
            f"{_duration(grace)} later."
            if grace is not None
            else "At 100% new GPU servers are refused; running ones go on."
        )
        message = (
            f"Team {name} has used {percent}% of its {_gpu_hours(budget)} this month (resets "
            f"{resets:%Y-%m-%d}). {then} To raise the budget, ask {ask}."
        )
    else:
        if stop_at is None:
            then = f"New GPU servers are refused until {resets:%Y-%m-%d}; running ones go on."
        elif stop_at > now:
            at = stop_at.astimezone(UTC)
            then = (
                f"Its running GPU servers will be stopped at {at:%Y-%m-%d %H:%M} UTC (in "
                f"{_duration(stop_at - now)}), and new ones are refused until "
                f"{resets:%Y-%m-%d}. Save your work."
            )
        else:
            then = (
                "Its running GPU servers are being stopped now, and new ones are refused until "
                f"{resets:%Y-%m-%d}. Save your work."
            )
        message = (
            f"Team {name} has used its {_gpu_hours(budget)} for this month ({percent}%). {then} "
            f"To raise the budget, ask {ask}."
        )
    return BudgetNotice(team, name, level, percent, resets, stop_at, ask, message)


@dataclass(frozen=True)
class Deadline:
    """A rule that stops a running server, as its user is shown it."""

    reason: EndReason
    at: datetime | None
    """When it stops the server if nothing changes; None while the rule's clock is not running
    (GPUs busy, the budget not used up) or, for `culled-idle`, until the culler warns: Jupyter
    activity is the hub's to know, and an open JupyterLab page is activity."""
    after: timedelta
    """The rule's length: `max_age`, an idle timeout, the budget's grace."""

    def as_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "at": self.at.isoformat() if self.at else None,
            "after_seconds": int(self.after.total_seconds()),
            "keep": keep_delays(self.reason),
        }


def server_deadlines(
    server: ServerActivity,
    settings: CullSettings,
    budget_grace: timedelta | None,
    idle_warning_at: datetime | None,
) -> list[Deadline]:
    """Every rule that can stop this server, the soonest first, then those not running: the
    culling rules' own times (culling.cull_deadlines) for `max_age`, the budget's stop stage
    (`server.budget_stop_at`; `budget_grace`: the team's `stop_running_over_budget_after` for
    a GPU server charged to a team with a budget, else None) and GPU idleness; Jupyter
    idleness only as the culler's warning gives it (`idle_warning_at`)."""
    known: dict[EndReason, datetime] = {
        reason: at
        for at, reason in cull_deadlines(server, settings)
        if reason is not EndReason.CULLED_IDLE  # the hub's last activity is not in `server`
    }
    if idle_warning_at is not None:
        known[EndReason.CULLED_IDLE] = idle_warning_at
    if server.reclaim_at is not None:
        known[EndReason.RECLAIMED] = server.reclaim_at
    rules = (
        (EndReason.MAX_AGE, settings.max_age),
        (EndReason.BUDGET, budget_grace),
        (EndReason.RECLAIMED, timedelta(0) if server.reclaim_at is not None else None),
        (EndReason.CULLED_GPU_IDLE, settings.gpu_idle_timeout),
        (EndReason.CULLED_IDLE, settings.idle_timeout),
    )
    found = [Deadline(r, known.get(r), after) for r, after in rules if after is not None]
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda d: d.at or never)
