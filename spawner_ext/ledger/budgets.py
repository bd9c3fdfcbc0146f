"""A team's budget as its running users are told about it (policy/notices.py): its GPU-hours this
month and since when the gpuhub service has seen it over budget. Reads only: the service's
metering tick records `over_budget_since` (Ledger.over_budget)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from ..catalog import Catalog
from ..policy.notices import BudgetNotice, budget_notice
from .engine import READ_ONLY
from .models import TeamLock
from .store import Ledger


@dataclass(frozen=True)
class TeamBudgetState:
    hours_used: Decimal
    """GPU-hours this month, as the budget counts them (closed and open sessions)."""
    over_since: datetime | None
    """When the service first saw the team over budget (None: not over, or not seen yet)."""


def team_budget_state(ledger: Ledger, team: str) -> TeamBudgetState:
    used = ledger.gpu_hours_this_month(team)
    with Session(ledger.engine.execution_options(**{READ_ONLY: True})) as db:
        lock = db.get(TeamLock, team)
        since = lock.over_budget_since if lock is not None else None
    return TeamBudgetState(used, since)


def team_budget_notice(
    catalog: Catalog, team: str, state: TeamBudgetState, now: datetime
) -> BudgetNotice | None:
    """The notice for `team` (None for a team the catalog no longer has)."""
    entry = catalog.teams.get(team)
    if entry is None:
        return None
    return budget_notice(team, entry, state.hours_used, state.over_since, now)
