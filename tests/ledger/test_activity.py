"""The activity ledger on SQLite and PostgreSQL: reports of a running server, Keep, the
culler's warning, idle GPU-seconds per day; reports of servers not running are dropped."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.catalog import Catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.activity import ActivityLedger, CullWarning
from spawner_ext.ledger.models import IdleGPUDay
from spawner_ext.ledger.store import Ledger
from spawner_ext.notebook.sampler import Activity
from spawner_ext.policy.activity import ActivityReport
from tests.ledger.conftest import FakeClock
from tests.ledger.test_store import request

IDLE = ActivityReport(Activity.IDLE)
GAP = timedelta(minutes=5)


def running(ledger: Ledger, catalog: Catalog, count: int = 2) -> int:
    admitted = ledger.admit(catalog, request(count=count, price="8.20"))
    ledger.mark_started(admitted.session, "local:1")
    return admitted.session_id


def idle_days(ledger: Ledger, session: int) -> dict[date, int]:
    with Session(ledger.engine) as db:
        rows = db.scalars(select(IdleGPUDay).where(IdleGPUDay.session_id == session))
        return {r.day: r.gpu_seconds for r in rows}


def test_reports_keep_and_warnings(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> None:
    activity = ActivityLedger(ledger)
    session = running(ledger, catalog)
    start = clock.now
    first = activity.record("ada", "", IDLE, "[]", start, GAP)
    assert first is not None and first.state.gpu_idle_since == start
    second = activity.record("ada", "", IDLE, '[{"uuid": "GPU-1"}]', clock.advance(seconds=40), GAP)
    assert second is not None and second.samples == '[{"uuid": "GPU-1"}]'
    assert second.state.idle_gpu_seconds == 80, "40 s of 2 idle GPUs"
    again = activity.record("ada", "", IDLE, "[]", clock.now, GAP)  # the same report twice
    assert again is not None and again.state == second.state
    assert idle_days(ledger, session) == {clock.now.date(): 80}

    warning = CullWarning("will be stopped in 10 minutes", clock.now + GAP, "culled-gpu-idle")
    activity.warn(session, warning)
    assert activity.records([session])[session].warning == warning
    kept = activity.keep("ada", "", clock.advance(seconds=5))
    assert kept is not None and kept.warning is None and kept.state.kept_at == clock.now
    assert kept.state.idle_gpu_seconds == 80, "keeping changes no waste already recorded"


def test_reports_of_servers_that_do_not_run_are_dropped(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    activity = ActivityLedger(ledger)
    assert activity.record("ada", "", IDLE, "[]", clock.now, GAP) is None, "no session"
    session = running(ledger, catalog)
    ledger.close(session, EndReason.STOPPED)
    assert activity.record("ada", "", IDLE, "[]", clock.advance(seconds=1), GAP) is None
    assert activity.keep("ada", "", clock.now) is None
    assert activity.records([session]) == {}
