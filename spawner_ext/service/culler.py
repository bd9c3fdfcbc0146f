"""GPU-aware idle culling in the gpuhub service, every `culling.interval`: list the hub's running
servers (pages at once), read every running session's latest GPU report in one query, decide
(policy/culling.py) and act concurrently: stop what must go through the hub's REST API, with
the reason recorded on the session first; keep the warning of what is about to go for the
server's notebook extension to show; clear it for the rest."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..catalog import Catalog
from ..end_reason import EndReason
from ..ledger.activity import ActivityLedger, ActivityRecord, CullWarning
from ..ledger.models import UsageSession
from ..ledger.store import Ledger
from ..notebook.sampler import Activity
from ..policy.culling import (
    CullAction,
    CullDecision,
    ServerActivity,
    decide_cull,
    settings_for,
)
from .hubapi import HubAPI, HubAPIError, HubServer, ServerUnknown

log = logging.getLogger("gpuhub.culler")

CULL_REASONS = frozenset({EndReason.CULLED_IDLE, EndReason.CULLED_GPU_IDLE, EndReason.MAX_AGE})
"""The stop reasons the culler asks for (budget stops are metering's)."""

REPORT_FRESH = timedelta(minutes=5)
"""A GPU report older than this says nothing about now (the extension stopped reporting)."""


@dataclass
class CullerStatus:
    cycles: int = 0
    culled: Counter[str] = field(default_factory=Counter)
    """Servers stopped, per reason."""
    warned: int = 0
    """Servers warned (once per warning: the cycles that rewrite it do not count)."""
    last_cycle_at: datetime | None = None
    last_cycle_seconds: float = 0.0


@dataclass(frozen=True)
class Considered:
    """One server of a cycle and what was decided."""

    user: str
    server_name: str
    session_id: int | None
    decision: CullDecision
    stop_requested: str | None = None
    """The reason of a stop the service asked for earlier and the server has not ended yet."""


def gpu_label(catalog: Catalog, session: UsageSession) -> str:
    """'1x NVIDIA H100 80GB', or '' for a CPU server."""
    if not session.gpu_count or not session.gpu_type:
        return ""
    known = catalog.gpu_types.get(session.gpu_type)
    return f"{session.gpu_count}x {known.display_name if known else session.gpu_type}"


def activity_of(
    catalog: Catalog,
    server: HubServer,
    session: UsageSession | None,
    record: ActivityRecord | None,
    budget_stop_at: datetime | None,
    now: datetime,
) -> ServerActivity:
    """The policy's view of one server, from the hub's listing, its session and its report."""
    run = (session.run_started_at or session.started_at) if session else None
    started = run or _parse(server.started) or now  # a split session's run began earlier
    fresh = record is not None and now - record.state.reported_at <= REPORT_FRESH
    state = record.state if record is not None else None
    return ServerActivity(
        started=started,
        last_activity=_parse(server.last_activity),
        gpu_count=session.gpu_count if session else 0,
        gpu_label=gpu_label(catalog, session) if session else "",
        gpu_busy=bool(fresh and state and state.gpu_activity is Activity.BUSY),
        gpu_idle_since=state.gpu_idle_since if fresh and state and state.idle else None,
        kept_at=state.kept_at if state else None,
        budget_stop_at=budget_stop_at if session and session.gpu_count else None,
        reclaim_at=session.reclaim_at if session else None,
        reclaim_for=reclaim_for_name(catalog, session),
    )


def reclaim_for_name(catalog: Catalog, session: UsageSession | None) -> str:
    """The team a borrowed server's GPUs are reclaimed for, as people read it ('' if none)."""
    team = session.reclaim_for if session is not None else None
    if not team:
        return ""
    entry = catalog.teams.get(team)
    return (entry.display_name or team) if entry is not None else team


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def budget_stops(ledger: Ledger, catalog: Catalog) -> dict[str, datetime]:
    """Team -> when its GPU servers are stopped for its spent budget (teams over budget with a
    `stop_running_over_budget_after`)."""
    stops = {}
    for team, _used, since in ledger.over_budget(catalog):
        grace = catalog.teams[team].quota.stop_running_over_budget_after
        if grace is not None:
            stops[team] = since + grace
    return stops


def consider(
    catalog: Catalog,
    server: HubServer,
    session: UsageSession | None,
    records: dict[int, ActivityRecord],
    stops: dict[str, datetime],
    now: datetime,
) -> Considered:
    """The decision about one listed server, from its session, report and team's budget."""
    record = records.get(session.id) if session else None
    stop_at = stops.get(session.team or "") if session else None
    profile = session.profile if session else ""
    settings = settings_for(catalog, profile, session.gpu_count if session else 0)
    view = activity_of(catalog, server, session, record, stop_at, now)
    return Considered(
        server.user,
        server.name,
        session.id if session else None,
        decide_cull(view, settings, now),
        session.stop_reason if session else None,
    )


class Culler:
    def __init__(self, hub: HubAPI, ledger: Ledger, *, concurrency: int = 10) -> None:
        self.hub = hub
        self.ledger = ledger
        self.activity = ActivityLedger(ledger)
        self.status = CullerStatus()
        self._limit = asyncio.Semaphore(concurrency)

    async def cycle(self, catalog: Catalog, now: datetime) -> list[Considered]:
        """One culling pass over every ready server the hub lists."""
        started = asyncio.get_running_loop().time()
        listed = [s for s in await self.hub.running_servers() if s.ready and not s.pending]
        sessions = {(s.user, s.server_name): s for s in self.ledger.open_sessions()}
        records = self.activity.records([s.id for s in sessions.values()])
        stops = budget_stops(self.ledger, catalog)
        considered = [
            consider(catalog, server, sessions.get((server.user, server.name)), records, stops, now)
            for server in listed
        ]
        await asyncio.gather(*(self._act(c, records) for c in considered))
        self.status.cycles += 1
        self.status.last_cycle_at = now
        self.status.last_cycle_seconds = asyncio.get_running_loop().time() - started
        return considered

    async def _act(self, considered: Considered, records: dict[int, ActivityRecord]) -> None:
        record = records.get(considered.session_id) if considered.session_id else None
        reason = record_decision(self.ledger, self.activity, considered, record)
        if considered.decision.action is CullAction.WARN and record and record.warning is None:
            self.status.warned += 1  # a server's first warning (later cycles rewrite it)
        if reason is not None:
            await self._stop(considered, reason)

    async def _stop(self, considered: Considered, reason: EndReason) -> None:
        who = f"{considered.user}/{considered.server_name}"
        async with self._limit:
            try:
                await self.hub.stop_server(considered.user, considered.server_name)
            except ServerUnknown:
                return
            except HubAPIError as exc:
                log.error("culler: stopping %s failed (%s); trying again next cycle", who, exc)
                return
        log.info("culler: stopped %s (%s): %s", who, reason.value, considered.decision.message)
        self.status.culled[reason.value] += 1


def record_decision(
    ledger: Ledger,
    activity: ActivityLedger,
    considered: Considered,
    record: ActivityRecord | None,
) -> EndReason | None:
    """Write what a decision means in the ledger: the reason on a session about to be culled
    (and the message its user reads after), the warning of one about to be, no warning for the
    rest; a cull asked for earlier (whose stop failed) and no longer decided (kept, busy again)
    is withdrawn, so the session ends with what really ends it. Returns the reason to stop the
    server now, if any (budget stops are the budget stage's, service/metering.py)."""
    decision, session = considered.decision, considered.session_id
    culling = decision.action is CullAction.CULL and decision.reason is not None
    if session is not None and not culling and considered.stop_requested in CULL_REASONS:
        ledger.withdraw_stop(session, CULL_REASONS)
    if decision.action is CullAction.CULL and decision.reason is not None:
        if decision.reason is EndReason.BUDGET:
            return None
        if session is not None:
            ledger.request_stop(session, decision.reason)
            at = decision.cull_at or ledger.clock()
            activity.warn(session, CullWarning(decision.message, at, decision.reason.value))
        return decision.reason
    if decision.action is CullAction.WARN and session is not None and decision.cull_at:
        reason = decision.reason.value if decision.reason else ""
        warning = CullWarning(decision.message, decision.cull_at, reason)
        if record is not None and record.warning != warning:
            activity.warn(session, warning)
    elif record is not None and record.warning is not None and session is not None:
        activity.warn(session, None)
    return None
