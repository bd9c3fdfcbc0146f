"""A measured GPU session in a hub's ledger, for the report API and usage page tests of team
utilisation and right-sizing hints: ben (charged to vision) held one H100 for two hours last
month, at 4.10 an hour; the notebook extension's reports measured all of it, 200 seconds busy,
at most 6 GiB in use. Last month, so that this month's reports of the other tests are as they
were."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UTILIZATION_COLUMNS, SessionGPUUse
from tests.reports.conftest import add_session

from .conftest import Hub

HELD_SECONDS = 7200
BUSY_SECONDS = 200
PEAK_MIB = 6 * 1024


@dataclass(frozen=True)
class Measured:
    since: date
    until: date

    @property
    def period(self) -> str:
        return f"since={self.since}&until={self.until}"


def add_measured_session(hub: Hub) -> Measured:
    """Write ben's session and its GPU use into the hub's ledger; last month's period."""
    until = datetime.now(UTC).date().replace(day=1)
    since = (until - timedelta(days=1)).replace(day=1)
    start = datetime(since.year, since.month, 10, 10, tzinfo=UTC)
    ledger = hub.ledger()
    try:
        session = add_session(ledger.engine, "ben", start, start + timedelta(seconds=HELD_SECONDS))
        histogram = dict.fromkeys(UTILIZATION_COLUMNS, 0)
        histogram[UTILIZATION_COLUMNS[0]] = HELD_SECONDS - BUSY_SECONDS
        histogram[UTILIZATION_COLUMNS[-1]] = BUSY_SECONDS
        with Session(ledger.engine) as db, db.begin():
            db.add(
                SessionGPUUse(
                    session_id=session,
                    day=start.date(),
                    reports=HELD_SECONDS // 10,
                    observed_seconds=HELD_SECONDS,
                    busy_seconds=BUSY_SECONDS,
                    busy_gpu_seconds=BUSY_SECONDS,
                    utilization_unknown=False,
                    peak_memory_mib=PEAK_MIB,
                    memory_total_mib=80 * 1024,
                    peak_gpus_in_use=1,
                    **histogram,
                )
            )
    finally:
        ledger.engine.dispose()
    return Measured(since, until)
