"""The billing database (a real PostgreSQL) down for a minute under a real hub: GPU spawns fail
closed with a message that says billing is unavailable, running servers are not stopped, and
nothing is lost once it is back (a stop during the outage is billed until it happened, a CPU
server started meanwhile is adopted)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from tests.postgres import PostgresServer, start_server

from .conftest import Hub, _alive, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
TICK = 2
OUTAGE = 60  # seconds


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A server of this module's own: the test stops it."""
    yield from start_server()


@pytest.fixture(scope="module")
def hub(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    url = pg.create_database("outage_" + uuid.uuid4().hex[:8])
    workdir = tmp_path_factory.mktemp("outage")
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    (workdir / "catalog.yaml").write_text(
        text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    )
    hub = Hub(
        workdir,
        "2xh100-80gb",
        "--config",
        str(workdir / "catalog.yaml"),
        "--db-url",
        url,
    )
    hub.db_url = url  # type: ignore[attr-defined]
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


def sessions(url: str, user: str) -> list[UsageSession]:
    ledger = Ledger.open(url)
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession).where(UsageSession.user == user)
            return list(db.scalars(query.order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()


@pytest.mark.integration
@pytest.mark.postgres
def test_a_billing_outage_fails_gpu_spawns_closed_and_loses_nothing(
    hub: Hub, pg: PostgresServer
) -> None:
    url: str = hub.db_url  # type: ignore[attr-defined]
    ada = hub.start_server("ada", {"profile": "h100-single"})
    ada_pid = int(ada["state"]["pid"])
    pg.stop()
    down = time.monotonic()
    try:
        refused = hub.spawn("grace", {"profile": "h100-single"})
        assert refused.status_code == 503, refused.text
        message = refused.json()["message"]
        assert "Billing is unavailable" in message and "running servers are not affected" in message
        assert hub.user("grace")["servers"] == {}, "nothing started"
        lin = hub.start_server("lin", {"profile": "cpu-small", "team": "vision"})  # unmetered
        asked = time.time()
        hub.stop_server("ada")  # its end is recorded once the database is back
        stopped = time.time()
        assert not _alive(ada_pid)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        assert hub.user("lin")["servers"][""]["ready"], "running servers are not stopped"
    finally:
        pg.start()
    (ada_session,) = wait_for(
        "ada's stop to be recorded",
        # The service's first tick may close it at its last-seen time before the hub's
        # waiting write lands; that write then corrects the end to the stop.
        lambda: [s for s in sessions(url, "ada") if s.end_reason == "stopped"],
        60,
        0.5,
    )
    assert ada_session.ended_at is not None
    assert asked <= ada_session.ended_at.timestamp() <= stopped, "billed until it stopped"
    adopted = wait_for(
        "lin's unmetered server to be adopted",
        lambda: [s for s in sessions(url, "lin") if s.ended_at is None],
        60,
        0.5,
    )
    assert adopted[0].runtime_ref == f"local:{lin['state']['pid']}"
    ledger = Ledger.open(url)
    try:  # the refusal during the outage was counted once the database was back
        counted = [(c.team, c.reason, c.refusals) for c in ledger.refusal_counts()]
    finally:
        ledger.engine.dispose()
    assert counted == [("nlp", "billing-unavailable", 1)]
    hub.start_server("grace", {"profile": "h100-single"})  # GPU spawns work again
    hub.stop_server("grace")
    hub.stop_server("lin")
    (grace_session,) = sessions(url, "grace")
    assert grace_session.end_reason == "stopped" and (grace_session.gpu_seconds or 0) > 0
