"""The hub's billing-ledger work, off its event loop. JupyterHub runs every request, proxy call and
spawn of a hub in one thread; a ledger call that waits (SQLite's write lock while the gpuhub
service ticks, a PostgreSQL primary that stopped answering) must not stop all of them.

- **The lane** (one thread) runs what changes the ledger: admissions and billing writes, in the
  order the hub asked for them, so a stop's close is counted before the next spawn's admission.
  A write the database refuses waits, in order with later writes, and is tried again every
  `RETRY_SECONDS` (applied then as its `late` version).
- **Reads** for pages and previews run beside it, in a small pool.
- A caller waits for its call while the lane gets work done: it gets `LedgerTimeout` (a spawn
  is refused as "billing is unavailable") once the database has finished nothing of the lane's
  for the call timeout, not after a fixed time in line behind other spawns' admissions (a
  thousand spawns at once queue a thousand admissions; at 20 ms each the last waits 20 s,
  with the database answering all along). An admission that
  finishes after its caller gave up is undone at once (`on_late`): nobody starts that server,
  so nobody may be billed for it.

Does no policy: what to call and what a failure means is the spawner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from ..ledger.engine import SchemaError
from ..ledger.store import Ledger

T = TypeVar("T")

RETRY_SECONDS = 2.0
"""How often ledger writes that found the billing database down are tried again."""
CALL_TIMEOUT_SECONDS = 20.0
"""How long the lane may finish nothing (the database does not answer) before the spawns that
wait on it are refused as "billing is unavailable". Above SQLite's busy wait for a tick's write
lock at a thousand servers, below JupyterHub's start timeout."""
READ_TIMEOUT_SECONDS = 5.0
"""How long a page waits for a ledger read before it shows itself without it."""
READ_THREADS = 2


class LedgerTimeout(Exception):
    """A ledger call did not finish in time: the billing database hangs, or holds a lock."""

    def __init__(self, what: str, seconds: float, *, in_line: bool = False) -> None:
        if in_line:
            super().__init__(
                f"the {what} did not finish: the billing database finished nothing for "
                f"{seconds:g} s"
            )
        else:
            super().__init__(f"the {what} did not finish within {seconds:g} s")


LEDGER_DOWN = (DBAPIError, SchemaError, LedgerTimeout)
"""What a ledger call raises when the billing database does not answer (in time)."""


