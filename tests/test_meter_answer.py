"""What the activity API's answer tells a server's GPU meter of its session (the real hub round
trip in a browser is tests/integration/test_gpu_meter_browser.py): cost and price, profile, team,
the team's GPU-hours left, start, the deadlines that apply to the server, and the right-sizing
hint from the session's GPU use as the real ledger (SQLite) aggregates it, each against a value
worked out here from the catalog's own numbers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spawner_ext.catalog import load_catalog, parse_catalog
from spawner_ext.ledger.activity import ActivityLedger, ActivityRecord, CullWarning
from spawner_ext.ledger.budgets import TeamBudgetState
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.notebook.sampler import Activity, GPUSample
from spawner_ext.policy.activity import ActivityReport, ActivityState
from spawner_ext.policy.gpu_use import sample_use
from spawner_ext.service.activity_api import (
    SessionHints,
    answer_body,
    identity_of,
    rightsizing_body,
    session_body,
)
from spawner_ext.service.culler import REPORT_FRESH
from tests.ledger.conftest import FakeClock
from tests.ledger.test_store import request

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).parents[1]
CATALOG = load_catalog(ROOT / "hub_config" / "catalog.yaml")
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)


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


# --- the right-sizing hint, from a session's GPU use written through the real ledger ------------

GIB = 1 << 30
MINUTE = timedelta(minutes=1)
START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MIG_FOR_A_GROUP = (
    (ROOT / "hub_config" / "catalog.yaml")
    .read_text()
    .replace("    slug: mig-slice\n", "    slug: mig-slice\n    allowed_groups: [mig-users]\n")
)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A migrated SQLite ledger (tests/ledger runs the activity ledger on PostgreSQL too)."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    opened = Ledger.open(url, clock=FakeClock(START))
    yield opened
    opened.engine.dispose()


def started(ledger: Ledger, server: str, profile: str, gpu_type: str | None, price: str) -> int:
    known = CATALOG.profile(profile)
    count = known.gpu.count if known is not None and known.gpu is not None else 0
    admitted = ledger.admit(
        CATALOG, request("lin", server, profile, count, "vision", gpu_type, price)
    )
    ledger.mark_started(admitted.session, "local:1")
    return admitted.session_id


def report_minutes(ledger: Ledger, first: int, last: int, busy: set[int]) -> None:
    """lin's H100 reports once a minute, minutes `first`..`last` after START: 2 % busy and
    4 GiB in use, except the `busy` minutes (90 %, 6 GiB)."""
    activity = ActivityLedger(ledger)
    for minute in range(first, last + 1):
        hot = minute in busy
        sample = GPUSample(
            "GPU-1", "NVIDIA H100 80GB HBM3", False, 90 if hot else 2,
            (6 if hot else 4) * GIB, 80 * GIB, 1,
        )  # fmt: skip
        use = sample_use([sample], CATALOG.culling.gpu_utilization_percent)
        at = START + minute * MINUTE
        report = ActivityReport(Activity.BUSY if hot else Activity.IDLE)
        assert activity.record("lin", "", report, "[]", at, REPORT_FRESH, use=use) is not None


def test_the_meter_hints_a_cheaper_profile_from_the_sessions_measured_use(
    ledger: Ledger,
) -> None:
    """lin's H100 session (vision, 4.10/h) reports once a minute for 40 minutes: 2 400 s
    observed, 2 of the 40 minutes at 90 % (120 s busy: 5 %), at most 6 GiB in use. With 25 %
    headroom it needs 7.5 GiB, and its use was light: every profile vision may start with that
    much memory per GPU is a candidate; the cheapest is the 10 GiB MIG slice at 0.30/h.

    broken once: `identity_of` dropping the token's groups: the member of the group got
    l4-single, failed; and the cache's period
    compared the wrong way round (`>=`): the first answer's null served on, failed."""
    hints = SessionHints()
    lin = ledger.session(started(ledger, "", "h100-single", "h100-80gb", "4.10"))
    assert lin is not None
    model = {"kind": "user", "name": "lin", "groups": ["vision"]}
    report_minutes(ledger, 0, 20, busy={10})
    now = START + 20 * MINUTE
    assert hints.hint(ledger, CATALOG, lin, identity_of(model), now) is None, "20 min: too few"

    report_minutes(ledger, 21, 40, busy={30})
    assert hints.hint(ledger, CATALOG, lin, identity_of(model), now + 30 * SECOND) is None, (
        "read once a minute: the first answer serves on"
    )
    hint = hints.hint(ledger, CATALOG, lin, identity_of(model), now + MINUTE)
    assert hint == {
        "suggested_profile": "mig-slice",
        "suggested_profile_name": "A100 MIG slice (1g.10gb)",
        "suggested_price_per_hour": 0.30,
        "price_per_hour": 4.10,
        "currency": "USD",
        "observed_hours": round(2400 / 3600, 4),
        "busy_percent": 5,
        "p95_percent": 5,  # 38 of 40 minutes at 2 %: the first 5 % bucket's upper edge
        "peak_memory_mib": 6 * 1024,
        "memory_total_mib": 80 * 1024,
        "hint": "used at most 6 GB of 80 GB and was busy 5 % of the time: `mig-slice` would "
        "have cost 0.30 USD/h instead of 4.10 USD/h",
    }
    body = session_body(lin, CATALOG, None, None, now, hint)
    assert body["rightsizing"] is hint

    # a profile only for a group: suggested to members of the group (their token tells it)
    grouped = parse_catalog(MIG_FOR_A_GROUP)
    member = identity_of({"name": "lin", "groups": ["vision", "mig-users"]})
    other = identity_of({"name": "lin", "groups": ["vision"]})
    as_member = SessionHints().hint(ledger, grouped, lin, member, now)
    assert as_member is not None and as_member["suggested_profile"] == "mig-slice"
    not_member = SessionHints().hint(ledger, grouped, lin, other, now)
    assert not_member is not None
    assert (not_member["suggested_profile"], not_member["suggested_price_per_hour"]) == (
        "l4-single",
        0.70,
    ), "the next cheapest with 7.5 GiB: the L4's 24 GiB"

    # no memory_gib for the smaller types: nothing is known to fit
    unknown = parse_catalog(
        (ROOT / "hub_config" / "catalog.yaml")
        .read_text()
        .replace("    memory_gib: 40 ", "   ")
        .replace("    memory_gib: 10 ", "   ")
        .replace("    memory_gib: 24 ", "   ")
    )
    assert SessionHints().hint(ledger, unknown, lin, other, now) is None


def test_a_cpu_server_has_no_hint(ledger: Ledger) -> None:
    cpu = ledger.session(started(ledger, "cpu", "cpu-small", None, "0"))
    assert cpu is not None
    activity = ActivityLedger(ledger)
    for minute in range(0, 61):
        at = START + minute * MINUTE
        report = ActivityReport(Activity.NONE, kernel_busy=True)
        assert activity.record("lin", "cpu", report, "[]", at, REPORT_FRESH) is not None
    who = identity_of({"name": "lin", "groups": ["vision"]})
    assert SessionHints().hint(ledger, CATALOG, cpu, who, START + 2 * HOUR) is None
    assert rightsizing_body(cpu, CATALOG, who, None) is None
    assert session_body(cpu, CATALOG, None, None, START)["rightsizing"] is None
