"""The ledger on a real database (SQLite, and PostgreSQL started by the test setup)."""

from __future__ import annotations

import re
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import AdmissionRefused, RefusalCount, Request
from spawner_ext.ledger.sessions import ServerRef
from spawner_ext.ledger.store import Ledger
from tests.ledger.conftest import FakeClock
from tests.sqlite_backup import sqlite_backup


def request(
    user: str = "ada",
    server: str = "",
    profile: str = "h100-single",
    count: int = 1,
    team: str | None = "vision",
    gpu_type: str | None = "h100-80gb",
    price: str = "4.10",
) -> Request:
    return Request(user, server, team, profile, gpu_type, count, Decimal(price), "USD", "abc")


def test_session_billing(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> None:
    admitted = ledger.admit(catalog, request(count=2, price="8.20"))
    clock.advance(seconds=30)  # pod scheduling and image pull are not billed
    ledger.mark_started(admitted.session, "gpuhub-vision/jupyter-ada")
    clock.advance(hours=1, seconds=15)
    ledger.close(admitted.session_id, EndReason.STOPPED)
    ledger.close(admitted.session_id, EndReason.CULLED_IDLE)  # idempotent
    row = ledger.session(admitted.session_id)
    assert row is not None
    assert row.gpu_seconds == 2 * 3615
    assert row.cost == Decimal("8.234167")
    assert row.end_reason == "stopped"
    assert row.started_at is not None
    assert row.started_at.tzinfo is not None
    assert row.requested_at.utcoffset() is not None


def test_failed_spawn_costs_nothing(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> None:
    admitted = ledger.admit(catalog, request())
    clock.advance(minutes=5)
    ledger.close(admitted.session_id, EndReason.FAILED)
    row = ledger.session(admitted.session_id)
    assert row is not None
    assert (row.gpu_seconds, row.cost) == (0, Decimal(0))


def test_quota_refusal_names_holders(ledger: Ledger, catalog: Catalog) -> None:
    for user in ("ada", "bob", "cy", "dee"):
        ledger.admit(catalog, request(user=user, count=2))
    with pytest.raises(AdmissionRefused) as info:
        ledger.admit(catalog, request(user="eve", count=1))
    message = info.value.decision.message
    assert "holds 8 (ada: 2, bob: 2, cy: 2, dee: 2); 0 free" in message


async def test_usage_and_price_snapshot(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> None:
    first = ledger.admit(catalog, request(price="4.10"))
    ledger.mark_started(first.session)
    clock.advance(hours=1)
    # The admin raises the price mid-session: the running session keeps its price.
    second = ledger.admit(catalog, request(user="bob", price="5.00"))
    ledger.mark_started(second.session)
    clock.advance(hours=1)
    usage = ledger.team_usage(catalog, "vision", "ada")
    assert usage.gpus_in_use == {"h100-80gb": 2}
    assert usage.user_gpus_in_use == 1
    assert usage.gpu_hours_this_month == Decimal("3.000")
    ledger.close(first.session_id, EndReason.STOPPED)
    row = ledger.session(first.session_id)
    assert row is not None
    assert row.cost == Decimal("8.200000")


def test_budget_blocks_new_gpu_servers(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> None:
    # teaching: 300 GPU-hours a month, 14 MIG slices, 1 GPU per user.
    sessions = []
    for n in range(10):
        s = ledger.admit(
            catalog,
            request(
                user=f"s{n}",
                team="teaching",
                profile="mig-slice",
                gpu_type="a100-1g10gb",
                price="0.30",
            ),
        )
        ledger.mark_started(s.session)
        sessions.append(s.session_id)
    clock.advance(hours=30)
    for sid in sessions:
        ledger.close(sid, EndReason.STOPPED)
    with pytest.raises(AdmissionRefused) as info:
        ledger.admit(
            catalog,
            request(
                user="s1",
                team="teaching",
                profile="mig-slice",
                gpu_type="a100-1g10gb",
                price="0.30",
            ),
        )
    assert info.value.decision.reason == "budget"
    assert "2026-12-01" in info.value.decision.message
    # A CPU server is still admitted, and in December the budget is fresh.
    ledger.admit(
        catalog,
        request(user="s2", team="teaching", profile="cpu-small", gpu_type=None, count=0, price="0"),
    )
    clock.now = clock.now.replace(month=12, day=1, hour=0, minute=0)
    ledger.admit(
        catalog,
        request(
            user="s3", team="teaching", profile="mig-slice", gpu_type="a100-1g10gb", price="0.30"
        ),
    )


def test_starting_a_server_again_closes_its_stale_session(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    old = ledger.admit(catalog, request())
    ledger.mark_started(old.session)
    clock.advance(minutes=10)
    ledger.seen([old.session_id])
    clock.advance(minutes=10)
    ledger.admit(catalog, request())
    row = ledger.session(old.session_id)
    assert row is not None
    assert row.end_reason == "reconciled"
    assert row.gpu_seconds == 600


@pytest.mark.parametrize("contenders", [12])
def test_simultaneous_admissions_for_the_last_gpu_admit_exactly_one(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock, contenders: int
) -> None:
    for user in ("a", "b", "c"):
        ledger.admit(catalog, request(user=user, count=2, profile="h100-single"))
    ledger.admit(catalog, request(user="d", count=1))  # 7 of 8 H100 held: one left
    barrier = threading.Barrier(contenders)
    results: list[str] = []
    lock = threading.Lock()

    def contend(n: int) -> None:
        own = Ledger.open(db_url, clock=clock)  # own engine and connections, like another hub
        try:
            barrier.wait()
            try:
                own.admit(catalog, request(user=f"u{n}"))
                outcome = "admitted"
            except AdmissionRefused as exc:
                outcome = exc.decision.reason or "?"
            with lock:
                results.append(outcome)
        finally:
            own.engine.dispose()

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["admitted"] + ["gpu-quota"] * (contenders - 1)
    open_h100 = sum(s.gpu_count for s in ledger.open_sessions() if s.gpu_type == "h100-80gb")
    assert open_h100 == 8


def test_a_server_found_gone_is_billed_until_last_seen(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    admitted = ledger.admit(catalog, request())
    ledger.mark_started(admitted.session)
    clock.advance(minutes=20)
    ledger.seen([admitted.session_id])
    clock.advance(hours=3)  # e.g. the hub was down while the server died
    ref = ServerRef("ada", "", admitted.session, None)
    assert ledger.close_server(ref, EndReason.NODE_LOST, found_gone=True) == [admitted.session_id]
    row = ledger.session(admitted.session_id)
    assert row is not None
    assert (row.end_reason, row.gpu_seconds) == ("node-lost", 1200)


async def test_reads_do_not_wait_for_a_writer_on_sqlite(
    db_url: str, ledger: Ledger, catalog: Catalog
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL readers never wait for writers")

    writer = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.1)
    writer.isolation_level = None
    writer.execute("BEGIN IMMEDIATE")  # another hub in the middle of an admission
    try:
        usage = ledger.team_usage(catalog, "vision", "ada")
        assert usage.gpus_in_use == {}
        assert ledger.open_sessions() == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_refusals_are_counted_per_team_gpu_type_and_reason(
    ledger: Ledger, clock: FakeClock
) -> None:
    assert ledger.refusal_counts() == []
    first = clock.now
    ledger.count_refusal("vision", "h100-80gb", "gpu-quota", first)
    ledger.count_refusal("vision", "h100-80gb", "gpu-quota", clock.advance(seconds=5))
    ledger.count_refusal("vision", "h100-80gb", "budget", clock.now)
    ledger.count_refusal("nlp", "l4-24gb", "billing-unavailable", clock.now)
    assert ledger.refusal_counts() == [
        RefusalCount("nlp", "l4-24gb", "billing-unavailable", 1),
        RefusalCount("vision", "h100-80gb", "budget", 1),
        RefusalCount("vision", "h100-80gb", "gpu-quota", 2),
    ]


def test_messages_never_show_a_database_password() -> None:
    from sqlalchemy import create_engine

    from spawner_ext.ledger.engine import SchemaError, check_schema, redacted

    url = "postgresql+psycopg://gpuhub:s3cret@db.example:5432/gpuhub"
    assert redacted(url) == "postgresql+psycopg://gpuhub:***@db.example:5432/gpuhub"
    assert redacted("sqlite:///ledger.sqlite") == "sqlite:///ledger.sqlite"
    assert redacted("not a url") == "not a url"
    with pytest.raises(SchemaError) as raised:
        check_schema(create_engine("sqlite://"), url)
    assert "s3cret" not in str(raised.value) and "gpuhub:***@db.example" in str(raised.value)


def test_session_keys_never_repeat_after_a_restore_from_a_backup(
    ledger: Ledger, catalog: Catalog, tmp_path: Path
) -> None:
    """Integer ids are handed out again after a restore (SQLite here: `.backup` and
    `.restore`, the online backup the docs give; a `cp` of a file in write-ahead-log mode
    misses what its -wal file holds); the keys that servers carry are not, so no server names
    another's session."""
    if ledger.engine.dialect.name != "sqlite":
        pytest.skip("restores the SQLite file")
    live = Path(str(ledger.engine.url.database))
    first = ledger.admit(catalog, request("ada"))
    backup = tmp_path / "backup.sqlite"
    sqlite_backup(live, backup)
    lost = ledger.admit(catalog, request("bob"))  # begins after the backup: lost by the restore
    ledger.engine.dispose()
    sqlite_backup(backup, live)
    again = ledger.admit(catalog, request("cy"))
    assert again.session_id == lost.session_id, "the integer id is handed out again"
    assert again.session != lost.session
    assert len({first.session, lost.session, again.session}) == 3
    assert re.fullmatch(r"[0-9a-f]{32}", again.session)


def test_a_session_is_found_by_its_key_only_for_its_own_server(
    ledger: Ledger, catalog: Catalog
) -> None:
    admitted = ledger.admit(catalog, request("ada"))
    found = ledger.session_of("ada", "", admitted.session)
    assert found is not None and found.id == admitted.session_id
    assert ledger.session_of("bob", "", admitted.session) is None
    assert ledger.session_of("ada", "other", admitted.session) is None


def test_installs_sharing_a_ledger_each_mind_their_own_sessions(
    ledger: Ledger, catalog: Catalog
) -> None:
    """Two hubs on one database, each with a server ada/'' of its own, and a session from a
    hub of before installs: neither closes, reads nor budget-stops the other's."""
    prod = Ledger(ledger.engine, clock=ledger.clock, install="prod")
    staging = Ledger(ledger.engine, clock=ledger.clock, install="staging")
    older = ledger.admit(catalog, request("bob"))  # no install: every install's
    ours = prod.admit(catalog, request("ada"))
    theirs = staging.admit(catalog, request("ada"))  # would close prod's as stale if shared
    assert {s.uid for s in prod.open_sessions()} == {ours.session, older.session}
    assert {s.uid for s in staging.open_sessions()} == {theirs.session, older.session}
    assert {s.uid for s in staging.open_gpu_sessions("vision")} == {theirs.session, older.session}
    prod.mark_started(ours.session, "local:1")
    staging.mark_started(theirs.session, "local:1")  # same pid on another machine
    assert prod.open_session_of("ada", "") is not None
    closed = staging.close_server(ServerRef("ada", "", None, "local:1"), EndReason.STOPPED)
    assert closed == [theirs.session_id], "the same runtime reference in another install"
    assert {s.uid for s in prod.open_sessions()} == {ours.session, older.session}
    row = prod.session_of("ada", "", ours.session)
    assert row is not None and row.install == "prod" and row.ended_at is None
    assert len(ledger.open_sessions()) == 2, "a handle of no install reads every session"


def test_a_session_from_before_installs_becomes_the_install_that_runs_it(
    ledger: Ledger, catalog: Catalog
) -> None:
    """Its server is seen by one install's service (its key, or its runtime reference): from
    then on no other install sharing the database reads it as its own."""
    older = ledger.admit(catalog, request("bob"))  # no install
    ledger.mark_started(older.session, "ns/jupyter-bob")
    byref = ledger.admit(catalog, request("cy"))
    ledger.mark_started(byref.session, "ns/jupyter-cy")
    prod = Ledger(ledger.engine, clock=ledger.clock, install="prod")
    staging = Ledger(ledger.engine, clock=ledger.clock, install="staging")
    assert prod.claim([older.session], ["ns/jupyter-cy"]) == 2
    assert prod.claim([older.session], ["ns/jupyter-cy"]) == 0, "once"
    assert staging.open_sessions() == []
    assert {s.uid for s in prod.open_sessions()} == {older.session, byref.session}
