"""A team's budget state as running users are told about it, read from the ledger (SQLite and
PostgreSQL): GPU-hours this month, and the service's record of when the team went over budget,
which gives the stop's deadline; reading it records nothing."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from spawner_ext.catalog import Catalog
from spawner_ext.ledger.budgets import team_budget_notice, team_budget_state
from spawner_ext.ledger.store import Ledger
from spawner_ext.policy.notices import BudgetLevel
from tests.ledger.conftest import FakeClock
from tests.ledger.test_store import request


def test_the_notice_follows_the_ledger_and_its_over_budget_record(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    # vision: 2000 GPU-hours, warned from 80 %, running GPU servers stopped 2 h after 100 %.
    clock.now = clock.now.replace(day=1, hour=0)
    quad = ledger.admit(catalog, request(profile="h100-quad", count=4, price="16.4"))
    ledger.mark_started(quad.session, "local:100")
    assert (
        team_budget_notice(catalog, "vision", team_budget_state(ledger, "vision"), clock()) is None
    )

    clock.advance(hours=425)  # 1700 GPU-hours: 85 %
    state = team_budget_state(ledger, "vision")
    assert state.hours_used == Decimal(1700) and state.over_since is None
    notice = team_budget_notice(catalog, "vision", state, clock())
    assert notice is not None and notice.level is BudgetLevel.WARNING
    assert notice.percent_used == 85

    clock.advance(hours=75)  # 2000 GPU-hours: used up; the service's tick has not seen it yet
    unseen = team_budget_state(ledger, "vision")
    assert unseen.over_since is None, "reading records nothing: the service's tick does"
    ledger.over_budget(catalog)  # the tick sees it over budget now
    seen_at = clock()
    clock.advance(minutes=30)
    state = team_budget_state(ledger, "vision")
    assert state.over_since == seen_at
    notice = team_budget_notice(catalog, "vision", state, clock())
    assert notice is not None and notice.level is BudgetLevel.USED_UP
    assert notice.stop_at == seen_at + timedelta(hours=2)
    assert "(in 1 h 30 min)" in notice.message
    assert team_budget_notice(catalog, "gone", state, clock()) is None, "a team no longer there"
