"""One metering tick of the gpuhub service: reconcile the ledger with what runs, find servers that
run without the hub knowing them (strays), and stop the GPU servers of teams over budget. The
decisions are pure (ledger/reconcile.py, ledger/rules.py, `strays` here); this module applies
them to the ledger and asks the hub (or the runtime) to stop servers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..catalog import Catalog
from ..end_reason import EndReason
from ..ledger.models import UsageSession
from ..ledger.reconcile import Actions, OpenSession, RunningServer, reconcile
from ..ledger.rules import over_budget_grace_over
from ..ledger.store import Ledger

log = logging.getLogger("gpuhub.service")


def open_sessions(rows: Sequence[UsageSession]) -> list[OpenSession]:
    return [
        OpenSession(
            s.id,
            s.uid,
            s.requested_at,
            s.started_at,
            s.last_seen_at,
            s.user,
            s.server_name,
            s.runtime_ref,
        )
        for s in rows
    ]


def reconcile_once(
    ledger: Ledger,
    running: Sequence[RunningServer],
    *,
    observed_at: datetime,
    lost_reason: EndReason = EndReason.NODE_LOST,
    tick: timedelta = timedelta(0),
    grace: timedelta = timedelta(minutes=10),
    listed: frozenset[tuple[str, str]] = frozenset(),
) -> Actions:
    """Decide (ledger/reconcile.py) and record, for the sessions of the ledger handle's install.
    `running` (that install's servers) was listed at `observed_at`, before the ledger is read
    here, so a session admitted meanwhile is not judged; `listed` are the servers the hub lists
    as active."""
    named = [s.session for s in running if s.session is not None]
    rows = ledger.open_sessions()
    if any(row.install is None for row in rows):  # sessions from before installs: rare
        ledger.claim(named, [s.runtime_ref for s in running])
    actions = reconcile(
        open_sessions(rows),
        running,
        ledger.closed(named),
        ledger.clock(),
        lost_reason=lost_reason,
        tick=tick,
        grace=grace,
        observed_at=observed_at,
        listed=listed,
        billed_until=ledger.billed_until([s.runtime_ref for s in running]),
    )
    apply(ledger, actions, observed_at)
    return actions


def apply(ledger: Ledger, actions: Actions, observed_at: datetime) -> None:
    for start in actions.start:
        log.warning(
            "metering: session %s runs (%s) but its start was never recorded; billed from %s",
            start.session,
            start.runtime_ref,
            start.at,
        )
        ledger.mark_started(start.session, start.runtime_ref, at=start.at)
    ledger.seen(actions.seen, observed_at)
    for close in actions.close:
        log.warning(
            "metering: session %s closed at %s (%s)", close.session_id, close.at, close.reason
        )
        ledger.close(close.session_id, close.reason, close.at)
    for adopt in actions.adopt:
        new_id = ledger.adopt(adopt.server, adopt.start)
        log.warning(
            "metering: adopted running server %s of %s as session %s, billed from %s",
            adopt.server.runtime_ref,
            adopt.server.user,
            new_id,
            adopt.start,
        )


@dataclass(frozen=True)
class Listed:
    """What the hub lists about one of its servers, for telling strays apart."""

    user: str
    server_name: str
    runtime_ref: str | None
    """Where the hub's spawner says it runs (None while it does not know yet)."""


def strays(
    running: Iterable[RunningServer],
    listed: Iterable[Listed],
    now: datetime,
    grace: timedelta,
) -> list[RunningServer]:
    """Pure: servers that run, started longer than `grace` ago, where the hub lists none: not
    at their runtime reference, and not as a server of that user and name still starting."""
    refs = {item.runtime_ref for item in listed if item.runtime_ref}
    starting = {(item.user, item.server_name) for item in listed if not item.runtime_ref}
    return [
        server
        for server in running
        if server.runtime_ref not in refs
        and (server.user, server.server_name) not in starting
        and now - server.started_at >= grace
    ]


Stop = Callable[[UsageSession], Awaitable[None]]


async def enforce_budgets(ledger: Ledger, catalog: Catalog, stop: Stop) -> list[int]:
    """Ask for the running GPU servers (of the ledger handle's install) of teams over budget
    whose grace period is over to stop.
    Each session records the request (reason `budget`) and stays open, so it is billed until its
    server is really gone; a stop that fails is asked again on the next tick. A team no longer
    stopping (under budget again, its budget raised) has its requests withdrawn, so a server
    its user stops later ends as `stopped`. Returns the sessions asked for."""
    asked = []
    now = ledger.clock()
    stopping = {
        team: used
        for team, used, since in ledger.over_budget(catalog)
        if over_budget_grace_over(catalog.teams[team].quota, used, since, now)
    }
    for withdrawn in ledger.withdraw_budget_stops(stopping):
        log.info("metering: session %s is no longer stopped for its budget", withdrawn)
    for team, used in stopping.items():
        for session in ledger.open_gpu_sessions(team):
            if not ledger.request_stop(session.id, EndReason.BUDGET):
                continue
            log.warning(
                "metering: team %s is over budget (%s GPU-hours); stopping %s/%s (session %s)",
                team,
                used,
                session.user,
                session.server_name,
                session.id,
            )
            try:
                await stop(session)
            except Exception as exc:
                log.error(
                    "metering: stopping session %s failed (%s); trying again", session.id, exc
                )
            asked.append(session.id)
    return asked
