"""The hub's ledger work runs off its event loop (hub/ledger_lane.py): a ledger call that waits for
SQLite's write lock (the gpuhub service's tick holds it) or a hanging database leaves the hub's
one thread free; a spawn that waited too long is refused as "billing is unavailable", and its
admission, if it comes back later, is closed unstarted, so nobody is billed for a server that
never starts.

Broken once each, and seen to fail:
- `LedgerLane._run` calling `fn` in the event loop's thread: the loop stalled for the whole lock
  wait (1.5 s against 0.2 s allowed) in the first test;
- `_admit_fresh` without `on_late`: the late admission stayed open (`ended_at` NULL), counted
  against the team's quota with nobody's server behind it, in the second;
- `_run`'s timeout setting `abandoned` without the handoff's lock: in the race test, calls that
  finished as their caller gave up were lost (neither delivered nor undone).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado import web
from traitlets import TraitError

from spawner_ext.hub.context import HubContext
from spawner_ext.hub.ledger_lane import LedgerLane, LedgerTimeout
from spawner_ext.ledger.admission import Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger
from tests.spawners.test_form import CATALOG, H100
from tests.spawners.test_form_waitlist import LedgerSpawner

ROOT = Path(__file__).parents[2]
LOCK_SECONDS = 1.5


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def context(ledger_file: Path) -> Iterator[HubContext]:
    made = HubContext(
        ROOT / "hub_config" / "catalog.yaml",
        f"sqlite:///{ledger_file}",
        install="local",
        call_timeout=0.5,
    )
    yield made
    made.close()
    if made._ledger is not None:
        made._ledger.engine.dispose()


def hold_write_lock(path: Path, seconds: float) -> threading.Event:
    """Take SQLite's write lock in another connection, as the service's tick does, and let it go
    after `seconds` (from a thread: the event loop may be what is being tested). Returns an
    event set once it is let go."""
    held = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    held.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        held.execute("ROLLBACK")
        held.close()
        released.set()

    threading.Timer(seconds, release).start()
    return released


def admission_request(user: str = "ada") -> Request:
    return Request(user, "", "vision", "h100-single", H100, 1, Decimal("4.10"), "USD", "abc")


async def test_a_ledger_call_waiting_for_the_write_lock_leaves_the_event_loop_free(
    ledger_file: Path,
) -> None:
    ledger = Ledger.open(f"sqlite:///{ledger_file}", install="local")
    ledger.set_capacity(H100, 8)
    lane = LedgerLane(lambda: ledger, logging.getLogger("test"), call_timeout=10)
    lags: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.02)
            lags.append(time.monotonic() - before - 0.02)

    stop = asyncio.Event()
    ticking = asyncio.create_task(ticker(stop))
    await asyncio.sleep(0.1)
    hold_write_lock(ledger_file, LOCK_SECONDS)
    began = time.monotonic()
    admitted = await lane.call("admission", lambda led: led.admit(CATALOG, admission_request()))
    waited = time.monotonic() - began
    stop.set()
    await ticking
    lane.close()
    ledger.engine.dispose()
    assert admitted.session
    assert waited >= LOCK_SECONDS - 0.1, "the admission waited for the lock"
    assert len(lags) >= 20, "the loop ran while the admission waited"
    assert max(lags) < 0.2, f"the event loop stalled {max(lags):.2f} s"


async def test_a_spawn_that_waits_too_long_is_refused_and_its_late_admission_closed(
    context: HubContext, ledger_file: Path
) -> None:
    ledger = context.ledger()
    assert ledger is not None
    ledger.set_capacity(H100, 8)
    user = SimpleNamespace(name="ada", settings={"base_url": "/base/"})
    spawner = LedgerSpawner(
        context=context, user=user, orm_spawner=SimpleNamespace(name="", server=None)
    )
    spawner.user_options = {"profile": "h100-single"}
    released = hold_write_lock(ledger_file, LOCK_SECONDS)
    began = time.monotonic()
    with pytest.raises(web.HTTPError) as refused:
        await spawner.plan_spawn()
    gave_up = time.monotonic() - began
    assert refused.value.status_code == 503
    assert "Billing is unavailable" in str(refused.value)
    assert 0.4 < gave_up < LOCK_SECONDS, "refused at the call timeout, not at the lock's end"
    assert spawner.usage_session is None
    assert released.wait(5)
    await context.lane.call("a later call", lambda led: None)  # the late admission ran first
    rows = sqlite3.connect(ledger_file).execute(
        "SELECT user, started_at, ended_at, end_reason FROM usage_sessions"
    )
    ((who, started, ended, reason),) = rows.fetchall()
    assert (who, started, reason) == ("ada", None, "failed"), "admitted late, closed unstarted"
    assert ended is not None
    assert ledger.open_sessions() == []
    refusals = sqlite3.connect(ledger_file).execute(
        "SELECT reason, refusals FROM admission_refusals"
    )
    assert refusals.fetchall() == [("billing-unavailable", 1)]


async def test_a_call_that_ends_as_its_caller_gives_up_is_delivered_or_undone_never_lost() -> None:
    """Race the call's end against its timeout, many times: each result goes to exactly one of
    the caller and `on_late`."""
    undone: list[int] = []
    lane = LedgerLane(lambda: object(), logging.getLogger("test"), call_timeout=0.01)  # type: ignore[arg-type,return-value]
    delivered: list[int] = []
    for i in range(200):

        def work(_ledger: object, i: int = i) -> int:
            time.sleep(0.009 + (i % 5) * 0.0005)  # ends about when the caller gives up
            return i

        with contextlib.suppress(LedgerTimeout):
            delivered.append(await lane.call("work", work, on_late=lambda _l, r: undone.append(r)))
    await asyncio.get_running_loop().run_in_executor(lane._lane_pool(), lambda: None)
    lane.close()
    assert sorted(delivered + undone) == list(range(200))
    assert delivered and undone, "both ends of the race were reached"


async def test_a_long_line_of_answered_calls_is_not_refused_for_its_length() -> None:
    """A thousand spawns at once queue a thousand admissions on the lane: at 20 ms each (SQLite
    under a storm's load) the last waits 20 s in line, and a timeout counted from each call
    would refuse it "billing is unavailable" though the database answered every admission.
    The timeout counts the database answering nothing, not the line: 30 calls of 0.05 s
    queued at once (1.5 s in all) with a 0.3 s timeout all finish; a call behind one that
    never ends is refused after the timeout. Broken once: the timeout counted from each call
    (as before), and 25 of the 30 were refused."""
    lane = LedgerLane(lambda: object(), logging.getLogger("test"), call_timeout=0.3)  # type: ignore[arg-type,return-value]

    def work(_ledger: object, i: int) -> int:
        time.sleep(0.05)
        return i

    answers = await asyncio.gather(
        *(lane.call("work", functools.partial(work, i=i)) for i in range(30)),
        return_exceptions=True,
    )
    assert answers == list(range(30))

    stuck = threading.Event()
    first = asyncio.ensure_future(lane.call("stuck call", lambda _l: stuck.wait(5)))
    await asyncio.sleep(0.05)  # the stuck call is on the lane first
    began = time.monotonic()
    with pytest.raises(LedgerTimeout, match=r"finished nothing for 0\.3 s"):
        await lane.call("call behind it", lambda _l: None)
    assert time.monotonic() - began < 1.0, "refused at the timeout, not when the stuck call ends"
    with pytest.raises(LedgerTimeout):
        await first
    stuck.set()
    lane.close()


async def test_a_write_queued_before_a_call_is_applied_before_it() -> None:
    """A stop's close is counted before the next spawn's admission."""
    seen: list[str] = []
    lane = LedgerLane(lambda: object(), logging.getLogger("test"))  # type: ignore[arg-type,return-value]
    lane.write("close", lambda _l: (time.sleep(0.2), seen.append("close")))
    assert await lane.call("admission", lambda _l: list(seen)) == ["close"]
    lane.close()


@pytest.mark.parametrize("bad", [0, -5.0])
def test_a_ledger_timeout_that_is_not_above_zero_is_refused_with_what_to_set(bad: float) -> None:
    with pytest.raises(TraitError, match=r"ledger_timeout must be a number of seconds above 0"):
        LedgerSpawner(ledger_timeout=bad)
    assert LedgerSpawner(ledger_timeout=2.5).ledger_timeout == 2.5


async def test_the_lanes_threads_carry_their_names_where_the_os_shows_them() -> None:
    """`top -H` and the scale benchmark tell the lane's thread (and the reads') from the hub's
    others by the name Linux keeps for it. Broken once (no initializer): the thread's comm was
    the process's."""
    lane = LedgerLane(lambda: object(), logging.getLogger("test"))  # type: ignore[arg-type,return-value]

    def comm(_ledger: object) -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    try:
        assert await lane.call("name", comm) == "gpuhub-ledger"
        assert await lane.read("name", comm) == "gpuhub-reads"
        assert comm(None) not in ("gpuhub-ledger", "gpuhub-reads")  # the caller's keeps its own
    finally:
        lane.close()
