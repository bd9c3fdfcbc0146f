"""The hub's metering: one Ledger per database URL, and the reconciliation loop that keeps it
true to what really runs (an Observer lists the running servers of one runtime)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Protocol

from ..catalog import Catalog
from ..catalog.store import CatalogStore
from ..ledger.models import EndReason
from ..ledger.reconcile import OpenSession, RunningServer, reconcile
from ..ledger.rules import over_budget_grace_over
from ..ledger.store import Ledger

log = logging.getLogger("gpuhub.metering")
_ledgers: dict[str, Ledger] = {}
_loops: dict[str, asyncio.Task[None]] = {}


def shared_ledger(url: str) -> Ledger:
    """The hub's Ledger for `url` (raises SchemaError naming `gpuhub db upgrade` if needed)."""
    ledger = _ledgers.get(url)
    if ledger is None:
        ledger = _ledgers[url] = Ledger.open(url)
    return ledger


class Observer(Protocol):
    """Lists the servers of one runtime (Kubernetes pods, local processes) that run now, and
    stops one (deletes the pod, ends the process) for budget enforcement."""

    async def running(self) -> list[RunningServer]: ...

    async def stop(self, runtime_ref: str) -> None: ...


async def enforce_budgets(ledger: Ledger, catalog: Catalog, observer: Observer) -> list[int]:
    """Stop the running GPU servers of teams over budget whose grace period is over. Their
    sessions are closed first, with reason `budget`, so billing ends now."""
    stopped = []
    now = ledger.clock()
    for team, used, since in ledger.over_budget(catalog):
        quota = catalog.teams[team].quota
        if not over_budget_grace_over(quota, used, since, now):
            continue
        for session in ledger.open_gpu_sessions(team):
            ledger.close(session.id, EndReason.BUDGET, now)
            if session.runtime_ref:
                log.warning(
                    "metering: team %s is over budget (%s GPU-hours); stopping %s",
                    team,
                    used,
                    session.runtime_ref,
                )
                await observer.stop(session.runtime_ref)
            stopped.append(session.id)
    return stopped


async def reconcile_once(
    ledger: Ledger,
    observer: Observer,
    *,
    lost_reason: EndReason = EndReason.NODE_LOST,
    tick: timedelta = timedelta(0),
) -> None:
    observed_at = ledger.clock()
    running = await observer.running()
    sessions = [
        OpenSession(s.id, s.requested_at, s.started_at, s.last_seen_at)
        for s in ledger.open_sessions()
    ]
    named = [s.session_id for s in running if s.session_id is not None]
    closed = ledger.closed(named)
    by_reconciliation = {EndReason.NODE_LOST.value, EndReason.RECONCILED.value}
    actions = reconcile(
        sessions,
        running,
        {sid: end for sid, (end, why) in closed.items() if why in by_reconciliation},
        ledger.clock(),
        stopping=frozenset(sid for sid, (_, why) in closed.items() if why not in by_reconciliation),
        lost_reason=lost_reason,
        tick=tick,
        observed_at=observed_at,
    )
    ledger.seen(actions.seen)
    for close in actions.close:
        log.warning(
            "metering: session %s closed at %s (%s)", close.session_id, close.at, close.reason
        )
        ledger.close(close.session_id, close.reason, close.at)
    for adopt in actions.adopt:
        new_id = ledger.adopt(adopt.server, adopt.start)
        log.warning(
            "metering: adopted running server %s as session %s", adopt.server.runtime_ref, new_id
        )


def ensure_reconciler(key: str, ledger: Ledger, observer: Observer, store: CatalogStore) -> None:
    """Every `metering.reconcile_interval` of the catalog in force (one loop per key, in the
    hub's event loop): reconcile, then enforce budgets. The first pass after a hub start labels
    what it closes `reconciled`."""
    task = _loops.get(key)
    if task is not None and not task.done():
        return

    async def loop() -> None:
        reason = EndReason.RECONCILED
        while True:
            try:
                tick = store.catalog.metering.reconcile_interval
                await reconcile_once(ledger, observer, lost_reason=reason, tick=tick)
                reason = EndReason.NODE_LOST
                await enforce_budgets(ledger, store.catalog, observer)
            except Exception:
                log.exception("metering: reconciliation failed; trying again next tick")
            await asyncio.sleep(store.catalog.metering.reconcile_interval.total_seconds())

    _loops[key] = asyncio.get_running_loop().create_task(loop())
