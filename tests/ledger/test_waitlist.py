"""The wait-list in the ledger, on SQLite and PostgreSQL: joining, turns and holds, what a hold
lets through admission and what it keeps out, cancel, expiry, and the races between services,
direct spawns and cancels (threads with their own engines, like separate processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from spawner_ext.catalog import Catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import AdmissionRefused, Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.outbox import Outbox
from spawner_ext.ledger.store import Ledger
from spawner_ext.ledger.waitlist import (
    AlreadyWaiting,
    JoinRequest,
    NotWaitable,
    UnknownRequest,
)
from tests.ledger.conftest import FakeClock
from tests.ledger.conftest import race as race_of

INSTALL = "local"


@pytest.fixture
def ledger(db_url: str, clock: FakeClock) -> Iterator[Ledger]:
    upgrade(db_url)
    opened = Ledger.open(db_url, clock=clock, install=INSTALL)
    yield opened
    opened.engine.dispose()


def spawn(
    user: str,
    server: str = "",
    *,
    count: int = 1,
    team: str = "vision",
    gpu_type: str = "h100-80gb",
    waitlist: str | None = None,
) -> Request:
    profile = {1: "h100-single", 4: "h100-quad"}.get(count, "h100-single")
    price = Decimal("4.10") * count
    return Request(
        user, server, team, profile, gpu_type, count, price, "USD", "abc", waitlist=waitlist
    )


def join(
    user: str, server: str = "", *, count: int = 1, team: str = "vision", start: str = "ask"
) -> JoinRequest:
    profile = {1: "h100-single", 4: "h100-quad"}[count]
    return JoinRequest(
        user=user,
        server_name=server,
        team=team,
        profile=profile,
        gpu_type="h100-80gb",
        gpu_count=count,
        options={"profile": profile, "team": team},
        start=start,
    )


def held_gpus(ledger: Ledger) -> int:
    """H100s taken, counted independently of the line's own arithmetic: open sessions plus
    holds, read from their tables."""
    sessions = sum(s.gpu_count for s in ledger.open_sessions() if s.gpu_type == "h100-80gb")
    return sessions + sum(h.gpu_count for h in ledger.holds() if h.gpu_type == "h100-80gb")


def fill(ledger: Ledger, catalog: Catalog, capacity: int = 2) -> list[int]:
    """A machine of `capacity` H100s, all running servers of nlp users."""
    ledger.set_capacity("h100-80gb", capacity)
    return [ledger.admit(catalog, spawn(f"n{i}", team="nlp")).session_id for i in range(capacity)]


def test_no_free_gpu_refuses_a_direct_spawn_and_the_line_takes_it(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    sessions = fill(ledger, catalog)
    with pytest.raises(AdmissionRefused) as refused:
        ledger.admit(catalog, spawn("ada"))
    assert refused.value.decision.reason == "no-free-gpu"
    assert "2 in all, 0 free, held by n0/ (1), n1/ (1)." in refused.value.decision.message

    ada = ledger.join(catalog, join("ada"))
    assert (ada.state, ada.position, ada.estimated_start) == ("waiting", 1, None)
    # the place worked out after the join's transaction is stored, not only answered
    assert ledger.get(catalog, ada.id).position == 1  # type: ignore[union-attr]
    ledger.serve(catalog)  # the service's next pass works the whole line out
    placed = ledger.get(catalog, ada.id)
    assert placed is not None and placed.position == 1
    assert placed.estimated_start is not None and placed.estimated_start > clock.now
    clock.advance(seconds=1)
    lin = ledger.join(catalog, join("lin"))
    assert (lin.state, lin.position) == ("waiting", 2)

    clock.advance(minutes=5)
    ledger.close(sessions[0], EndReason.STOPPED)
    result = ledger.serve(catalog)
    assert [r.id for r in result.given] == [ada.id]
    assert ledger.get(catalog, ada.id).state == "held"  # type: ignore[union-attr]
    assert held_gpus(ledger) == 2

    # Nobody else takes the held GPU: not lin (second in line), not a direct spawn.
    for user in ("lin", "grace"):
        with pytest.raises(AdmissionRefused) as refused:
            ledger.admit(catalog, spawn(user, team="nlp" if user == "grace" else "vision"))
        assert refused.value.decision.reason == "no-free-gpu"
    # The holder's own spawn uses the hold up.
    admitted = ledger.admit(catalog, spawn("ada"))
    after = ledger.get(catalog, ada.id)
    assert after is not None and after.state == "starting" and after.session == admitted.session
    assert ledger.holds() == []
    assert held_gpus(ledger) == 2
    ledger.mark_started(admitted.session, "local:1")
    ledger.serve(catalog)
    assert ledger.get(catalog, ada.id).state == "started"  # type: ignore[union-attr]
    assert ledger.get(catalog, lin.id).position == 1  # type: ignore[union-attr]


def test_a_free_gpu_gives_the_turn_at_once_and_auto_asks_for_a_start(
    ledger: Ledger, catalog: Catalog
) -> None:
    ledger.set_capacity("h100-80gb", 1)
    ada = ledger.join(catalog, join("ada", start="auto"))
    assert ada.state == "starting" and ada.position is None
    assert [r.id for r in ledger.serve(catalog).to_start] == [ada.id]
    # the service's start names the request; someone else's spawn is refused meanwhile
    with pytest.raises(AdmissionRefused):
        ledger.admit(catalog, spawn("lin"))
    ledger.admit(catalog, spawn("ada", waitlist=ada.id))
    assert ledger.serve(catalog).to_start == []


def test_waiting_cannot_cure_a_spent_budget_or_the_users_cap(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    fill(ledger, catalog)
    for n in range(4):  # ada holds her 4 GPUs (gpus_per_user: 4) of another type
        ledger.admit(catalog, spawn("ada", f"s{n}", gpu_type="a100-40gb"))
    with pytest.raises(NotWaitable) as refused:
        ledger.join(catalog, join("ada"))
    assert refused.value.reason == "user-cap"
    assert ledger.requests(catalog, user="ada") == []


def test_one_live_request_per_server_and_none_for_a_running_one(
    ledger: Ledger, catalog: Catalog
) -> None:
    fill(ledger, catalog)
    ledger.join(catalog, join("ada"))
    with pytest.raises(AlreadyWaiting):
        ledger.join(catalog, join("ada"))
    ledger.join(catalog, join("ada", "other"))  # another named server may wait too
    with pytest.raises(AlreadyWaiting):
        ledger.join(catalog, join("n0", team="nlp"))  # n0's default server runs


def test_cancel_is_final_repeatable_and_passes_the_hold_on(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    sessions = fill(ledger, catalog)
    ada = ledger.join(catalog, join("ada"))
    clock.advance(seconds=1)
    lin = ledger.join(catalog, join("lin"))
    ledger.close(sessions[0], EndReason.STOPPED)
    ledger.serve(catalog)
    first = ledger.cancel(catalog, ada.id)
    assert first.state == "cancelled" and first.start_asked_at is None
    assert ledger.cancel(catalog, ada.id) == first
    # the cancel gave lin the turn in the same transaction
    assert ledger.get(catalog, lin.id).state == "held"  # type: ignore[union-attr]
    assert held_gpus(ledger) == 2
    with pytest.raises(UnknownRequest):
        ledger.cancel(catalog, "nope")


def test_a_hold_not_used_expires_and_goes_to_the_next(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    sessions = fill(ledger, catalog)
    ada = ledger.join(catalog, join("ada"))
    clock.advance(seconds=1)
    lin = ledger.join(catalog, join("lin"))
    ledger.close(sessions[0], EndReason.STOPPED)
    ledger.serve(catalog)
    with pytest.raises(AdmissionRefused) as refused:  # the held GPU is nobody else's
        ledger.admit(catalog, spawn("grace", team="nlp"))
    assert refused.value.decision.message.endswith(
        "2 in all, 0 free, held by n1/ (1), and set aside for people in line: ada/ (1)."
    )
    clock.advance(seconds=catalog.waitlist.hold.total_seconds() - 1)
    ledger.serve(catalog)
    assert ledger.get(catalog, ada.id).state == "held"  # type: ignore[union-attr]
    clock.advance(seconds=1)
    result = ledger.serve(catalog)
    assert [r.id for r in result.ended] == [ada.id]
    assert ledger.get(catalog, ada.id).state == "expired"  # type: ignore[union-attr]
    assert ledger.get(catalog, lin.id).state == "held"  # type: ignore[union-attr]


def test_a_request_waits_at_most_max_wait(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    fill(ledger, catalog)
    ada = ledger.join(catalog, join("ada"))
    clock.advance(seconds=catalog.waitlist.max_wait.total_seconds())
    ledger.serve(catalog)
    ended = ledger.get(catalog, ada.id)
    assert ended is not None and ended.state == "expired" and "max_wait" in (ended.message or "")


def test_a_start_for_a_cancelled_request_is_refused(ledger: Ledger, catalog: Catalog) -> None:
    ledger.set_capacity("h100-80gb", 1)
    ada = ledger.join(catalog, join("ada", start="auto"))
    ledger.cancel(catalog, ada.id)
    with pytest.raises(AdmissionRefused) as refused:
        ledger.admit(catalog, spawn("ada", waitlist=ada.id))
    assert refused.value.decision.reason == "waitlist-ended"
    assert ledger.open_sessions() == []


def test_a_turn_queues_one_message_per_channel(
    db_url: str, catalog: Catalog, clock: FakeClock
) -> None:
    upgrade(db_url)
    notifying = catalog.model_copy(
        update={
            "notifications": type(catalog.notifications).model_validate(
                {
                    "email": {"smtp": "localhost:25", "from": "gpuhub@example.org"},
                    "webhook": {"url": "http://localhost:9/hook"},
                }
            )
        }
    )
    ledger = Ledger.open(db_url, clock=clock, install=INSTALL)
    try:
        ledger.set_capacity("h100-80gb", 1)
        ada = ledger.join(notifying, join("ada"))
        ledger.serve(notifying)
        ledger.serve(notifying)
        messages = Outbox(ledger.engine, clock=clock).messages(f"waitlist:{ada.id}")
        assert sorted((m.channel, m.recipient) for m in messages) == [
            ("email", "ada"),
            ("webhook", "http://localhost:9/hook"),
        ]
    finally:
        ledger.engine.dispose()


# --- races: each contender has its own engine (another hub or service process) ---------------


def race(db_url: str, clock: FakeClock, jobs: list[Callable[[Ledger], str]]) -> list[str]:
    def refused(exc: Exception) -> str | None:
        return type(exc).__name__ if isinstance(exc, AdmissionRefused | AlreadyWaiting) else None

    return race_of(db_url, clock, jobs, INSTALL, refused)


@pytest.mark.parametrize("attempt", range(3))
def test_two_gpus_freed_at_once_go_to_two_people_once_each(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock, attempt: int
) -> None:
    """Two services serve the line at once: each request gets at most one turn, and no more
    GPUs are held than exist. Broken once (no GPU-type lock in `serve`): on PostgreSQL both
    services gave the same two turns, 4 holds for 2 GPUs."""
    sessions = fill(ledger, catalog, capacity=3)
    waiting = []
    for user in ("ada", "lin", "u1"):
        waiting.append(ledger.join(catalog, join(user)).id)
        clock.advance(seconds=1)
    ledger.close(sessions[0], EndReason.STOPPED)
    ledger.close(sessions[1], EndReason.STOPPED)

    def serve(own: Ledger) -> str:
        return ",".join(r.id for r in own.serve(catalog).given)

    given = [g for r in race(db_url, clock, [serve, serve]) for g in r.split(",") if g]
    assert sorted(given) == sorted(waiting[:2])
    assert held_gpus(ledger) == 3
    assert len(ledger.holds()) == 2


@pytest.mark.parametrize("attempt", range(3))
def test_a_direct_spawn_racing_a_turn_never_shares_the_gpu(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock, attempt: int
) -> None:
    """One GPU comes free: the service gives it to the head of the line (vision, which holds
    the other GPU) while grace of nlp (holding nothing, so ahead of vision in fair order) spawns
    directly. Exactly one of them gets it. Broken once (no GPU-type lock): on PostgreSQL both
    did, 3 GPUs taken of 2."""
    ledger.set_capacity("h100-80gb", 2)
    first = ledger.admit(catalog, spawn("v0")).session_id
    ledger.admit(catalog, spawn("v1"))
    ada = ledger.join(catalog, join("ada"))
    ledger.close(first, EndReason.STOPPED)

    def serve(own: Ledger) -> str:
        return "served" if own.serve(catalog).given else "none"

    def direct(own: Ledger) -> str:
        own.admit(catalog, spawn("grace", team="nlp"))
        return "admitted"

    results = race(db_url, clock, [serve, direct])
    state = ledger.get(catalog, ada.id).state  # type: ignore[union-attr]
    assert (results, state) in (
        (["served", "AdmissionRefused"], "held"),
        (["none", "admitted"], "waiting"),
    )
    assert held_gpus(ledger) == 2


@pytest.mark.parametrize("attempt", range(3))
def test_cancel_while_starting_never_leaves_a_server_for_a_cancelled_request(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock, attempt: int
) -> None:
    """The person cancels while the service's start is being admitted. Either the admission
    is refused (nothing started) or it won, and then the cancel reports that the start was
    asked for, so the caller stops the server. Broken once (no GPU-type lock): on PostgreSQL
    the admission used the hold the cancel had just ended, and the request stayed starting."""
    ledger.set_capacity("h100-80gb", 1)
    ada = ledger.join(catalog, join("ada", start="auto"))

    def start(own: Ledger) -> str:
        own.admit(catalog, spawn("ada", waitlist=ada.id))
        return "admitted"

    def cancel(own: Ledger) -> str:
        return own.cancel(catalog, ada.id).state

    results = race(db_url, clock, [start, cancel])
    final = ledger.get(catalog, ada.id)
    assert final is not None and final.state == "cancelled"
    assert final.start_asked_at is not None  # the caller (the API) stops the server then
    if results[0] == "admitted":
        assert final.session is not None
        assert len(ledger.open_sessions()) == 1
    else:
        assert results[0] == "AdmissionRefused"
        assert ledger.open_sessions() == []
    assert ledger.holds() == []


def test_a_request_no_turn_could_serve_is_refused_not_left_waiting(
    ledger: Ledger, catalog: Catalog
) -> None:
    ledger.set_capacity("h100-80gb", 2)
    with pytest.raises(NotWaitable) as refused:
        ledger.join(catalog, join("ada", count=4))  # h100-quad on a machine of 2
    assert refused.value.reason == "capacity"
    assert "there are 2 NVIDIA H100 80GB in all" in str(refused.value)
    teaching = JoinRequest("tutor", "", "teaching", "h100-single", "h100-80gb", 1, {})
    with pytest.raises(NotWaitable) as refused:
        ledger.join(catalog, teaching)  # teaching has no H100 quota at all
    assert refused.value.reason == "gpu-quota"
    assert ledger.requests(catalog) == []


def test_a_server_cancelled_after_admission_is_listed_until_its_session_ends(
    ledger: Ledger, catalog: Catalog
) -> None:
    """What the service stops every tick: the session the cancelled request started, while it
    is open; not a later server of the same name."""
    ledger.set_capacity("h100-80gb", 1)
    ada = ledger.join(catalog, join("ada", start="auto"))
    admitted = ledger.admit(catalog, spawn("ada", waitlist=ada.id))
    assert ledger.cancelled_but_running() == []
    ledger.cancel(catalog, ada.id)
    assert [r.id for r in ledger.cancelled_but_running()] == [ada.id]
    ledger.close(admitted.session_id, EndReason.STOPPED)
    assert ledger.cancelled_but_running() == []
    ledger.admit(catalog, spawn("ada"))  # started again by hand: not the request's
    assert ledger.cancelled_but_running() == []
