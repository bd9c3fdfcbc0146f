"""What running users are told before a stop, as tables: whether Keep is offered (only where it
can delay the stop), what to do and whom to ask when it cannot, and the team's budget notice at
its warning threshold, at 100 % and with the stop's deadline."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, Team, load_catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.policy.culling import (
    CullAction,
    CullSettings,
    ServerActivity,
    decide_cull,
    keep_delays,
)
from spawner_ext.policy.notices import (
    NOBODY,
    BudgetLevel,
    budget_notice,
    budget_stop_at,
    stop_advice,
    whom_to_ask,
)

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")


@pytest.fixture(scope="module")
def vision(catalog: Catalog) -> Team:
    """2000 GPU-hours, warned from 80 %, running GPU servers stopped 2 h after 100 %; led by ada
    and the group vision-leads."""
    return catalog.teams["vision"]


@pytest.mark.parametrize(
    ("reason", "keep"),
    [
        (EndReason.CULLED_IDLE, True),
        (EndReason.CULLED_GPU_IDLE, True),
        (EndReason.MAX_AGE, False),  # the server's age: Keep restarts no such clock
        (EndReason.BUDGET, False),  # money: busy or kept, it stops
        ("culled-gpu-idle", True),  # as the ledger and the API carry it
        ("max-age", False),
        (None, False),
    ],
)
def test_keep_is_offered_only_where_it_delays_the_stop(reason: str | None, keep: bool) -> None:
    assert keep_delays(reason) is keep


def test_keep_really_delays_only_the_stops_it_is_offered_for() -> None:
    """The culling decision itself: a Keep click moves an idle stop, never max-age or budget."""
    settings = CullSettings(60 * MIN, 60 * MIN, timedelta(days=3), 10 * MIN, 5)
    t0 = NOW - timedelta(days=3) + 5 * MIN
    servers = {
        EndReason.CULLED_GPU_IDLE: ServerActivity(
            started=NOW - 2 * HOUR, last_activity=NOW, gpu_count=1, gpu_idle_since=NOW - 55 * MIN
        ),
        EndReason.MAX_AGE: ServerActivity(started=t0, last_activity=NOW, gpu_busy=True),
        EndReason.BUDGET: ServerActivity(
            started=NOW - HOUR, last_activity=NOW, gpu_busy=True, budget_stop_at=NOW + 5 * MIN
        ),
    }
    for reason, server in servers.items():
        warned = decide_cull(server, settings, NOW)
        assert (warned.action, warned.reason) == (CullAction.WARN, reason)
        kept = decide_cull(replace(server, kept_at=NOW), settings, NOW)
        delayed = kept.cull_at is not None and warned.cull_at is not None
        assert (delayed and kept.cull_at > warned.cull_at) is keep_delays(reason), reason


def test_a_warning_says_when_in_utc() -> None:
    settings = CullSettings(None, None, timedelta(days=3), 10 * MIN, 5)
    server = ServerActivity(started=NOW - timedelta(days=3) + 5 * MIN, last_activity=NOW)
    message = decide_cull(server, settings, NOW).message
    assert message == (
        "This server will be stopped in 5 minutes (at 12:05 UTC): it will have run for 72 hours, "
        "the longest allowed."
    )


def test_whom_to_ask_names_the_teams_leads(catalog: Catalog, vision: Team) -> None:
    assert whom_to_ask(vision) == (
        "ada or a member of vision-leads (the leads of Computer Vision Lab)"
    )
    assert whom_to_ask(catalog.teams["nlp"]) == "grace (the leads of Language Models)"
    many = vision.model_copy(
        update={
            "display_name": None,
            "leads": vision.leads.model_copy(
                update={"users": ("a", "b", "c", "d", "e"), "groups": ("g", "h")}
            ),
        }
    )
    assert whom_to_ask(many) == "a, b, c, d or 3 other leads"
    few = many.model_copy(
        update={"leads": many.leads.model_copy(update={"users": ("a",), "groups": ("g", "h")})}
    )
    assert whom_to_ask(few) == "a or a member of g or h"
    nobody = vision.model_copy(update={"leads": vision.leads.model_copy(update={"users": ()})})
    nobody = nobody.model_copy(update={"leads": nobody.leads.model_copy(update={"groups": ()})})
    assert whom_to_ask(nobody) == NOBODY
    assert whom_to_ask(None) == NOBODY


@pytest.mark.parametrize(
    ("reason", "advice"),
    [
        (EndReason.CULLED_GPU_IDLE, ""),
        (EndReason.CULLED_IDLE, ""),
        (
            EndReason.MAX_AGE,
            "Keep cannot delay this: save your work, and start a new server after it. For longer "
            "runs, ask ada.",
        ),
        (
            EndReason.BUDGET,
            "Keep cannot delay this: save your work. To raise the budget, ask ada.",
        ),
    ],
)
def test_the_advice_when_keep_cannot_help(reason: EndReason, advice: str) -> None:
    assert stop_advice(reason, "ada") == advice


def _hours(percent: str) -> Decimal:
    return Decimal(2000) * Decimal(percent) / 100


@pytest.mark.parametrize(
    ("name", "percent", "over_since", "level", "stop_at"),
    [
        ("no notice below the threshold", "79.9", None, None, None),
        ("at the threshold", "80", None, BudgetLevel.WARNING, None),
        ("just under 100 %", "99.99", None, BudgetLevel.WARNING, None),
        # at 100 %: the stop comes the grace (2 h) after the service first saw it over budget
        ("used up, seen over at 11:00", "100", NOW - HOUR, BudgetLevel.USED_UP, NOW + HOUR),
        ("over, seen over at 11:00", "130", NOW - HOUR, BudgetLevel.USED_UP, NOW + HOUR),
        # the service's tick has not seen it yet: it starts the grace now
        ("used up, not seen yet", "100", None, BudgetLevel.USED_UP, NOW + 2 * HOUR),
        # a record from last month never carries over (the service starts it afresh)
        (
            "last month's record",
            "100",
            datetime(2026, 11, 30, 23, 0, tzinfo=UTC),
            BudgetLevel.USED_UP,
            NOW + 2 * HOUR,
        ),
        ("grace over: stopping", "100", NOW - 3 * HOUR, BudgetLevel.USED_UP, NOW - HOUR),
    ],
)
def test_budget_notice_levels_and_deadline(
    vision: Team,
    name: str,
    percent: str,
    over_since: datetime | None,
    level: BudgetLevel | None,
    stop_at: datetime | None,
) -> None:
    notice = budget_notice("vision", vision, _hours(percent), over_since, NOW)
    assert (notice.level if notice else None) == level, name
    assert (notice.stop_at if notice else None) == stop_at, name
    assert budget_stop_at(vision.quota, _hours(percent), over_since, NOW) == stop_at, name


def test_budget_notice_messages_say_how_much_when_and_whom_to_ask(vision: Team) -> None:
    warning = budget_notice("vision", vision, _hours("85.5"), None, NOW)
    assert warning is not None and warning.percent_used == 85
    assert warning.message == (
        "Team Computer Vision Lab has used 85% of its 2000 GPU-hours this month (resets "
        "2027-01-01). At 100% new GPU servers are refused, and running ones are stopped 2 h "
        "later. To raise the budget, ask ada or a member of vision-leads (the leads of Computer "
        "Vision Lab)."
    )
    used_up = budget_notice("vision", vision, _hours("100"), NOW - 5 * MIN, NOW)
    assert used_up is not None and used_up.leads == whom_to_ask(vision)
    assert used_up.message == (
        "Team Computer Vision Lab has used its 2000 GPU-hours for this month (100%). Its running "
        "GPU servers will be stopped at 2026-12-10 13:55 UTC (in 1 h 55 min), and new ones are "
        "refused until 2027-01-01. Save your work. To raise the budget, ask ada or a member of "
        "vision-leads (the leads of Computer Vision Lab)."
    )
    stopping = budget_notice("vision", vision, _hours("100"), NOW - 3 * HOUR, NOW)
    assert stopping is not None and "are being stopped now" in stopping.message
    assert used_up.as_json()["stop_at"] == "2026-12-10T13:55:00+00:00"


def test_budget_notice_without_a_stop_stage_or_a_budget(catalog: Catalog) -> None:
    nlp = catalog.teams["nlp"]  # 5000 GPU-hours, warned from 80 % (default), no stop stage
    warning = budget_notice("nlp", nlp, Decimal(4500), None, NOW)
    assert warning is not None and "At 100% new GPU servers are refused; running ones go on." in (
        warning.message
    )
    used_up = budget_notice("nlp", nlp, Decimal(5000), NOW - HOUR, NOW)
    assert used_up is not None and used_up.stop_at is None
    assert "New GPU servers are refused until 2027-01-01; running ones go on." in used_up.message
    no_budget = nlp.model_copy(
        update={"quota": nlp.quota.model_copy(update={"monthly_gpu_hours": None})}
    )
    assert budget_notice("nlp", no_budget, Decimal(9999), None, NOW) is None
    assert budget_notice("nlp", nlp, None, None, NOW) is None, "no metering: nothing to say"
