"""The gpuhub service's metering tick on a real ledger database: reconciliation applied tick
after tick, a ledger restored from a backup, and budget stops that fail."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal

from spawner_ext.catalog import Catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import Admission, Request
from spawner_ext.ledger.models import TeamMonthUsage, UsageSession
from spawner_ext.ledger.reconcile import RunningServer
from spawner_ext.ledger.sessions import ServerRef
from spawner_ext.ledger.store import Ledger
from spawner_ext.service.culler import Culler
from spawner_ext.service.hubapi import HubAPIError, HubServer
from spawner_ext.service.metering import Listed, enforce_budgets, reconcile_once, strays
from tests.ledger.conftest import FakeClock

TICK = timedelta(seconds=30)


def running(session: str | None, started: datetime, ref: str = "local:100") -> RunningServer:
    return RunningServer(
        user="ada",
        server_name="",
        team="vision",
        profile="h100-single",
        gpu_type="h100-80gb",
        gpu_count=1,
        price_per_hour=Decimal("4.1"),
        currency="USD",
        session=session,
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
    server = running("99", started)
    for _ in range(6):
        tick(ledger, clock, [server])
        clock.advance(seconds=30)
    (only,) = ledger.open_sessions()
    assert only.started_at == started and only.runtime_ref == "local:100"
    true_seconds = int((clock() - started).total_seconds())
    assert billed(ledger, clock) == true_seconds, "billed exactly its running time, once"
    # The hub stops it: the adopted session closes with it, by its runtime reference.
    ledger.close_server(ServerRef("ada", "", "99", "local:100"), EndReason.STOPPED)
    assert ledger.open_sessions() == []
    assert billed(ledger, clock) == true_seconds


def test_a_reused_session_id_never_closes_another_users_session(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    bob = ledger.admit(
        catalog,
        Request("bob", "", "vision", "h100-single", "h100-80gb", 1, Decimal("4.1"), "USD", "v"),
    )
    ledger.mark_started(bob.session, "local:200")
    ada = running(bob.session, clock() - timedelta(minutes=5))  # ada's stale id is bob's
    bobs = RunningServer(**{**ada.__dict__, "user": "bob", "runtime_ref": "local:200"})
    tick(ledger, clock, [ada, bobs])
    assert ledger.close_server(ServerRef("ada", "", bob.session, None), EndReason.STOPPED) == []
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
    tick(ledger, clock, [running(admitted.session, started)])
    row = ledger.session(admitted.session_id)
    assert row is not None and row.started_at == started and row.runtime_ref == "local:100"
    # The hub's own late write does not move the start.
    ledger.mark_started(admitted.session, "local:100")
    again = ledger.session(admitted.session_id)
    assert again is not None and again.started_at == started


def test_strays_are_servers_the_hub_does_not_list(clock: FakeClock) -> None:
    old = running("1", clock() - timedelta(hours=1), "local:1")
    young = running("2", clock() - timedelta(seconds=5), "local:2")
    listed_elsewhere = running("3", clock() - timedelta(hours=1), "local:3")
    listed = [Listed("ada", "", "local:3")]
    grace = timedelta(minutes=10)
    assert strays([old, young, listed_elsewhere], listed, clock(), grace) == [old]
    starting = [Listed("ada", "", None)]  # the hub starts ada's server and knows no pid yet
    assert strays([old], starting, clock(), grace) == []


def quad_started_on_the_first(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> Admission:
    """ada's four H100s (vision) start at midnight on the 1st of the month."""
    clock.now = clock.now.replace(day=1, hour=0)
    big = ledger.admit(
        catalog,
        Request("ada", "", "vision", "h100-quad", "h100-80gb", 4, Decimal("16.4"), "USD", "v"),
    )
    ledger.mark_started(big.session, "local:100")
    return big