class _Handoff:
    """Who gets a call's result: the waiting caller, or (once it gave up) `on_late`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.delivered = False


class LedgerLane:
    """The hub's ledger threads (see the module docstring). `open_ledger` gives the ledger (made
    on first use, in a lane or read thread)."""

    def __init__(
        self,
        open_ledger: Callable[[], Ledger | None],
        log: logging.Logger,
        *,
        call_timeout: float = CALL_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self._open = open_ledger
        self.log = log
        self.call_timeout = call_timeout
        self.read_timeout = read_timeout
        self._lane: ThreadPoolExecutor | None = None
        self._reads: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[str, Callable[[Ledger], object]]] = deque()
        """Writes the database refused, in order; touched only in the lane's thread (or the
        caller's, with no event loop running)."""
        self._retrying: asyncio.Task[None] | None = None
        self._answered_at = time.monotonic()
        """When the database last finished something of the lane's (a write, or a call that it
        answered, even with a refusal); written in the lane's thread, read in the loop's."""

    # --- writes ------------------------------------------------------------------------------

    def write(
        self,
        what: str,
        change: Callable[[Ledger], object],
        late: Callable[[Ledger], object] | None = None,
    ) -> asyncio.Future[bool] | None:
        """Queue a ledger write on the lane. Never raises for a database that does not answer:
        the write then waits, in order with later writes, and is retried every `RETRY_SECONDS`
        until it is applied (as `late` if given: the write carries its own times, so a late write
        bills the same). Lost only if the hub dies first; reconciliation then closes the session
        at its last-seen time.

        In the event loop: returns a future of whether it was applied at once (await it, or
        `settle` it, to read the ledger after it). With no loop running (scripts, tests): applied
        in the caller's thread, returns None."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._write_now(what, change, late)
            return None
        done = asyncio.wrap_future(self._lane_pool().submit(self._write_now, what, change, late))
        done.add_done_callback(lambda f: self._after_write(what, f))
        return done

    async def settle(self, written: asyncio.Future[bool] | None) -> None:
        """Wait (at most the call timeout) for a write from `write`; a write that waits for the
        database goes on waiting in the lane."""
        if written is not None:
            await asyncio.wait([written], timeout=self.call_timeout)

    def _write_now(
        self, what: str, change: Callable[[Ledger], object], late: Callable[[Ledger], object] | None
    ) -> bool:
        waited = bool(self._pending)
        if not waited and self._apply(what, change, waiting=1):
            return True
        self._pending.append((what, late or change))
        return waited and self.flush()

    def flush(self) -> bool:
        """Try the pending writes in order; True when none is left."""
        while self._pending:
            what, change = self._pending[0]
            if not self._apply(what, change, waiting=len(self._pending)):
                return False
            self._pending.popleft()
        return True

    def _apply(self, what: str, change: Callable[[Ledger], object], *, waiting: int) -> bool:
        """Write `change`; False (and a warning naming it) while the database does not answer."""
        try:
            ledger = self._open()
            if ledger is not None:
                change(ledger)
                self._answered_at = time.monotonic()
        except (DBAPIError, SchemaError) as exc:
            self.log.warning(
                "gpuhub: billing database unavailable; %d write(s) wait, first the %s: %s",
                waiting,
                what,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return False
        return True

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    def _after_write(self, what: str, done: asyncio.Future[bool]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self.log.error("gpuhub: the %s was not recorded: %r", what, error)
        elif not done.result():
            self._ensure_retry()

    def _ensure_retry(self) -> None:
        if self._retrying is not None and not self._retrying.done():
            return
        loop = asyncio.get_running_loop()

        async def retry() -> None:
            while self._pending:
                await asyncio.sleep(RETRY_SECONDS)
                if await loop.run_in_executor(self._lane_pool(), self.flush):
                    self.log.info("gpuhub: billing database back; pending writes recorded")

        self._retrying = loop.create_task(retry())

    # --- calls and reads ---------------------------------------------------------------------

    async def call(
        self,
        what: str,
        fn: Callable[[Ledger], T],
        *,
        on_late: Callable[[Ledger, T], object] | None = None,
    ) -> T:
        """`fn(ledger)` on the lane, after everything queued before it; its result, or its
        exception (DBAPIError, SchemaError, AdmissionRefused...). Raises LedgerTimeout once the
        lane has finished nothing for the call timeout (while this call waited); if `fn` still
        finishes after that, `on_late(ledger, result)` runs in the lane right after it (e.g.
        closing an admission nobody will use)."""
        return await self._run(self._lane_pool(), what, fn, self.call_timeout, on_late, True)

    async def read(self, what: str, fn: Callable[[Ledger], T]) -> T:
        """`fn(ledger)` in a read thread (no order with the lane: it may not see a write queued
        a moment ago); raises as `call` does, LedgerTimeout after the read timeout."""
        return await self._run(self._read_pool(), what, fn, self.read_timeout, None, False)

    async def _run(
        self,
        pool: ThreadPoolExecutor,
        what: str,
        fn: Callable[[Ledger], T],
        seconds: float,
        on_late: Callable[[Ledger, T], object] | None,
        in_line: bool,
    ) -> T:
        """`fn` in `pool`. `in_line` (the lane): the caller's `seconds` run from its call or the
        lane's last finished work, whichever is later; else from its call."""
        handoff = _Handoff()

        def run() -> T:
            ledger = self._open()
            if ledger is None:
                raise SchemaError("gpuhub: this hub has no billing database (ledger_url)")
            try:
                result = fn(ledger)
            except (DBAPIError, SchemaError):
                raise
            except Exception:
                self._answered_at = time.monotonic()  # answered, with a refusal
                raise
            self._answered_at = time.monotonic()
            with handoff.lock:
                if not handoff.abandoned:
                    handoff.delivered = True
                    return result
            if on_late is not None:
                try:
                    on_late(ledger, result)
                except Exception:
                    self.log.exception("gpuhub: could not undo the late %s", what)
            return result

        future: Future[T] = pool.submit(run)
        waited = asyncio.wrap_future(future)
        waited.add_done_callback(_retrieve)
        called = time.monotonic()
        while True:
            since = max(called, self._answered_at) if in_line else called
            left = since + seconds - time.monotonic()
            if left > 0:
                done, _ = await asyncio.wait([waited], timeout=left)
                if done:
                    return await waited
                continue  # the lane may have answered others meanwhile: look again
            with handoff.lock:
                if not handoff.delivered:
                    handoff.abandoned = True
                    future.cancel()  # not started yet: it never runs
                    raise LedgerTimeout(what, seconds, in_line=in_line)
            return await waited

    def _lane_pool(self) -> ThreadPoolExecutor:
        if self._lane is None:
            self._lane = ThreadPoolExecutor(
                1,
                thread_name_prefix=LANE_THREAD,
                initializer=name_os_thread,
                initargs=(LANE_THREAD,),
            )
        return self._lane

    def _read_pool(self) -> ThreadPoolExecutor:
        if self._reads is None:
            self._reads = ThreadPoolExecutor(
                READ_THREADS,
                thread_name_prefix=READ_THREAD,
                initializer=name_os_thread,
                initargs=(READ_THREAD,),
            )
        return self._reads

    def close(self) -> None:
        """Stop retrying and take no more work; what the lane has queued still runs (its thread
        finishes it before the process exits), so no billing write queued here is dropped."""
        if self._retrying is not None:
            self._retrying.cancel()
        for pool in (self._lane, self._reads):
            if pool is not None:
                pool.shutdown(wait=False)


LANE_THREAD = "gpuhub-ledger"
READ_THREAD = "gpuhub-reads"


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` where the operating system shows it too (`top -H`,
    `ps -L`, /proc/PID/task/TID/comm; Linux keeps 15 characters), not only in Python: the
    hub's CPU can then be split by thread from outside. Elsewhere, nothing."""
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a result nobody may wait for any more, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()
