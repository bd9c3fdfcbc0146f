"""What a borrowed server chosen to give its GPUs back tells its notebook: the warning from the
moment it is chosen (however far ahead, not only `warn_before`), with the time, the reason and
the team it goes to, no Keep button, and the deadline in the meter's list; an earlier culler
warning still wins. Each against values written out here.

Broken once: `decide_cull` warning a reclaim only within `warn_before` (the 15-minute notice
gave no warning at first); the answer ignoring the reclaim when the culler's record has none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from spawner_ext.catalog import load_catalog
from spawner_ext.ledger.activity import ActivityRecord, CullWarning
from spawner_ext.ledger.models import UsageSession
from spawner_ext.notebook.sampler import Activity
from spawner_ext.policy.activity import ActivityState
from spawner_ext.service.activity_api import answer_body, reclaim_warning, session_body

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
CATALOG = load_catalog(Path(__file__).parents[1] / "hub_config" / "catalog.yaml")


def borrowed(reclaim_in: timedelta | None) -> UsageSession:
    return UsageSession(
        id=9,
        user="sam",
        team="teaching",
        server_name="",
        profile="h100-single",
        gpu_type="h100-80gb",
        gpu_count=1,
        price_per_hour=Decimal("4.10"),
        currency="USD",
        requested_at=NOW - timedelta(hours=2),
        started_at=NOW - timedelta(hours=2),
        borrowed=True,
        reclaim_at=NOW + reclaim_in if reclaim_in is not None else None,
        reclaim_for="nlp" if reclaim_in is not None else None,
    )


def test_the_warning_starts_when_the_server_is_chosen() -> None:
    warning = reclaim_warning(CATALOG, borrowed(timedelta(minutes=15)), NOW)
    assert warning == CullWarning(
        "This server (1x NVIDIA H100 80GB) will be stopped in 15 minutes (at 12:15 UTC): it runs "
        "on other teams' idle quota, and Language Models needs the GPUs back for people waiting "
        "on their own quota. Open notebooks are saved first.",
        NOW + timedelta(minutes=15),
        "reclaimed",
    )
    assert reclaim_warning(CATALOG, borrowed(None), NOW) is None


def test_the_answer_shows_it_without_keep_and_the_meter_lists_it() -> None:
    session = borrowed(timedelta(minutes=15))
    warning = reclaim_warning(CATALOG, session, NOW)
    body = answer_body(None, CATALOG, "teaching", None, None, warning)
    assert body["warning"]["reason"] == "reclaimed"
    assert body["warning"]["keep"] is False
    assert body["warning"]["advice"].startswith("Keep cannot delay this")
    meter = session_body(session, CATALOG, None, None, NOW)
    assert {"reason": "reclaimed", "at": "2026-12-10T12:15:00+00:00", "after_seconds": 0,
            "keep": False} in meter["deadlines"]  # fmt: skip


def test_an_earlier_culler_warning_still_wins() -> None:
    state = ActivityState(
        reported_at=NOW, gpu_activity=Activity.IDLE, kernel_busy=False, gpu_idle_since=NOW
    )
    earlier = CullWarning("stopped in 5 minutes: idle", NOW + timedelta(minutes=5), "culled-idle")
    record = ActivityRecord(session_id=9, state=state, samples="[]", warning=earlier)
    reclaim = reclaim_warning(CATALOG, borrowed(timedelta(minutes=15)), NOW)
    assert (
        answer_body(record, CATALOG, "teaching", None, None, reclaim)["warning"]["reason"]
        == "culled-idle"
    )
    later = CullWarning("stopped in 30 minutes", NOW + timedelta(minutes=30), "culled-idle")
    record = ActivityRecord(session_id=9, state=state, samples="[]", warning=later)
    assert (
        answer_body(record, CATALOG, "teaching", None, None, reclaim)["warning"]["reason"]
        == "reclaimed"
    )


def test_a_stale_copy_of_the_reclaim_in_the_culler_s_record_is_not_shown() -> None:
    """The culler wrote the reclaim's warning at its last cycle; the choice was withdrawn since
    (no reclaim now): no warning. Broken once (the culler's copy shown): a withdrawn reclaim
    still warned."""
    state = ActivityState(
        reported_at=NOW, gpu_activity=Activity.BUSY, kernel_busy=True, gpu_idle_since=None
    )
    stale = CullWarning("stopped in 5 minutes: reclaimed", NOW + timedelta(minutes=5), "reclaimed")
    record = ActivityRecord(session_id=9, state=state, samples="[]", warning=stale)
    assert answer_body(record, CATALOG, "teaching", None, None, None)["warning"] is None
    fresh = reclaim_warning(CATALOG, borrowed(timedelta(minutes=15)), NOW)
    shown = answer_body(record, CATALOG, "teaching", None, None, fresh)["warning"]
    assert shown["cull_at"] == (NOW + timedelta(minutes=15)).isoformat()
