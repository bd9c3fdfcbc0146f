"""The session lifecycle: open (adopt), started, seen, stop requested, closed, and what was billed.

Every close goes through `close_row`, which keeps the team's monthly totals the sum of its
sessions. Admission (quota, cap, budget and their locks) is in admission.py.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..end_reason import EndReason
from .base import LedgerBase
from .models import TeamMonthUsage, UsageSession
from .reconcile import BY_RECONCILIATION, ClosedSession, RunningServer, Server
from .rules import billed_seconds, month_pieces, reconcile_end, session_cost


@dataclass(frozen=True)
class BilledTotal:
    """What closed sessions billed, per team, GPU type and currency."""

    team: str | None
    gpu_type: str | None
    currency: str
    gpu_seconds: int
    cost: Decimal


@dataclass(frozen=True)
class ServerRef:
    """Which server the hub saw end: whose, and what it carried (its session key, where it ran)."""

    user: str
    server_name: str
    session: str | None
    runtime_ref: str | None


def end_reason_of(value: str | None) -> EndReason:
    try:
        return EndReason(value or "")
    except ValueError:
        return EndReason.STOPPED


class SessionLog(LedgerBase):
    """Usage sessions from admission to close: what the hub and the service record as servers
    start, run and end."""

    def mark_started(
        self, session: str, runtime_ref: str | None = None, at: datetime | None = None
    ) -> None:
        """Billing starts at `at` (default now) for the session of key `session`: the server
        runs with its GPUs bound. A session already started (reconciliation saw its server
        first) keeps its earlier start."""
        now = at or self.clock()
        with self.engine.begin() as db:  # one statement: no ORM session needed (a storm's cost)
            db.execute(
                update(UsageSession)
                .where(
                    UsageSession.uid == session,
                    UsageSession.ended_at.is_(None),
                    UsageSession.started_at.is_(None),
                )
                .values(started_at=now, last_seen_at=now, runtime_ref=runtime_ref)
            )

    def close(self, session_id: int, reason: EndReason, at: datetime | None = None) -> None:
        """Billing ends at `at` (default now). Idempotent: a closed session stays as it was."""
        with self._sessions.begin() as db:
            row = db.get(UsageSession, session_id)
            if row is not None and row.ended_at is None:
                close_row(db, row, at or self.clock(), reason)

    def close_server(
        self,
        server: ServerRef,
        reason: EndReason,
        *,
        found_gone: bool = False,
        at: datetime | None = None,
        correct_earlier_end: bool = False,
    ) -> list[int]:
        """The hub saw this server end: close its open sessions, the one whose key it carries
        and one reconciliation adopted for it (same runtime reference), but never a session of
        another server (the key and the runtime reference are only trusted for this user and
        server name).

        Billing ends at `at` (default now): the hub saw the server run until then. With
        `correct_earlier_end` (the hub's stop record waited out a billing-database outage, and
        the service ticked meanwhile), a session of it that reconciliation already closed
        earlier is corrected to end at `at` too, no later than the server's next session was
        admitted: the hub's record of the stop is exact, reconciliation's last-seen time only a
        lower bound. Only then: at other times a pod of the same name may run again, and the
        hub's belief that it stopped a running server is not evidence enough.
        When the server is `found_gone` (it may have died long before), billing ends at the
        last time it was seen running (never later than `at`) and nothing closed is touched.
        A reason the gpuhub service asked the stop for (budget, culling) wins over `stopped`.
        Idempotent; returns the ids closed or corrected."""
        now = at or self.clock()
        mine = (
            (UsageSession.user == server.user)
            & (UsageSession.server_name == server.server_name)
            & of_install(self.install)
        )
        which = UsageSession.uid == (server.session or "")
        if server.runtime_ref:
            which = which | (UsageSession.runtime_ref == server.runtime_ref)
        with self._sessions.begin() as db:
            rows = db.scalars(
                select(UsageSession).where(mine, which, UsageSession.ended_at.is_(None))
            ).all()
            for row in rows:
                at = reconcile_end(row.last_seen_at, row.started_at, now) if found_gone else now
                close_row(db, row, at, reason)
            corrected = (
                _correct_early_ends(db, mine & which, now, reason)
                if correct_earlier_end and not found_gone
                else []
            )
            return [row.id for row in rows] + corrected

    def request_stop(self, session_id: int, reason: EndReason) -> bool:
        """Record why the service asks for this session's server to stop (the session stays
        open, and billed, until the server is gone). False if it is closed already."""
        with self._sessions.begin() as db:
            row = db.get(UsageSession, session_id)
            if row is None or row.ended_at is not None:
                return False
            if row.stop_reason is None:
                row.stop_reason = reason.value
                row.stop_requested_at = self.clock()
            return True

    def withdraw_stop(self, session_id: int, reasons: Collection[EndReason]) -> bool:
        """The service no longer asks for this session's server to stop (Keep was clicked, its
        GPU is busy again): forget a request made for one of `reasons`, so that the session
        ends with what really ends it. False if there was no such request (or it is closed)."""
        with self._sessions.begin() as db:
            result = db.execute(
                update(UsageSession)
                .where(
                    UsageSession.id == session_id,
                    UsageSession.ended_at.is_(None),
                    UsageSession.stop_reason.in_([r.value for r in reasons]),
                )
                .values(stop_reason=None, stop_requested_at=None)
            )
            return bool(getattr(result, "rowcount", 0))

    def withdraw_budget_stops(self, still_stopping: Collection[str]) -> list[int]:
        """Budget stops of teams not in `still_stopping` (under budget again, a budget raised,
        the grace period not over by the catalog in force) are no longer asked for: forgotten
        on their open sessions, which end as `stopped` if their user stops them. Returns those
        sessions."""
        u = UsageSession
        which = (
            u.ended_at.is_(None)
            & (u.stop_reason == EndReason.BUDGET.value)
            & u.team.not_in(sorted(still_stopping))
            & of_install(self.install)
        )
        with self._sessions.begin() as db:
            ids = list(db.scalars(select(u.id).where(which)))
            if ids:
                db.execute(
                    update(u).where(u.id.in_(ids)).values(stop_reason=None, stop_requested_at=None)
                )
            return ids

    def claim(self, sessions: Sequence[str], runtime_refs: Sequence[str]) -> int:
        """Open sessions of no install (opened before installs were told apart) that this
        install's running servers carry (by key) or run at (by runtime reference) become this
        install's, so that no other install sharing the database reads them as its own any more.
        Returns how many."""
        if self.install is None or not (sessions or runtime_refs):
            return 0
        u = UsageSession
        named = u.uid.in_(sorted(set(sessions))) | u.runtime_ref.in_(sorted(set(runtime_refs)))
        with self._sessions.begin() as db:
            result = db.execute(
                update(u)
                .where(u.install.is_(None), u.ended_at.is_(None), named)
                .values(install=self.install)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def seen(self, session_ids: Sequence[int], at: datetime | None = None) -> None:
        """Record that these sessions' servers were seen running at `at`."""
        if not session_ids:
            return
        with self._sessions.begin() as db:
            db.execute(
                update(UsageSession)
                .where(UsageSession.id.in_(session_ids), UsageSession.ended_at.is_(None))
                .values(last_seen_at=at or self.clock())
            )

    def adopt(self, server: RunningServer, start: datetime) -> str:
        """Open a started session (of this handle's install) for a running server the ledger
        has no open session for; its key."""
        with self._sessions.begin() as db:
            row = new_session(
                server,
                requested_at=start,
                started_at=start,
                last_seen_at=self.clock(),
                runtime_ref=server.runtime_ref,
                catalog_version="",
                install=self.install,
            )
            db.add(row)
            db.flush()
            return row.uid

    def closed(self, sessions: Sequence[str]) -> dict[str, ClosedSession]:
        """Those of the sessions of keys `sessions` that are closed, by key."""
        if not sessions:
            return {}
        with self._reads() as db:
            rows = db.execute(
                select(
                    UsageSession.uid,
                    UsageSession.ended_at,
                    UsageSession.end_reason,
                    UsageSession.user,
                    UsageSession.server_name,
                ).where(UsageSession.uid.in_(sessions), UsageSession.ended_at.is_not(None))
            )
            return {
                sid: ClosedSession(sid, ended, end_reason_of(why), user, name)
                for sid, ended, why, user, name in rows
                if ended
            }

    def billed_until(self, runtime_refs: Sequence[str]) -> dict[str, datetime]:
        """Per runtime reference of `runtime_refs`, when its last closed, billed session ended
        (an adoption there starts no earlier)."""
        if not runtime_refs:
            return {}
        u = UsageSession
        query = (
            select(u.runtime_ref, func.max(u.ended_at))
            .where(
                u.runtime_ref.in_(sorted(set(runtime_refs))),
                u.started_at.is_not(None),
                u.ended_at.is_not(None),
            )
            .group_by(u.runtime_ref)
        )
        with self._reads() as db:
            return {ref: ended for ref, ended in db.execute(query) if ref and ended}

    def open_sessions(self, *, every_install: bool = False) -> list[UsageSession]:
        """The install's open sessions (see `install`); with `every_install`, those of every
        install sharing the database (what a report on a team reads: a team is one team on
        every hub)."""
        query = select(UsageSession).where(
            UsageSession.ended_at.is_(None), of_install(None if every_install else self.install)
        )
        with self._reads() as db:
            return list(db.scalars(query))

    def billed_totals(self) -> list[BilledTotal]:
        """GPU-seconds and cost of every closed session, per team, GPU type and currency."""
        u = UsageSession
        query = (
            select(u.team, u.gpu_type, u.currency, func.sum(u.gpu_seconds), func.sum(u.cost))
            .where(u.ended_at.is_not(None), u.started_at.is_not(None))
            .group_by(u.team, u.gpu_type, u.currency)
        )
        with self._reads() as db:
            return [
                BilledTotal(team, gpu_type, currency, int(seconds or 0), Decimal(cost or 0))
                for team, gpu_type, currency, seconds, cost in db.execute(query)
            ]

    def session_of(self, user: str, server_name: str, session: str) -> UsageSession | None:
        """The session of key `session`, if it is this user's server's (a key another server
        carries, e.g. in a state restored from elsewhere, finds nothing)."""
        u = UsageSession
        query = select(u).where(u.uid == session, u.user == user, u.server_name == server_name)
        with self._reads() as db:
            return db.scalars(query).first()

    def session(self, session_id: int) -> UsageSession | None:
        with self._reads() as db:
            return db.get(UsageSession, session_id)

    def open_session_of(self, user: str, server_name: str) -> UsageSession | None:
        """The running (started, not ended) session of a user's server; the newest if several."""
        with self._reads() as db:
            return db.scalars(running_session(user, server_name, self.install)).first()

    def last_session(self, user: str, server_name: str) -> UsageSession | None:
        """The newest session of a user's server."""
        u = UsageSession
        query = (
            select(u)
            .where(u.user == user, u.server_name == server_name, of_install(self.install))
            .order_by(u.id.desc())
            .limit(1)
        )
        with self._reads() as db:
            return db.scalars(query).first()

    def open_gpu_sessions(self, team: str) -> list[UsageSession]:
        """The team's open GPU sessions of this install."""
        with self._reads() as db:
            return list(
                db.scalars(
                    select(UsageSession).where(
                        UsageSession.team == team,
                        UsageSession.ended_at.is_(None),
                        UsageSession.gpu_count > 0,
                        of_install(self.install),
                    )
                )
            )


