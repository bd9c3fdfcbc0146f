"""What the activity API's answer tells a server's GPU meter of its session (pure parts; the real
hub round trip in a browser is tests/integration/test_gpu_meter_browser.py): cost and price,
profile, team, the team's GPU-hours left, start, and the deadlines that apply to the server,
each against a value worked out here from the catalog's own numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spawner_ext.catalog import load_catalog
from spawner_ext.ledger.activity import ActivityRecord, CullWarning
from spawner_ext.ledger.budgets import TeamBudgetState
from spawner_ext.ledger.models import UsageSession
from spawner_ext.notebook.sampler import Activity
from spawner_ext.policy.activity import ActivityState
from spawner_ext.service.activity_api import answer_body, session_body

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
CATALOG = load_catalog(Path(__file__).parents[1] / "hub_config" / "catalog.yaml")


def session(profile: str, team: str | None, started_ago: int, **extra: Any) -> UsageSession:
    known = CATALOG.profile(profile)
    assert known is not None
    gpu = known.gpu
    price = CATALOG.gpu_types[gpu.type].price_per_hour * gpu.count if gpu else 0
    return UsageSession(
        id=7,
        user="lin",
        team=team,
        server_name="",
        profile=profile,
        gpu_type=gpu.type if gpu else None,
        gpu_count=gpu.count if gpu else 0,
        price_per_hour=Decimal(str(price)),
        currency="USD",
        requested_at=NOW - timedelta(seconds=started_ago + 5),
        started_at=NOW - timedelta(seconds=started_ago),
        **extra,
    )


def record(activity: Activity, idle_for: int | None, warning: CullWarning | None = None) -> Any:
    since = NOW - timedelta(seconds=idle_for) if idle_for is not None else None
    return ActivityRecord(7, ActivityState(NOW, activity, False, since), "[]", warning)


@pytest.mark.parametrize(
    ("profile", "seconds", "price"),
    [("h100-single", 5400, 4.10), ("h100-single", 1234, 4.10), ("h100-quad", 61, 16.40)],
)
def test_a_session_started_n_seconds_ago_at_price_p_costs_n_p_over_3600(
    profile: str, seconds: int, price: float
) -> None:
    """broken once: the cost from `requested_at` (5 s earlier): each case failed."""
    body = session_body(session(profile, "nlp", seconds), CATALOG, None, None, NOW)
    assert body["price_per_hour"] == pytest.approx(price)
    assert body["cost"] == pytest.approx(seconds * price / 3600, abs=1e-6)
    assert (body["currency"], body["cost_at"]) == ("USD", NOW.isoformat())
    assert body["started_at"] == (NOW - timedelta(seconds=seconds)).isoformat()


def test_profile_team_and_the_budget_left_a_member_may_see() -> None:
    used = Decimal("1700.25")  # of vision's 2000 GPU-hours
    body = session_body(
        session("h100-single", "vision", 600),
        CATALOG,
        TeamBudgetState(used, None),
        record(Activity.BUSY, None),
        NOW,
    )
    assert (body["profile"], body["profile_name"]) == ("h100-single", "One H100 80GB")
    assert (body["team"], body["team_name"]) == ("vision", "Computer Vision Lab")
    assert (body["gpu_type_name"], body["gpu_count"]) == ("NVIDIA H100 80GB", 1)
    assert body["budget"] == {
        "monthly_gpu_hours": 2000.0,
        "gpu_hours_used": 1700.25,
        "gpu_hours_left": 299.75,
        "percent_used": 85,
        "resets_at": "2027-01-01T00:00:00+00:00",
    }
    over = session_body(
        session("h100-single", "vision", 600),
        CATALOG,
        TeamBudgetState(Decimal(2100), NOW),
        None,
        NOW,
    )
    assert over["budget"]["gpu_hours_left"] == 0.0 and over["budget"]["percent_used"] == 105
    cpu = session_body(session("cpu-small", None, 90), CATALOG, None, None, NOW)
    assert (cpu["cost"], cpu["price_per_hour"], cpu["gpu_count"]) == (0.0, 0.0, 0)
    assert (cpu["team"], cpu["budget"]) == (None, None)


def deadlines(body: dict[str, Any]) -> dict[str, tuple[str | None, int, bool]]:
    return {d["reason"]: (d["at"], d["after_seconds"], d["keep"]) for d in body["deadlines"]}


def test_the_deadlines_that_apply_come_from_the_catalogs_rules() -> None:
    """vision's H100 server, idle for 25 of its 30 GPU-idle minutes, started 2 h ago with a
    3-day max_age; vision is over budget since 10 minutes with a 2 h grace.

    broken once: the budget's stop taken without `stop_at` (from now, not since over): failed;
    and Jupyter idleness computed from the session's start: failed."""
    started = NOW - timedelta(hours=2)
    body = session_body(
        session("h100-single", "vision", 7200),
        CATALOG,
        TeamBudgetState(Decimal(2001), NOW - timedelta(minutes=10)),
        record(Activity.IDLE, 25 * 60),
        NOW,
    )
    assert body["deadlines"][0]["reason"] == "culled-gpu-idle", "the soonest first"
    assert deadlines(body) == {
        "culled-gpu-idle": ((NOW + timedelta(minutes=5)).isoformat(), 1800, True),
        "budget": ((NOW + timedelta(minutes=110)).isoformat(), 7200, False),
        "max-age": ((started + timedelta(days=3)).isoformat(), 3 * 86400, False),
        "culled-idle": (None, 3600, True),  # the hub knows Jupyter activity, the culler warns
    }
    # busy GPUs stop the idle clocks; under budget the grace has not started
    busy = session_body(
        session("h100-single", "vision", 7200),
        CATALOG,
        TeamBudgetState(Decimal(10), None),
        record(Activity.BUSY, None),
        NOW,
    )
    assert deadlines(busy)["culled-gpu-idle"] == (None, 1800, True)
    assert deadlines(busy)["budget"] == (None, 7200, False)
    # the culler's warning of a Jupyter-idle stop gives its time
    at = NOW + timedelta(minutes=8)
    warned = session_body(
        session("cpu-small", None, 7200),
        CATALOG,
        None,
        record(Activity.NONE, None, CullWarning("soon", at, "culled-idle")),
        NOW,
    )
    assert deadlines(warned) == {
        "culled-idle": (at.isoformat(), 3600, True),
        "max-age": ((NOW - timedelta(hours=2) + timedelta(days=3)).isoformat(), 259200, False),
    }, "a CPU server: no GPU idleness, no budget stop"
    # nlp has a budget but no stop stage; the quad profile's own timeouts
    quad = session_body(
        session("h100-quad", "nlp", 60), CATALOG, TeamBudgetState(Decimal(1), None), None, NOW
    )
    assert deadlines(quad) == {
        "max-age": ((NOW - timedelta(seconds=60) + timedelta(hours=24)).isoformat(), 86400, False),
        "culled-gpu-idle": (None, 900, True),
        "culled-idle": (None, 3600, True),
    }


def test_the_answer_carries_the_session_beside_the_warning_and_notice() -> None:
    meter = session_body(session("h100-single", "vision", 60), CATALOG, None, None, NOW)
    body = answer_body(record(Activity.BUSY, None), CATALOG, "vision", None, meter)
    assert body["session"] is meter
    assert answer_body(None, CATALOG, None, None)["session"] is None
