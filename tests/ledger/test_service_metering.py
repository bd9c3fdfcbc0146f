"""The gpuhub service's metering tick on a real ledger database: reconciliation applied tick
after tick, a ledger restored from a backup, and budget stops that fail."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from spawner_ext.catalog import Catalog
from spawner_ext.ledger.models import EndReason, UsageSession
from spawner_ext.ledger.reconcile import RunningServer
from spawner_ext.ledger.store import Ledger, Request, ServerRef
from spawner_ext.service.metering import Listed, enforce_budgets, reconcile_once, strays
from tests.ledger.conftest import FakeClock

TICK = timedelta(seconds=30)


def running(session_id: int | None, started: datetime, ref: str = "local:100") -> RunningServer:
    return RunningServer(
        user="ada",
        server_name="",
        team="vision",
        profile="h100-single",
        gpu_type="h100-80gb",
        gpu_count=1,
        price_per_hour=Decimal("4.1"),
        currency="USD",
        session_id=session_id,
        started_at=started,
        runtime_ref=ref,
    )


def billed(ledger: Ledger, clock: FakeClock) -> int:
    """GPU-seconds of every session, open ones up to now."""
    total = 0
    with ledger._reads() as db:
        for row in db.query(UsageSession):
            if row.ended_at is not None:
                total += row.gpu_seconds or 0
            elif row.started_at is not None:
                total += int((clock() - row.started_at).total_seconds()) * row.gpu_count
    return total


def tick(ledger: Ledger, clock: FakeClock, servers: list[RunningServer]) -> None:
    reconcile_once(ledger, servers, observed_at=clock(), tick=TICK)


def test_a_server_with_an_unknown_session_is_adopted_once(ledger: Ledger, clock: FakeClock) -> None:
    """The ledger was restored from a backup older than the server's session (id 99)."""
    started = clock()
    clock.advance(hours=1)
    server = running(99, started)
    for _ in range(6):
        tick(ledger, clock, [server])
        clock.advance(seconds=30)
    (only,) = ledger.open_sessions()
    assert only.started_at == started and only.runtime_ref == "local:100"
    true_seconds = int((clock() - started).total_seconds())
    assert billed(ledger, clock) == true_seconds, "billed exactly its running time, once"
    # The hub stops it: the adopted session closes with it, by its runtime reference.
    ledger.close_server(ServerRef("ada", "", 99, "local:100"), EndReason.STOPPED)
    assert ledger.open_sessions() == []
    assert billed(ledger, clock) == true_seconds


def test_a_reused_session_id_never_closes_another_users_session(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    bob = ledger.admit(
        catalog,
        Request("bob", "", "vision", "h100-single", "h100-80gb", 1, Decimal("4.1"), "USD", "v"),
    )
    ledger.mark_started(bob.session_id, "local:200")
    ada = running(bob.session_id, clock() - timedelta(minutes=5))  # ada's stale id is bob's
    bobs = RunningServer(**{**ada.__dict__, "user": "bob", "runtime_ref": "local:200"})
    tick(ledger, clock, [ada, bobs])
    assert ledger.close_server(ServerRef("ada", "", bob.session_id, None), EndReason.STOPPED) == []
    row = ledger.session(bob.session_id)
    assert row is not None and row.ended_at is None
    assert len(ledger.open_sessions()) == 2


def test_a_crash_between_start_and_recording_it_is_billed_from_the_servers_start(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    admitted = ledger.admit(
        catalog,
        Request("ada", "", "vision", "h100-single", "h100-80gb", 1, Decimal("4.1"), "USD", "v"),
    )
    started = clock() + timedelta(seconds=20)
    clock.advance(minutes=3)
    tick(ledger, clock, [running(admitted.session_id, started)])
    row = ledger.session(admitted.session_id)
    assert row is not None and row.started_at == started and row.runtime_ref == "local:100"
    # The hub's own late write does not move the start.
    ledger.mark_started(admitted.session_id, "local:100")
    again = ledger.session(admitted.session_id)
    assert again is not None and again.started_at == started


def test_strays_are_servers_the_hub_does_not_list(clock: FakeClock) -> None:
    old = running(1, clock() - timedelta(hours=1), "local:1")
    young = running(2, clock() - timedelta(seconds=5), "local:2")
    listed_elsewhere = running(3, clock() - timedelta(hours=1), "local:3")
    listed = [Listed("ada", "", "local:3")]
    grace = timedelta(minutes=10)
    assert strays([old, young, listed_elsewhere], listed, clock(), grace) == [old]
    starting = [Listed("ada", "", None)]  # the hub starts ada's server and knows no pid yet
    assert strays([old], starting, clock(), grace) == []


async def test_a_budget_stop_that_fails_is_asked_again_and_billed_until_gone(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    # vision: 2000 GPU-hours a month, running servers stopped 2h after the budget is used up.
    clock.now = clock.now.replace(day=1, hour=0)
    big = ledger.admit(
        catalog,
        Request("ada", "", "vision", "h100-quad", "h100-80gb", 4, Decimal("16.4"), "USD", "v"),
    )
    ledger.mark_started(big.session_id, "local:100")
    cpu = ledger.admit(
        catalog, Request("bob", "", "vision", "cpu-small", None, 0, Decimal(0), "USD", "v")
    )
    ledger.mark_started(cpu.session_id, "local:101")
    asked: list[str] = []
    attempts = iter([RuntimeError("the hub does not answer"), None])

    async def stop(session: UsageSession) -> None:
        asked.append(session.user)
        failure = next(attempts)
        if failure is not None:
            raise failure

    clock.advance(hours=500)  # 2000 GPU-hours: over budget from now
    assert await enforce_budgets(ledger, catalog, stop) == []
    clock.advance(hours=2)
    assert await enforce_budgets(ledger, catalog, stop) == [big.session_id]
    row = ledger.session(big.session_id)
    assert row is not None and row.ended_at is None, "open until the server is really gone"
    assert row.stop_reason == "budget"
    clock.advance(seconds=30)
    assert await enforce_budgets(ledger, catalog, stop) == [big.session_id]
    assert asked == ["ada", "ada"], "asked again after the failure; CPU servers are left alone"
    clock.advance(seconds=40)  # the hub's stop completes: its spawner closes the session
    ledger.close_server(ServerRef("ada", "", big.session_id, "local:100"), EndReason.STOPPED)
    row = ledger.session(big.session_id)
    assert row is not None
    assert row.end_reason == "budget"
    assert row.gpu_seconds == 4 * (3600 * 502 + 70)
    still = ledger.session(cpu.session_id)
    assert still is not None and still.ended_at is None
