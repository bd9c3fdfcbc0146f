"""The burn-down's cumulative days and its projection, by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from spawner_ext.reports.budget import burn_down

NOW = datetime(2026, 11, 11, 0, 0, tzinfo=UTC)  # ten days into November


def test_days_add_up_and_the_rate_so_far_projects_the_day_it_runs_out() -> None:
    daily = {date(2026, 11, 1): Decimal(30), date(2026, 11, 5): Decimal(70)}
    found = burn_down("vision", Decimal(250), daily, NOW)
    assert found.days[0] == (date(2026, 11, 1), Decimal(30))
    assert found.days[4] == (date(2026, 11, 5), Decimal(100))
    assert found.days[-1] == (date(2026, 11, 11), Decimal(100)) and len(found.days) == 11
    # 100 GPU-hours in 10 days: the other 150 take 15 more days
    assert found.runs_out_on == date(2026, 11, 26)
    assert found.as_json()["used_ratio"] == 0.4 and found.as_json()["remaining_gpu_hours"] == 150


def test_a_slow_month_does_not_run_out_and_no_budget_never_does() -> None:
    daily = {date(2026, 11, 2): Decimal(10)}
    assert burn_down("vision", Decimal(2000), daily, NOW).runs_out_on is None
    assert burn_down("vision", None, daily, NOW).runs_out_on is None


def test_a_used_up_budget_ran_out_today() -> None:
    daily = {date(2026, 11, 2): Decimal(300)}
    assert burn_down("vision", Decimal(300), daily, NOW).runs_out_on == date(2026, 11, 11)