def of_install(install: str | None) -> Any:
    """The condition 'a session of `install`': its own and those from before installs were
    told apart (NULL); every session when `install` is None."""
    if install is None:
        return true()
    return (UsageSession.install == install) | UsageSession.install.is_(None)


def new_session(server: Server, **times_and_refs: Any) -> UsageSession:
    """A session row for a server described by a spawn request or by what is seen running."""
    return UsageSession(
        user=server.user,
        team=server.team,
        server_name=server.server_name,
        profile=server.profile,
        gpu_type=server.gpu_type,
        gpu_count=server.gpu_count,
        price_per_hour=server.price_per_hour,
        currency=server.currency,
        **times_and_refs,
    )


def close_row(db: Session, row: UsageSession, at: datetime, reason: EndReason) -> None:
    """End a session, or move the end of an ended one later: its bill, and the GPU-seconds it
    adds to its team's monthly totals (only what they do not count yet, so they stay the sum of
    the sessions). A session whose stop the service requested ends with that request's reason."""
    if row.stop_reason and row.started_at is not None:
        reason = end_reason_of(row.stop_reason)
    counted: dict[str, int] = {}
    if row.started_at is not None and row.ended_at is not None:
        counted = dict(month_pieces(row.started_at, row.ended_at, row.gpu_count))
    end = max(at, row.started_at) if row.started_at else at
    seconds = billed_seconds(row.started_at, end)
    row.ended_at = end
    row.end_reason = reason.value
    row.gpu_seconds = seconds * row.gpu_count
    row.cost = session_cost(row.price_per_hour, seconds)
    if row.team is None or row.started_at is None or row.gpu_count == 0:
        return
    for month, gpu_seconds in month_pieces(row.started_at, end, row.gpu_count):
        if gpu_seconds > counted.get(month, 0):
            _add_month_usage(db, row.team, month, gpu_seconds - counted.get(month, 0))


