"""Reconciliation: compare the ledger's open sessions with the servers really running, and say
what to record. Pure; the gpuhub service gathers the inputs and applies the result.

A running server *claims* an open session when the session is its own: the session key it
carries names a session of the same user and server name, or (the key is unknown, or names
another server's session) an open session of the same user and server name records the same
runtime reference (an adopted one). Actions name sessions by the ledger's own ids.

- claimed, started                  -> seen now (billing goes on; a later loss costs < one tick)
- claimed, never marked started     -> started at the server's own start (the hub died between
                                       starting it and recording that), and seen
- open, started, not claimed        -> closed at its last-seen time (node lost / hub crashed),
                                       once it has gone unseen for a whole tick (a server that
                                       just started may not be visible to the observer yet); but
                                       while the hub still lists that server (it is stopping it,
                                       or its poll has yet to notice), the hub closes it at the
                                       right time with the right reason: only after `grace`
- open, never started, not claimed,
  admitted longer ago than `grace`  -> closed as failed (the hub died mid-spawn)
- running, claims nothing, and its session was closed by reconciliation, is unknown, or is
  another server's                  -> adopted: a new session, from the server's labels or state,
                                       starting no earlier than its own closed session ended,
                                       nor than any session billed at its runtime reference
                                       ended (an orphan adopted before, whose session a new
                                       spawn of the same server closed while it ran on)
- running, claims nothing, its session was closed by the hub (being stopped)
                                    -> nothing for `grace`; still running after that (the stop
                                       failed), adopted from when that session ended

Applied once, these leave exactly one open session per running server; applied again to the
result, they change nothing but `seen` (tests/ledger/test_reconcile.py feeds them their output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from ..end_reason import EndReason
from ..wire import ServerSummary
from .rules import reconcile_end


@dataclass(frozen=True)
class OpenSession:
    id: int
    uid: str
    """The key servers carry (wire.py)."""
    requested_at: datetime
    started_at: datetime | None
    last_seen_at: datetime | None
    user: str
    server_name: str
    runtime_ref: str | None


@dataclass(frozen=True)
class ClosedSession:
    """A closed session that a running server names."""

    uid: str
    ended_at: datetime
    reason: EndReason
    user: str
    server_name: str


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

    session: str | None
    """The key of the session it carries (None: none, or unreadable)."""
    started_at: datetime
    runtime_ref: str

    @classmethod
    def of(
        cls,
        summary: ServerSummary,
        *,
        user: str,
        server_name: str,
        session: str | None,
        started_at: datetime,
        runtime_ref: str,
    ) -> RunningServer:
        return cls(
            user=user,
            server_name=server_name,
            team=summary.team,
            profile=summary.profile,
            gpu_type=summary.gpu_type,
            gpu_count=summary.gpu_count,
            price_per_hour=summary.price_per_hour,
            currency=summary.currency,
            session=session,
            started_at=started_at,
            runtime_ref=runtime_ref,
        )


@dataclass(frozen=True)
class Close:
    session_id: int
    at: datetime
    reason: EndReason


@dataclass(frozen=True)
class Start:
    """A session whose server runs but whose start was never recorded."""

    session: str
    """Its key (Ledger.mark_started takes keys, as the hub records starts by them)."""
    at: datetime
    runtime_ref: str


@dataclass(frozen=True)
class Adopt:
    server: RunningServer
    start: datetime


@dataclass(frozen=True)
class Actions:
    seen: tuple[int, ...] = ()
    close: tuple[Close, ...] = ()
    adopt: tuple[Adopt, ...] = field(default_factory=tuple)
    start: tuple[Start, ...] = ()


BY_RECONCILIATION = frozenset({EndReason.NODE_LOST, EndReason.RECONCILED})
"""End reasons of sessions closed because their server was found gone."""


def _same_server(server: RunningServer, user: str, server_name: str) -> bool:
    return server.user == user and server.server_name == server_name


def _given(moment: datetime | None) -> tuple[datetime, ...]:
    return () if moment is None else (moment,)


def reconcile(
    open_sessions: Sequence[OpenSession],
    running: Sequence[RunningServer],
    closed: Mapping[str, ClosedSession],
    now: datetime,
    *,
    lost_reason: EndReason = EndReason.NODE_LOST,
    grace: timedelta = timedelta(minutes=10),
    tick: timedelta = timedelta(0),
    observed_at: datetime | None = None,
    listed: frozenset[tuple[str, str]] = frozenset(),
    billed_until: Mapping[str, datetime] | None = None,
) -> Actions:
    """`closed`: the closed sessions that running servers name, by key; `grace`: how long an
    admitted session may take to start, and a stopped server to go; `observed_at`: when
    `running` was listed. Sessions that started after it are not judged (the list could not
    show them).
    `listed`: (user, server name) of the servers the hub lists as active. `billed_until`: per
    runtime reference of a running server, when the last closed, billed session there ended."""
    billed_until = billed_until or {}
    by_key = {s.uid: s for s in open_sessions}
    by_ref = {s.runtime_ref: s for s in open_sessions if s.runtime_ref}
    claimed: set[int] = set()
    seen: list[int] = []
    starts: list[Start] = []
    adopt: list[Adopt] = []
    for server in running:
        session = by_key.get(server.session) if server.session else None
        if session is None or not _same_server(server, session.user, session.server_name):
            session = by_ref.get(server.runtime_ref)
            if session is not None and not _same_server(server, session.user, session.server_name):
                session = None
        if session is not None and session.id not in claimed:
            claimed.add(session.id)
            seen.append(session.id)
            if session.started_at is None:
                starts.append(Start(session.uid, server.started_at, server.runtime_ref))
            continue
        own = closed.get(server.session) if server.session else None
        if own is not None and not _same_server(server, own.user, own.server_name):
            own = None
        floor = [server.started_at, *_given(billed_until.get(server.runtime_ref))]
        if own is None:
            adopt.append(Adopt(server, max(floor)))
        elif own.reason in BY_RECONCILIATION or now - own.ended_at >= grace:
            adopt.append(Adopt(server, max(*floor, own.ended_at)))
    close: list[Close] = []
    for session in open_sessions:
        if session.id in claimed:
            continue
        if session.started_at is not None:
            if observed_at is not None and session.started_at > observed_at:
                continue
            end = reconcile_end(session.last_seen_at, session.started_at, now)
            wait = grace if (session.user, session.server_name) in listed else tick
            if now - end >= wait:
                close.append(Close(session.id, end, lost_reason))
        elif now - session.requested_at >= grace:
            if observed_at is not None and session.requested_at > observed_at:
                continue
            close.append(Close(session.id, session.requested_at, EndReason.FAILED))
    return Actions(tuple(seen), tuple(close), tuple(adopt), tuple(starts))
