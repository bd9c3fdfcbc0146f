"""A borrowed, reclaimed GPU session in a hub's ledger, for the report API and usage page tests
of borrowing: kim (charged to vision) ran one H100 on nlp's quota for three hours on the 12th of
last month, and it was reclaimed. Written into the ledger directly (the example catalog lends
nothing; the reports read only the ledger). Last month, so that this month's reports of the
other tests are as they were."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from spawner_ext.ledger.models import SessionLoan, UsageSession
from tests.reports.conftest import add_session

from .conftest import Hub
from .measured import Measured

BORROWED_HOURS = 3


def add_borrowed_session(hub: Hub) -> Measured:
    """Write kim's session and its loan into the hub's ledger; last month's period."""
    until = datetime.now(UTC).date().replace(day=1)
    since = (until - timedelta(days=1)).replace(day=1)
    start = datetime(since.year, since.month, 12, 10, tzinfo=UTC)
    ledger = hub.ledger()
    try:
        engine = ledger.engine
        end = start + timedelta(hours=BORROWED_HOURS)
        kim = add_session(engine, "kim", start, end, reason="reclaimed")
        with Session(engine) as db, db.begin():
            session = db.get(UsageSession, kim)
            assert session is not None
            session.borrowed = True
            db.add(SessionLoan(session_id=kim, lender="nlp", gpus=1))
    finally:
        ledger.engine.dispose()
    return Measured(since, until)
