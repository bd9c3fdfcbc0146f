"""The ledger's I/O: admission in one locked transaction, session start/stop, usage for previews.

Calls are short synchronous transactions, as JupyterHub's own database calls are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Select, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from ..catalog import Catalog
from ..clock import Clock, utcnow
from ..end_reason import EndReason
from ..policy.admission import Decision, TeamUsage, decide_in
from .engine import READ_ONLY, check_schema, make_engine
from .models import AdmissionRefusals, TeamLock, TeamMonthUsage, UsageSession
from .reconcile import BY_RECONCILIATION, ClosedSession, RunningServer, Server
from .rules import (
    Span,
    billed_seconds,
    gpu_seconds_between,
    holdings_of,
    month_key,
    month_pieces,
    month_start,
    reconcile_end,
    session_cost,
)


@dataclass(frozen=True)
class BilledTotal:
    """What closed sessions billed, per team, GPU type and currency."""

    team: str | None
    gpu_type: str | None
    currency: str
    gpu_seconds: int
    cost: Decimal


@dataclass(frozen=True)
class RefusalCount:
    """GPU spawns refused for one team, GPU type and reason, since the ledger was created."""

    team: str
    gpu_type: str
    reason: str
    refusals: int


@dataclass(frozen=True)
class ServerRef:
    """Which server the hub saw end: whose, and what it carried (its session id, where it ran)."""

    user: str
    server_name: str
    session_id: int | None
    runtime_ref: str | None


def _reason(value: str | None) -> EndReason:
    try:
        return EndReason(value or "")
    except ValueError:
        return EndReason.STOPPED


class AdmissionRefused(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.message)
        self.decision = decision


@dataclass(frozen=True)
class Admission:
    session_id: int
    warning: str | None


@dataclass(frozen=True)
class Request(Server):
    """What admission needs to know about a spawn (a SpawnPlan has all of it)."""

    catalog_version: str


class Ledger:
    """The billing ledger at one database URL."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reads = sessionmaker(engine.execution_options(**{READ_ONLY: True}))

    @classmethod
    def open(cls, url: str, *, clock: Clock = utcnow) -> Ledger:
        """Open the ledger at `url`; raises SchemaError if its schema is missing or old."""
        engine = make_engine(url)
        try:
            check_schema(engine, url)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock=clock)

    # --- admission -------------------------------------------------------------------------

    def admit(self, catalog: Catalog, request: Request) -> Admission:
        """Record a new session if the team's quotas and budget allow it, atomically: on SQLite
        the transaction holds the database write lock, on PostgreSQL the team's lock row."""
        now = self.clock()
        with self._sessions.begin() as db:
            self._close_stale(db, request.user, request.server_name, now)
            warning = None
            if request.team is not None and request.gpu_count > 0:
                self._lock_team(db, request.team)
                decision = self._decide(db, catalog, request, now)
                if not decision.admitted:
                    raise AdmissionRefused(decision)
                warning = decision.warning
            row = _new_session(request, requested_at=now, catalog_version=request.catalog_version)
            db.add(row)
            db.flush()
            return Admission(row.id, warning)

    def _decide(self, db: Session, catalog: Catalog, request: Request, now: datetime) -> Decision:
        """The admission decision on the team's usage read in this (locked) transaction: the
        same inputs `team_usage` gives the form's preview."""
        assert request.team is not None
        team = request.team
        open_spans = self._open_spans(db, team)
        usage = TeamUsage(
            user=request.user,
            holdings=holdings_of(open_spans),
            gpu_hours_this_month=self._hours_this_month(db, team, now, open_spans),
        )
        return decide_in(
            catalog, team, usage, gpu_type=request.gpu_type, gpu_count=request.gpu_count, now=now
        )

    def _lock_team(self, db: Session, team: str) -> None:
        if db.get_bind().dialect.name == "postgresql":
            # One round trip: create the team's lock row if needed, and lock it either way
            # (ON CONFLICT DO UPDATE locks the existing row until the transaction ends).
            statement = pg_insert(TeamLock).values(team=team)
            db.execute(
                statement.on_conflict_do_update(
                    index_elements=["team"], set_={"team": statement.excluded.team}
                )
            )
        # SQLite: BEGIN IMMEDIATE already holds the database's write lock.

    def _close_stale(self, db: Session, user: str, server_name: str, now: datetime) -> None:
        """A server being started again cannot still be running: close its old session."""
        stale = db.scalars(
            select(UsageSession).where(
                UsageSession.user == user,
                UsageSession.server_name == server_name,
                UsageSession.ended_at.is_(None),
            )
        ).all()
        for row in stale:
            _close(db, row, row.last_seen_at or row.started_at or now, EndReason.RECONCILED)

    # --- lifecycle ---------------------------------------------------------------------------

    def mark_started(
        self, session_id: int, runtime_ref: str | None = None, at: datetime | None = None
    ) -> None:
        """Billing starts at `at` (default now): the server runs with its GPUs bound. A session
        already started (reconciliation saw its server first) keeps its earlier start."""
        now = at or self.clock()
        with self._sessions.begin() as db:
            db.execute(
                update(UsageSession)
                .where(
                    UsageSession.id == session_id,
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
                _close(db, row, at or self.clock(), reason)

    def close_server(
        self,
        server: ServerRef,
        reason: EndReason,
        *,
        found_gone: bool = False,
        at: datetime | None = None,
        correct_earlier_end: bool = False,
    ) -> list[int]:
        """The hub saw this server end: close its open sessions, the one whose id it carries
        and one reconciliation adopted for it (same runtime reference), but never a session of
        another server that happens to have that id (ids restart when a backup is restored).

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
        mine = (UsageSession.user == server.user) & (UsageSession.server_name == server.server_name)
        which = UsageSession.id == (server.session_id or -1)
        if server.runtime_ref:
            which = which | (UsageSession.runtime_ref == server.runtime_ref)
        with self._sessions.begin() as db:
            rows = db.scalars(
                select(UsageSession).where(mine, which, UsageSession.ended_at.is_(None))
            ).all()
            for row in rows:
                at = reconcile_end(row.last_seen_at, row.started_at, now) if found_gone else now
                _close(db, row, at, reason)
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

    def adopt(self, server: RunningServer, start: datetime) -> int:
        """Open a started session for a running server the ledger has no open session for."""
        with self._sessions.begin() as db:
            row = _new_session(
                server,
                requested_at=start,
                started_at=start,
                last_seen_at=self.clock(),
                runtime_ref=server.runtime_ref,
                catalog_version="",
            )
            db.add(row)
            db.flush()
            return row.id

    def closed(self, session_ids: Sequence[int]) -> dict[int, ClosedSession]:
        """Those of `session_ids` that are closed."""
        if not session_ids:
            return {}
        with self._reads() as db:
            rows = db.execute(
                select(
                    UsageSession.id,
                    UsageSession.ended_at,
                    UsageSession.end_reason,
                    UsageSession.user,
                    UsageSession.server_name,
                ).where(UsageSession.id.in_(session_ids), UsageSession.ended_at.is_not(None))
            )
            return {
                sid: ClosedSession(sid, ended, _reason(why), user, name)
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

    def open_sessions(self) -> list[UsageSession]:
        with self._reads() as db:
            return list(db.scalars(select(UsageSession).where(UsageSession.ended_at.is_(None))))

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

    def session(self, session_id: int) -> UsageSession | None:
        with self._reads() as db:
            return db.get(UsageSession, session_id)

    def open_session_of(self, user: str, server_name: str) -> UsageSession | None:
        """The running (started, not ended) session of a user's server; the newest if several."""
        with self._reads() as db:
            return db.scalars(running_session(user, server_name)).first()

    def last_session(self, user: str, server_name: str) -> UsageSession | None:
        """The newest session of a user's server."""
        u = UsageSession
        query = (
            select(u)
            .where(u.user == user, u.server_name == server_name)
            .order_by(u.id.desc())
            .limit(1)
        )
        with self._reads() as db:
            return db.scalars(query).first()

    # --- refusals ------------------------------------------------------------------------------

    def count_refusal(self, team: str, gpu_type: str, reason: str, at: datetime) -> None:
        """Add one refused GPU spawn to its counter (the hub calls this once per refusal)."""
        with self._sessions.begin() as db:
            statement = dialect_insert(db)(AdmissionRefusals).values(
                team=team, gpu_type=gpu_type, reason=reason, refusals=1, last_refused_at=at
            )
            db.execute(
                statement.on_conflict_do_update(
                    index_elements=["team", "gpu_type", "reason"],
                    set_={
                        "refusals": AdmissionRefusals.refusals + 1,
                        # writes arrive in order (HubContext keeps waiting ones in order)
                        "last_refused_at": statement.excluded.last_refused_at,
                    },
                )
            )

    def refusal_counts(self) -> list[RefusalCount]:
        """Every refusal counter, ordered by team, GPU type and reason."""
        r = AdmissionRefusals
        query = select(r.team, r.gpu_type, r.reason, r.refusals).order_by(
            r.team, r.gpu_type, r.reason
        )
        with self._reads() as db:
            return [RefusalCount(*row) for row in db.execute(query)]

    # --- budgets -------------------------------------------------------------------------------

    def over_budget(self, catalog: Catalog) -> list[tuple[str, Decimal, datetime]]:
        """Teams over their monthly budget now: (team, GPU-hours used, over since). Records when
        each was first seen over budget this month (cleared when it is not)."""
        now = self.clock()
        found = []
        with self._sessions.begin() as db:
            for team, entry in catalog.teams.items():
                budget = entry.quota.monthly_gpu_hours
                lock = db.get(TeamLock, team)
                used = self._hours_this_month(db, team, now)
                if budget is None or used < budget:
                    if lock is not None and lock.over_budget_since is not None:
                        lock.over_budget_since = None
                    continue
                if lock is None:
                    lock = TeamLock(team=team)
                    db.add(lock)
                since = lock.over_budget_since
                if since is None or since < month_start(now):
                    since = lock.over_budget_since = now
                found.append((team, used, since))
        return found

    def open_gpu_sessions(self, team: str) -> list[UsageSession]:
        with self._reads() as db:
            return list(
                db.scalars(
                    select(UsageSession).where(
                        UsageSession.team == team,
                        UsageSession.ended_at.is_(None),
                        UsageSession.gpu_count > 0,
                    )
                )
            )

    # --- usage -------------------------------------------------------------------------------

    async def team_usage(self, catalog: Catalog, team: str | None, user: str) -> TeamUsage:
        """UsageSource for previews: what admission would count now (the team's holdings and
        GPU-hours used this month), as `_decide` reads it."""
        if team is None:
            return TeamUsage(user=user)
        now = self.clock()
        with self._reads() as db:
            open_spans = self._open_spans(db, team)
            hours = self._hours_this_month(db, team, now, open_spans)
        return TeamUsage(user=user, holdings=holdings_of(open_spans), gpu_hours_this_month=hours)

    def gpu_hours_this_month(self, team: str) -> Decimal:
        """The team's GPU-hours this month as its budget counts them (closed and open sessions)."""
        with self._reads() as db:
            return self._hours_this_month(db, team, self.clock())

    def _open_spans(self, db: Session, team: str) -> list[Span]:
        """The team's admitted, not yet ended GPU sessions (started or not)."""
        rows = db.execute(
            select(
                UsageSession.user,
                UsageSession.gpu_type,
                UsageSession.gpu_count,
                UsageSession.started_at,
                UsageSession.ended_at,
            ).where(
                UsageSession.team == team,
                UsageSession.ended_at.is_(None),
                UsageSession.gpu_count > 0,
            )
        )
        return [Span(*row) for row in rows]

    def _hours_this_month(
        self, db: Session, team: str, now: datetime, open_spans: list[Span] | None = None
    ) -> Decimal:
        """Closed sessions' GPU-seconds this month (one row of the monthly totals) plus the
        team's open sessions up to now."""
        closed = db.scalar(
            select(TeamMonthUsage.gpu_seconds).where(
                TeamMonthUsage.team == team, TeamMonthUsage.month == month_key(now)
            )
        )
        spans = self._open_spans(db, team) if open_spans is None else open_spans
        seconds = (closed or 0) + gpu_seconds_between(spans, month_start(now), now)
        return (Decimal(seconds) / 3600).quantize(Decimal("0.001"))


def _new_session(server: Server, **times_and_refs: Any) -> UsageSession:
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


def _close(db: Session, row: UsageSession, at: datetime, reason: EndReason) -> None:
    """End a session, or move the end of an ended one later: its bill, and the GPU-seconds it
    adds to its team's monthly totals (only what they do not count yet, so they stay the sum of
    the sessions). A session whose stop the service requested ends with that request's reason."""
    if row.stop_reason and row.started_at is not None:
        reason = _reason(row.stop_reason)
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
            )
        )
        end = min(at, next_start) if next_start is not None else at
        if end > row.ended_at:
            _close(db, row, end, reason)
            corrected.append(row.id)
    return corrected


def running_session(user: str, server_name: str) -> Select[UsageSession]:
    """The query of a user's server's running (started, not ended) session, newest first."""
    u = UsageSession
    return (
        select(u)
        .where(
            u.user == user,
            u.server_name == server_name,
            u.ended_at.is_(None),
            u.started_at.is_not(None),
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


__all__ = [
    "Admission",
    "AdmissionRefused",
    "Ledger",
    "RefusalCount",
    "Request",
    "ServerRef",
    "make_engine",
]
