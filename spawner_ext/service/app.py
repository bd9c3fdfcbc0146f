"""The gpuhub service: the one process that does hub-wide work. JupyterHub starts it (a managed
service, `gpuhub service`) with its own API token; it reconciles the billing ledger with what
really runs, ends servers nobody knows, enforces budgets through the hub's REST API and keeps
ResourceQuotas in sync, every `metering.reconcile_interval`, and culls idle servers every
`culling.interval` (culler.py). It serves its status, reports and activity API over HTTP.

Killed at any point, it loses nothing: every tick starts from the ledger and what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError

from ..catalog import Catalog
from ..catalog.store import CatalogStore
from ..clock import Clock, utcnow
from ..end_reason import EndReason
from ..ledger.activity import ActivityLedger
from ..ledger.engine import SchemaError
from ..ledger.models import UsageSession
from ..ledger.outbox import Outbox
from ..ledger.store import Ledger
from .budget_alerts import BudgetAlerter
from .culler import REPORT_FRESH, Culler, CullerStatus
from .hubapi import HubAPI, HubAPIError, HubServer, ServerUnknown
from .metering import Listed, enforce_budgets, reconcile_once, strays
from .notifier import Notifier, NotifierStatus
from .runtimes import Runtime
from .waitlist_starts import start_request

log = logging.getLogger("gpuhub.service")

TICK_STEPS = (
    "hub_listing",
    "runtime_listing",
    "reconcile",
    "strays",
    "budgets",
    "quota_sync",
    "waitlist",
    "reclaims",
    "budget_alerts",
)
"""A tick's steps, in order, as `Status.tick_seconds` names them."""


class Laps:
    """Seconds between marks, by the name of the step each mark ends (monotonic clock)."""

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = now - self._last
        self._last = now

    def with_total(self) -> dict[str, float]:
        return {**self.seconds, "total": self._last - self.started}


@dataclass
class Status:
    """What the service reports about its ticks. `as_json` is the public status (api/v1/status:
    counts and times only); `detail_json` adds the last failed tick's message for admins
    (api/v1/status/detail), since a database's or the hub's error can name hosts and users."""

    runtime: str
    started_at: datetime
    ticks: int = 0
    last_tick_at: datetime | None = None
    failed_ticks: int = 0
    """Ticks that failed since the service started."""
    failing_since: datetime | None = None
    """When the ticks started failing; None while the last tick succeeded."""
    last_error: str | None = None
    """The last failed tick's error (its first line); None once a tick succeeds. Admins only."""
    adopted: int = 0
    closed: int = 0
    strays_ended: int = 0
    budget_stops: int = 0
    turns_given: int = 0
    """Wait-list turns given (GPUs held for the next person in line)."""
    budget_alerts: int = 0
    """Budget alert messages queued (one per recipient)."""
    reclaims_chosen: int = 0
    reclaims_stopped: int = 0
    tick_seconds: dict[str, float] = field(default_factory=dict)
    """The last successful tick's seconds by step (TICK_STEPS), and `total`: where a tick's time
    goes as the number of servers grows."""

    def as_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "started_at": self.started_at.isoformat(),
            "ticks": self.ticks,
            "last_tick_at": self.last_tick_at.isoformat() if self.last_tick_at else None,
            "failing": self.failing_since is not None,
            "failing_since": self.failing_since.isoformat() if self.failing_since else None,
            "failed_ticks": self.failed_ticks,
            "adopted": self.adopted,
            "closed": self.closed,
            "strays_ended": self.strays_ended,
            "budget_stops": self.budget_stops,
            "turns_given": self.turns_given,
            "budget_alerts": self.budget_alerts,
            "reclaims_chosen": self.reclaims_chosen,
            "reclaims_stopped": self.reclaims_stopped,
            "tick_seconds": dict(self.tick_seconds),
        }

    def detail_json(self) -> dict[str, Any]:
        return {**self.as_json(), "last_error": self.last_error}