def _correct_early_ends(db: Session, which: Any, at: datetime, reason: EndReason) -> list[int]:
    """Sessions of `which` that reconciliation closed before `at`: moved to end at `at`, no
    later than their server's next session was admitted."""
    by_reconciliation = [r.value for r in BY_RECONCILIATION]
    early = db.scalars(
        select(UsageSession).where(
            which,
            UsageSession.started_at.is_not(None),
            UsageSession.ended_at < at,
            UsageSession.end_reason.in_(by_reconciliation),
        )
    ).all()
    corrected = []
    for row in early:
        assert row.started_at is not None and row.ended_at is not None
        next_start = db.scalar(
            select(func.min(UsageSession.requested_at)).where(
                UsageSession.user == row.user,
                UsageSession.server_name == row.server_name,
                UsageSession.id != row.id,
                UsageSession.requested_at >= row.requested_at,
                # an earlier part of the same run (split off when it became own) is no next
                # session: it shares the run's admission
                or_(
                    UsageSession.end_reason.is_(None),
                    UsageSession.end_reason != EndReason.SPLIT.value,
                ),
                of_install(row.install),
            )
        )
        end = min(at, next_start) if next_start is not None else at
        if end > row.ended_at:
            close_row(db, row, end, reason)
            corrected.append(row.id)
    return corrected


def running_session(
    user: str, server_name: str, install: str | None = None
) -> Select[UsageSession]:
    """The query of a user's server's running (started, not ended) session, newest first."""
    u = UsageSession
    return (
        select(u)
        .where(
            u.user == user,
            u.server_name == server_name,
            u.ended_at.is_(None),
            u.started_at.is_not(None),
            of_install(install),
        )
        .order_by(u.id.desc())
        .limit(1)
    )


def dialect_insert(db: Session) -> Any:
    """The INSERT of the session's database, with its ON CONFLICT (PostgreSQL or SQLite)."""
    return pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert


def _add_month_usage(db: Session, team: str, month: str, gpu_seconds: int) -> None:
    statement = dialect_insert(db)(TeamMonthUsage).values(
        team=team, month=month, gpu_seconds=gpu_seconds
    )
    db.execute(
        statement.on_conflict_do_update(
            index_elements=["team", "month"],
            set_={"gpu_seconds": TeamMonthUsage.gpu_seconds + statement.excluded.gpu_seconds},
        )
    )