async def test_a_budget_stop_that_fails_is_asked_again_and_billed_until_gone(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    # vision: 2000 GPU-hours a month, running servers stopped 2h after the budget is used up.
    big = quad_started_on_the_first(ledger, catalog, clock)
    cpu = ledger.admit(
        catalog, Request("bob", "", "vision", "cpu-small", None, 0, Decimal(0), "USD", "v")
    )
    ledger.mark_started(cpu.session, "local:101")
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
    ledger.close_server(ServerRef("ada", "", big.session, "local:100"), EndReason.STOPPED)
    row = ledger.session(big.session_id)
    assert row is not None
    assert row.end_reason == "budget"
    assert row.gpu_seconds == 4 * (3600 * 502 + 70)
    still = ledger.session(cpu.session_id)
    assert still is not None and still.ended_at is None


def month_total(ledger: Ledger) -> int:
    with ledger._reads() as db:
        return sum(row.gpu_seconds for row in db.query(TeamMonthUsage))


def stop_during_an_outage(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, *, service_first: bool
) -> UsageSession:
    """ada's server is seen at a tick, then the billing database goes down; the hub stops her
    server 8 s later and keeps that write until the database is back, 60 s on. Then the hub's
    write and the service's next tick race."""
    admitted = ledger.admit(catalog, Request("ada", "", "vision", *H100, "v"))
    started = clock()
    ledger.mark_started(admitted.session, "local:100")
    clock.advance(minutes=5)
    tick(ledger, clock, [running(admitted.session, started)])
    stopped_at = clock.advance(seconds=8)
    ref = ServerRef("ada", "", admitted.session, "local:100")
    clock.advance(seconds=60)
    if service_first:
        tick(ledger, clock, [])  # gone and no longer listed: closed at its last-seen time
    for closed in ([admitted.session_id], []):  # the second time: idempotent
        # as the hub writes a stop record that waited out the outage
        late = ledger.close_server(ref, EndReason.STOPPED, at=stopped_at, correct_earlier_end=True)
        assert late == closed
    tick(ledger, clock, [])
    row = ledger.session(admitted.session_id)
    assert row is not None
    return row


H100 = ("h100-single", "h100-80gb", 1, Decimal("4.1"), "USD")


def test_a_stop_recorded_late_bills_until_the_stop_whoever_writes_first(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """The hub's record of a stop is exact; reconciliation's last-seen time only a lower bound.
    The same end, reason and monthly totals whichever comes first (tests/integration/
    test_billing_outage.py races them for real)."""
    hub_first = stop_during_an_outage(ledger, catalog, clock, service_first=False)
    service_first = stop_during_an_outage(ledger, catalog, clock, service_first=True)
    for row in (hub_first, service_first):
        assert (row.end_reason, row.gpu_seconds) == ("stopped", 5 * 60 + 8)
        assert row.cost == Decimal("0.350778")  # 4.10 an hour, 308 s
    assert month_total(ledger) == 2 * 308, "the monthly totals count each second once"


def test_a_late_stop_never_bills_into_the_servers_next_session(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """The service closed the session at its last-seen time; meanwhile the server was admitted
    again (a new session) before the hub's late stop record arrived."""
    first = ledger.admit(catalog, Request("ada", "", "vision", *H100, "v"))
    started = clock()
    ledger.mark_started(first.session, "local:100")
    clock.advance(minutes=1)
    tick(ledger, clock, [running(first.session, started)])
    clock.advance(seconds=40)
    tick(ledger, clock, [])  # closed at 60 s
    admitted_again = clock.advance(seconds=2)
    second = ledger.admit(catalog, Request("ada", "", "vision", *H100, "v"))
    ledger.mark_started(second.session, "local:200", at=clock.advance(seconds=5))
    late = clock.advance(seconds=30)
    ref = ServerRef("ada", "", first.session, "local:100")
    closed = ledger.close_server(ref, EndReason.STOPPED, at=late, correct_earlier_end=True)
    assert closed == [first.session_id]
    row = ledger.session(first.session_id)
    assert row is not None and row.ended_at == admitted_again, "corrected up to the next one"
    assert (row.gpu_seconds, month_total(ledger)) == (102, 102)


def closed_by_reconciliation(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, *, unseen: timedelta
) -> Admission:
    """ada's server runs a minute, seen by a tick; a tick `unseen` later finds it gone and
    closes its session at 60 s. Its admission."""
    admitted = ledger.admit(catalog, Request("ada", "", "vision", *H100, "v"))
    started = clock()
    ledger.mark_started(admitted.session, "local:100")
    clock.advance(minutes=1)
    tick(ledger, clock, [running(admitted.session, started)])
    clock.advance(seconds=unseen.total_seconds())
    tick(ledger, clock, [])
    return admitted


def test_only_a_stop_written_late_corrects_an_earlier_end(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """A stop written at once, after the service closed the session (a pod of the same name
    may be running again by then: the hub's belief is not evidence enough), changes nothing."""
    admitted = closed_by_reconciliation(ledger, catalog, clock, unseen=timedelta(seconds=40))
    ref = ServerRef("ada", "", admitted.session, "local:100")
    assert ledger.close_server(ref, EndReason.STOPPED, at=clock.advance(seconds=10)) == []
    row = ledger.session(admitted.session_id)
    assert row is not None and (row.end_reason, row.gpu_seconds) == ("node-lost", 60)


def test_a_server_found_gone_never_moves_an_earlier_end(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """The hub's poll finds a server gone that reconciliation already closed: the hub does not
    know when it died, so reconciliation's end stands."""
    admitted = closed_by_reconciliation(ledger, catalog, clock, unseen=timedelta(minutes=5))
    ref = ServerRef("ada", "", admitted.session, "local:100")
    assert (
        ledger.close_server(ref, EndReason.STOPPED, found_gone=True, correct_earlier_end=True) == []
    )
    row = ledger.session(admitted.session_id)
    assert row is not None and (row.end_reason, row.gpu_seconds) == ("node-lost", 60)


def test_an_orphan_whose_adopted_session_is_closed_again_is_billed_once(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """The hub was killed after starting ada's server and before recording it: the server runs
    as an orphan that names its first session, which reconciliation closed. The user asks for
    the server again and again meanwhile; each admission closes the adopted session (the old
    server cannot still run, the hub thinks), and the orphan is adopted again. However often that
    happens, the orphan's life is billed once, in sessions that do not overlap (seen in CI)."""
    first = ledger.admit(
        catalog,
        Request("ada", "", "vision", "h100-single", "h100-80gb", 1, Decimal("4.1"), "USD", "v"),
    )
    started = clock()
    ledger.mark_started(first.session, "local:100", at=started)
    orphan = running(first.session, started)
    clock.advance(seconds=30)
    tick(ledger, clock, [orphan])
    ledger.close(first.session_id, EndReason.RECONCILED, clock())  # its hub's new life closed it
    for _ in range(4):
        clock.advance(seconds=30)
        tick(ledger, clock, [orphan])  # adopted
        clock.advance(seconds=30)
        tick(ledger, clock, [orphan])  # seen
        again = ledger.admit(
            catalog,
            Request("ada", "", "vision", "h100-single", "h100-80gb", 1, Decimal("4.1"), "USD", "v"),
        )
        ledger.close(again.session_id, EndReason.FAILED, clock())  # that spawn failed
    clock.advance(seconds=30)
    tick(ledger, clock, [orphan])
    with ledger._reads() as db:
        lives = sorted(
            (row.started_at, row.ended_at or clock())
            for row in db.query(UsageSession)
            if row.started_at is not None
        )
    for (_, end), (start, _) in itertools.pairwise(lives):
        assert end <= start, f"billed twice: {lives}"
    assert billed(ledger, clock) == int((clock() - started).total_seconds())


class FlakyHub:
    """The hub as the culler sees it: one running server, whose stops fail while `failing`."""

    def __init__(self, last_activity: datetime) -> None:
        self.last_activity = last_activity
        self.failing = True
        self.stops: list[str] = []

    async def running_servers(self) -> list[HubServer]:
        active = self.last_activity.isoformat()
        return [HubServer("ada", "", True, None, {}, active, active)]

    async def stop_server(self, user: str, name: str) -> None:
        self.stops.append(user)
        if self.failing:
            raise HubAPIError("the hub does not answer")


async def test_a_cull_whose_stop_failed_then_kept_then_stopped_by_its_user_ends_as_stopped(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """Breaking `record_decision`'s withdrawal made this end as culled-idle."""
    admitted = ledger.admit(catalog, Request("ada", "", "vision", *H100, "v"))
    ledger.mark_started(admitted.session, "local:100")
    hub = FlakyHub(last_activity=clock())
    culler = Culler(hub, ledger)  # type: ignore[arg-type]
    clock.advance(hours=1, seconds=5)  # idle_timeout 1h is over
    await culler.cycle(catalog, clock())
    assert hub.stops == ["ada"], "asked to stop, and the hub failed"
    row = ledger.session(admitted.session_id)
    assert row is not None and row.stop_reason == "culled-idle" and row.ended_at is None
    clock.advance(seconds=20)
    assert culler.activity.keep("ada", "", clock()) is not None  # Keep in JupyterLab
    await culler.cycle(catalog, clock())
    assert hub.stops == ["ada"], "kept: not asked again"
    row = ledger.session(admitted.session_id)
    assert row is not None and row.stop_reason is None, "the abandoned request is withdrawn"
    clock.advance(minutes=5)  # ada stops her server herself
    ledger.close_server(ServerRef("ada", "", admitted.session, "local:100"), EndReason.STOPPED)
    row = ledger.session(admitted.session_id)
    assert row is not None and row.end_reason == "stopped"
    assert row.gpu_seconds == 3600 + 5 + 20 + 300


async def test_a_budget_stop_withdrawn_when_the_budget_is_raised_ends_as_stopped(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """Breaking `withdraw_budget_stops` (not called) made this end as budget."""
    big = quad_started_on_the_first(ledger, catalog, clock)

    async def failing_stop(session: UsageSession) -> None:
        raise RuntimeError("the hub does not answer")

    clock.advance(hours=500)  # 2000 GPU-hours: over budget from now
    assert await enforce_budgets(ledger, catalog, failing_stop) == []
    clock.advance(hours=2)  # the grace period is over
    assert await enforce_budgets(ledger, catalog, failing_stop) == [big.session_id]
    row = ledger.session(big.session_id)
    assert row is not None and row.stop_reason == "budget"
    vision = catalog.teams["vision"]
    raised_quota = vision.quota.model_copy(update={"monthly_gpu_hours": Decimal(5000)})
    teams = {**catalog.teams, "vision": vision.model_copy(update={"quota": raised_quota})}
    raised = catalog.model_copy(update={"teams": teams})
    clock.advance(seconds=30)
    assert await enforce_budgets(ledger, raised, failing_stop) == []
    row = ledger.session(big.session_id)
    assert row is not None and row.stop_reason is None
    clock.advance(seconds=30)
    ledger.close_server(ServerRef("ada", "", big.session, "local:100"), EndReason.STOPPED)
    row = ledger.session(big.session_id)
    assert row is not None and row.end_reason == "stopped"
    assert row.gpu_seconds == 4 * (3600 * 502 + 60)