class GPUHubService:
    """Hub-wide work, one tick at a time. Every input is handed in, so tests build one with a
    fake clock, a ledger of their own and a hub at a URL."""

    def __init__(
        self,
        store: CatalogStore,
        ledger_url: str,
        hub: HubAPI,
        runtime: Runtime,
        *,
        install: str | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """`install`: the install whose sessions this service reconciles, budget-stops and
        culls (None: every session in the ledger, as before installs were told apart)."""
        self.install = install
        self.store = store
        self.ledger_url = ledger_url
        self.hub = hub
        self.runtime = runtime
        self.clock = clock
        self.status = Status(runtime.name, clock())
        self._ledger: Ledger | None = None
        self._culler: Culler | None = None
        self._budget_alerter: BudgetAlerter | None = None
        self._first = True
        self._woken = asyncio.Event()

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger.open(self.ledger_url, clock=self.clock, install=self.install)
        return self._ledger

    def culler(self) -> Culler:
        if self._culler is None:
            self._culler = Culler(self.hub, self.ledger())
        return self._culler

    def budget_alerter(self) -> BudgetAlerter:
        """Budget alerts (budget_alerts.py): queued in the outbox, sent by the notifier."""
        if self._budget_alerter is None:
            self._budget_alerter = BudgetAlerter(self.ledger(), self.hub, self.clock)
        return self._budget_alerter

    def culler_status(self) -> CullerStatus:
        return self._culler.status if self._culler is not None else CullerStatus()

    async def cull_safely(self) -> bool:
        """One culling cycle; a failure (hub, billing database) is logged and tried again."""
        try:
            await self.culler().cycle(self.store.catalog, self.clock())
        except (HubAPIError, DBAPIError, SchemaError, OSError) as exc:
            log.error("service: culling skipped, trying again next cycle: %s", exc)
            return False
        except Exception:
            log.exception("service: culling failed")
            return False
        return True

    async def run_culler(self) -> None:
        """Cull every `culling.interval` of the catalog in force, until cancelled."""
        while True:
            await asyncio.sleep(self.store.catalog.culling.interval.total_seconds())
            await self.cull_safely()

    async def tick(self) -> None:
        """One pass: reconcile, end strays, enforce budgets, sync quotas, serve the wait-list,
        queue budget alerts. A part whose input is unavailable (hub, billing database, API
        server) is skipped and tried next tick."""
        catalog = self.store.catalog
        metering = catalog.metering
        laps = Laps()
        listed = await self.hub.running_servers()
        laps.mark("hub_listing")
        observed_at = self.clock()
        running = await self.runtime.running(listed)
        laps.mark("runtime_listing")
        ledger = self.ledger()
        actions = reconcile_once(
            ledger,
            running,
            observed_at=observed_at,
            lost_reason=EndReason.RECONCILED if self._first else EndReason.NODE_LOST,
            tick=metering.reconcile_interval,
            grace=metering.start_grace,
            listed=frozenset((s.user, s.name) for s in listed),
        )
        laps.mark("reconcile")
        self._first = False
        self.status.adopted += len(actions.adopt)
        self.status.closed += len(actions.close)
        known = [Listed(s.user, s.name, self.runtime.runtime_ref(s)) for s in listed]
        for server in strays(running, known, observed_at, metering.start_grace):
            log.warning(
                "service: %s of %s/%s runs but the hub does not know it; ending it",
                server.runtime_ref,
                server.user,
                server.server_name,
            )
            await self.runtime.end(server.runtime_ref)
            self.status.strays_ended += 1
        laps.mark("strays")
        asked = await enforce_budgets(ledger, catalog, self._stop)
        self.status.budget_stops += len(asked)
        laps.mark("budgets")
        await self.runtime.sync(catalog)
        laps.mark("quota_sync")
        await self.serve_waitlist(catalog, listed)
        laps.mark("waitlist")
        await self.reclaim_borrowed(catalog)
        laps.mark("reclaims")
        self.status.budget_alerts += await self.budget_alerter().step(catalog)
        laps.mark("budget_alerts")
        self.status.tick_seconds = laps.with_total()

    async def reclaim_borrowed(self, catalog: Catalog) -> None:
        """Choose borrowed servers to give their GPUs back to people waiting on their own
        team's quota (warned from now, by the notebook's warning and the notifier), and stop
        those whose notice is over (the ledger decides, under each GPU type's lock)."""
        ledger = self.ledger()
        ids = ledger.open_borrowed()
        if not ids:
            return
        now = self.clock()
        records = ActivityLedger(ledger).records(ids)
        idle = {
            session_id: now - record.state.reported_at <= REPORT_FRESH and record.state.idle
            for session_id, record in records.items()
        }
        result = ledger.reclaim(catalog, idle)
        self.status.reclaims_chosen += len(result.chosen)
        for chosen in result.chosen:
            log.info(
                "service: %s/%s (%s, borrowed) is reclaimed for team %s at %s",
                chosen.user,
                chosen.server_name,
                chosen.gpu_type,
                chosen.reclaim_for,
                chosen.reclaim_at.isoformat(),
            )
        for session_id in result.withdrawn:
            log.info("service: the reclaim of session %s is withdrawn: nobody needs it", session_id)
        for due in result.due:
            self.status.reclaims_stopped += due.first  # asked once per server, retried silently
            try:
                await self.hub.stop_server(due.user, due.server_name)
            except ServerUnknown:
                continue  # gone already; its session closes as reclaimed
            except HubAPIError as exc:
                log.error(
                    "service: stopping %s/%s to reclaim its GPUs failed (%s); trying again",
                    due.user,
                    due.server_name,
                    exc,
                )
                continue

    async def serve_waitlist(self, catalog: Catalog, listed: Sequence[HubServer]) -> None:
        """Give turns in line (the ledger decides, under each GPU type's lock) and ask the hub
        to start the servers whose turn came, unless it lists them already (a start asked
        earlier that the hub is still working on)."""
        capacities = await self.runtime.capacity(catalog)
        ledger = self.ledger()
        for gpu_type, (total, elsewhere) in capacities.items():
            ledger.set_capacity(gpu_type, total, elsewhere)
        result = ledger.serve(catalog)
        self.status.turns_given += len(result.given)
        present = {(s.user, s.name) for s in listed}
        for request in result.to_start:
            if (request.user, request.server_name) not in present:
                await start_request(self.hub, ledger, request)
        for request in ledger.cancelled_but_running():
            # cancelled after its server was admitted: the API's stop failed or was cut short
            try:
                await self.hub.stop_server(request.user, request.server_name)
            except ServerUnknown:
                pass  # gone meanwhile; its session closes with it
            except HubAPIError as exc:
                log.warning(
                    "service: could not stop %s/%s, whose wait-list request was cancelled: %s",
                    request.user,
                    request.server_name,
                    exc,
                )

    async def _stop(self, session: UsageSession) -> None:
        """Stop a session's server through the hub; one the hub does not know, at its runtime."""
        try:
            await self.hub.stop_server(session.user, session.server_name)
        except ServerUnknown:
            # Only a server of this install: one of a session from before installs were told
            # apart may be another install's.
            if session.runtime_ref and session.install is not None:
                await self.runtime.end(session.runtime_ref)

    async def tick_safely(self) -> bool:
        try:
            await self.tick()
        except (HubAPIError, DBAPIError, SchemaError, OSError) as exc:
            self._failed(exc)
            return False
        except Exception as exc:
            log.exception("service: tick failed")
            self._failed(exc)
            return False
        self.status.ticks += 1
        self.status.last_tick_at = self.clock()
        self.status.failing_since = None
        self.status.last_error = None
        return True

    def _failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if message != self.status.last_error:
            log.error("service: tick skipped, trying again next tick: %s", message)
        self.status.failed_ticks += 1
        if self.status.failing_since is None:
            self.status.failing_since = self.clock()
        self.status.last_error = message

    async def run(self) -> None:
        """Tick every `metering.reconcile_interval` of the catalog in force, or sooner when
        woken (`wake`), until cancelled."""
        while True:
            self._woken.clear()
            await self.tick_safely()
            interval = self.store.catalog.metering.reconcile_interval.total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), interval)

    def wake(self) -> None:
        """Tick soon: a line changed (a request joined, was cancelled or asked to start), so
        places and estimates are worked out again, and turns given, within a tick's time."""
        self._woken.set()

    def close(self) -> None:
        self.hub.close()
        if self._ledger is not None:
            self._ledger.engine.dispose()

    _notifier: Notifier | None = None

    def notifier(self) -> Notifier:
        """The outbox's sender (notifier.py), built at first use: it opens the ledger, so a
        database that is down fails here, and the caller tries again."""
        if self._notifier is None:
            outbox = Outbox(self.ledger().engine, clock=self.clock)
            self._notifier = Notifier(outbox, lambda: self.store.catalog, os.environ, self.clock)
        return self._notifier

    def notifier_status(self) -> NotifierStatus:
        return self._notifier.status if self._notifier is not None else NotifierStatus()
