"""Reconciliation: compare the ledger's open sessions with the servers really running, and say
what to record. Pure; hub/metering.py gathers the inputs and applies the result.

- open, started, running           -> seen now (billing goes on; a later loss costs < one tick)
- open, started, not running       -> closed at its last-seen time (node lost / hub crashed),
                                      once it has gone unseen for a whole tick (a server that
                                      just started may not be visible to the observer yet)
- open, never started, not running,
  admitted longer ago than `grace` -> closed as failed (the hub died mid-spawn)
- running, but its session was closed by reconciliation, or is unknown -> a new session, from
  the server's labels, starting no earlier than the closed session ended (never billed twice)
- running, but its session was closed by the hub (it is being stopped) -> nothing
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from .models import EndReason
from .rules import reconcile_end


@dataclass(frozen=True)
class OpenSession:
    id: int
    requested_at: datetime
    started_at: datetime | None
    last_seen_at: datetime | None


@dataclass(frozen=True)
class Server:
    """What a session records about its server: whose, which profile and GPUs, at what price."""

    user: str
    server_name: str
    team: str | None
    profile: str
    gpu_type: str | None
    gpu_count: int
    price_per_hour: Decimal
    """Of the whole server (all its GPUs) per hour."""
    currency: str


@dataclass(frozen=True)
class RunningServer(Server):
    """A server seen running, described by its labels and annotations (or spawner state)."""

    session_id: int | None
    started_at: datetime
    runtime_ref: str


@dataclass(frozen=True)
class Close:
    session_id: int
    at: datetime
    reason: EndReason


@dataclass(frozen=True)
class Adopt:
    server: RunningServer
    start: datetime


@dataclass(frozen=True)
class Actions:
    seen: tuple[int, ...] = ()
    close: tuple[Close, ...] = ()
    adopt: tuple[Adopt, ...] = field(default_factory=tuple)


def reconcile(
    open_sessions: Sequence[OpenSession],
    running: Sequence[RunningServer],
    closed_ends: Mapping[int, datetime],
    now: datetime,
    *,
    stopping: frozenset[int] = frozenset(),
    lost_reason: EndReason = EndReason.NODE_LOST,
    grace: timedelta = timedelta(minutes=10),
    tick: timedelta = timedelta(0),
    observed_at: datetime | None = None,
) -> Actions:
    """`closed_ends`: end times of sessions closed by reconciliation that running servers name;
    `stopping`: sessions the hub closed itself whose servers are still on their way out;
    `observed_at`: when `running` was listed. Sessions that started after it are not judged (the
    list could not show them)."""
    running_ids = {s.session_id for s in running if s.session_id is not None}
    open_ids = {s.id for s in open_sessions}
    seen: list[int] = []
    close: list[Close] = []
    for session in open_sessions:
        if session.id in running_ids:
            seen.append(session.id)
        elif session.started_at is not None:
            if observed_at is not None and session.started_at > observed_at:
                continue
            end = reconcile_end(session.last_seen_at, session.started_at, now)
            if now - end >= tick:
                close.append(Close(session.id, end, lost_reason))
        elif now - session.requested_at >= grace:
            close.append(Close(session.id, session.requested_at, EndReason.FAILED))
    adopt = [
        Adopt(
            server,
            max(server.started_at, closed_ends.get(server.session_id or -1, server.started_at)),
        )
        for server in running
        if server.session_id not in open_ids and server.session_id not in stopping
    ]
    return Actions(tuple(seen), tuple(close), tuple(adopt))
