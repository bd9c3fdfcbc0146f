"""The admission engine: a spawn is admitted (and its session opened) only if its team's quotas,
its user's cap and the team's budget allow it, decided by policy/admission.py in one locked
transaction; refusal counters; which teams are over budget; the usage a preview counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ..catalog import Catalog
from ..end_reason import EndReason
from ..policy.admission import (
    Decision,
    Holding,
    TeamUsage,
    combine_holdings,
    decide_in,
    decide_with_borrowing,
)
from ..policy.borrowing import Loan
from ..policy.waitlist import Waiting, may_start_directly
from .admission_reads import AdmissionReads, HoldRow, read_for_admission, read_shares
from .base import LedgerBase
from .line import lock_gpu_type, read_line, same_install
from .models import (
    AdmissionRefusals,
    GPUHold,
    SessionLoan,
    TeamLock,
    UsageSession,
    WaitlistRequest,
)
from .reconcile import Server
from .rules import Span, holdings_of, month_start
from .sessions import close_row, dialect_insert, new_session, of_install
from .team_reads import hours_this_month, open_spans
from .waitlist import consume_hold


@dataclass(frozen=True)
class RefusalCount:
    """GPU spawns refused for one team, GPU type and reason, since the ledger was created."""

    team: str
    gpu_type: str
    reason: str
    refusals: int


class AdmissionRefused(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.message)
        self.decision = decision


@dataclass(frozen=True)
class Admission:
    session_id: int
    """The ledger's own id of the session (for the ledger's callers in this process)."""
    session: str
    """Its key, what the server carries (wire.py)."""
    warning: str | None


@dataclass(frozen=True)
class Request(Server):
    """What admission needs to know about a spawn (a SpawnPlan has all of it)."""

    catalog_version: str
    waitlist: str | None = None
    """The wait-list request this spawn starts (the service's start at its turn), if any: it is
    admitted only while that request holds its GPUs."""
    borrow: bool = False
    """The person chose to run on other teams' unallocated quota if their team's is full (a
    borrowed server, which may be reclaimed with notice)."""


class AdmissionEngine(LedgerBase):
    """Admission and the team-wide reads it shares with previews and budget enforcement."""

    def admit(self, catalog: Catalog, request: Request) -> Admission:
        """Record a new session if the team's quotas and budget, the free GPUs and the line
        allow it, atomically: on SQLite the transaction holds the database write lock, on
        PostgreSQL the GPU type's and then the team's lock rows. A spawn whose user holds GPUs
        from the line (its turn) uses that hold up."""
        now = self.clock()
        with self._sessions.begin() as db:
            warning = None
            own_hold: HoldRow | None = None
            loans: tuple[Loan, ...] = ()
            if request.team is not None and request.gpu_count > 0:
                self._lock(db, request.gpu_type, request.team)
                reads = self._read(db, catalog, request, now)
                if reads.stale:  # rare: the server starts again while its session is open
                    self._close_stale(db, request.user, request.server_name, now)
                    reads = self._read(db, catalog, request, now)
                own_hold = self._own_hold(db, request, reads.holds)
                decision = self._decide(db, catalog, request, now, own_hold, reads)
                if decision.admitted and own_hold is None and request.gpu_type is not None:
                    decision = (
                        self._line_decision(db, catalog, request, now, reads, decision) or decision
                    )
                if not decision.admitted:
                    raise AdmissionRefused(decision)
                warning, loans = decision.warning, decision.loans
            else:
                self._close_stale(db, request.user, request.server_name, now)
            row = new_session(
                request,
                requested_at=now,
                catalog_version=request.catalog_version,
                install=self.install,
            )
            if loans:
                factor = catalog.borrowing.price_factor if catalog.borrowing else Decimal(1)
                row.borrowed = True
                row.own_price_per_hour = request.price_per_hour
                row.price_per_hour = request.price_per_hour * factor
            db.add(row)
            db.flush()
            if row.borrowed:
                db.add_all(
                    SessionLoan(session_id=row.id, lender=loan.lender, gpus=loan.gpus)
                    for loan in loans
                )
            if own_hold is not None:
                consume_hold(db, self.install, request.user, request.server_name, row.uid, now)
            return Admission(row.id, row.uid, warning)

    def _read(
        self, db: Session, catalog: Catalog, request: Request, now: datetime
    ) -> AdmissionReads:
        assert request.team is not None
        return read_for_admission(
            db,
            catalog,
            self.install,
            team=request.team,
            user=request.user,
            server_name=request.server_name,
            gpu_type=request.gpu_type,
            now=now,
        )

    def _lock(self, db: Session, gpu_type: str | None, team: str) -> None:
        """The GPU type's lock, then the team's: one lock order everywhere (no deadlocks).
        SQLite: BEGIN IMMEDIATE holds the database already."""
        if gpu_type is not None:
            lock_gpu_type(db, gpu_type)
        self._lock_team(db, team)

    def _own_hold(self, db: Session, request: Request, holds: Sequence[HoldRow]) -> HoldRow | None:
        """The GPUs held for this server at its turn in line, if they fit this spawn. A spawn
        that names its request (the service's start) must find its hold."""
        hold = next(
            (
                h
                for h in holds
                if (h.user, h.server_name, h.install)
                == (request.user, request.server_name, self.install)
            ),
            None,
        )
        fits = (
            hold is not None
            and hold.gpu_type == request.gpu_type
            and hold.gpu_count >= request.gpu_count
            and hold.team == request.team
        )
        if request.waitlist is not None and not fits:
            ended = db.scalar(
                select(WaitlistRequest).where(WaitlistRequest.uid == request.waitlist)
            )
            state = ended.state if ended is not None else "unknown"
            raise AdmissionRefused(
                Decision(
                    False,
                    "waitlist-ended",
                    f"this server was to start from your place in line, which has ended "
                    f"({state}"
                    + (f": {ended.message}" if ended is not None and ended.message else "")
                    + "); nothing was started",
                )
            )
        return hold if fits else None

    def _line_decision(
        self,
        db: Session,
        catalog: Catalog,
        request: Request,
        now: datetime,
        reads: AdmissionReads,
        decision: Decision,
    ) -> Decision | None:
        """A refusal when no GPU of the type is free for this spawn, or others wait for the type
        and would get it first (nobody jumps the line); None when it may start."""
        assert request.gpu_type is not None and request.team is not None
        waiting_count, free = reads.waiting, reads.free
        if free is not None and free < request.gpu_count:
            # Not enough free whatever the order: refused without reading the line.
            why = _no_free(db, self.install, catalog, request, reads.capacity, free)
            return Decision(False, "no-free-gpu", why)
        if waiting_count == 0 or not catalog.waitlist.enabled:
            return None  # the common case: a few small queries, no line to read
        if decision.loans:
            # People wait for the type on their own teams' quota: they come before a borrow.
            name = _type_name(catalog, request.gpu_type)
            return Decision(
                False,
                "line",
                f"{waiting_count} {'person waits' if waiting_count == 1 else 'people wait'} "
                f"for {name} on their own teams' quota, and come before a borrowed server",
            )
        # GPUs are free while people wait (their turn is being given, or they are skipped):
        # the order says whether this spawn comes first.
        view = read_line(
            db, catalog, self.install, request.gpu_type, now, extra_teams=(request.team,)
        )
        candidate = Waiting(
            id="~direct",
            user=request.user,
            server_name=request.server_name,
            team=request.team,
            gpu_type=request.gpu_type,
            gpu_count=request.gpu_count,
            joined_at=now,
        )
        if may_start_directly(view.line, candidate):
            return None
        waiting = [w for w in view.line.waiting if not w.held]
        name = _type_name(catalog, request.gpu_type)
        return Decision(
            False,
            "line",
            f"{len(waiting)} {'person waits' if len(waiting) == 1 else 'people wait'} for "
            f"{name} and would get it before you",
        )

    def _decide(
        self,
        db: Session,
        catalog: Catalog,
        request: Request,
        now: datetime,
        own_hold: HoldRow | None,
        reads: AdmissionReads,
    ) -> Decision:
        """The admission decision on the team's usage read in this (locked) transaction: the
        same inputs `team_usage` gives the form's preview, plus the GPUs held for the team's
        people in line (not this spawn's own hold, which it uses up). When the team's own quota
        refuses it and borrowing is on, its cohort's standing for the type is read (under the
        type's lock, which every admission of the type takes first) and may lend it quota."""
        assert request.team is not None
        team = request.team
        held = [
            Holding(h.user, h.gpu_type, h.gpu_count)
            for h in reads.holds
            if h.team == team and (own_hold is None or h.request_id != own_hold.request_id)
        ]
        usage = TeamUsage(
            user=request.user,
            holdings=combine_holdings((*holdings_of(reads.spans), *held)),
            gpu_hours_this_month=reads.gpu_hours_this_month(now),
        )
        own = decide_in(
            catalog, team, usage, gpu_type=request.gpu_type, gpu_count=request.gpu_count, now=now
        )
        if own.reason != "gpu-quota" or catalog.borrowing is None or request.gpu_type is None:
            return own
        cohort = catalog.borrowing.cohort_of(team, tuple(catalog.teams))
        return decide_with_borrowing(
            catalog,
            team,
            usage,
            gpu_type=request.gpu_type,
            gpu_count=request.gpu_count,
            now=now,
            shares=read_shares(db, catalog, request.gpu_type, cohort),
            borrow=request.borrow,
        )

    def _lock_team(self, db: Session, team: str) -> None:
        if db.get_bind().dialect.name == "postgresql":
            db.execute(_team_lock_statement(), {"team": team})
        # SQLite: BEGIN IMMEDIATE already holds the database's write lock.

    def _close_stale(self, db: Session, user: str, server_name: str, now: datetime) -> None:
        """A server being started again cannot still be running: close its old session."""
        stale = db.scalars(
            select(UsageSession).where(
                UsageSession.user == user,
                UsageSession.server_name == server_name,
                UsageSession.ended_at.is_(None),
                of_install(self.install),
            )
        ).all()
        for row in stale:
            close_row(db, row, row.last_seen_at or row.started_at or now, EndReason.RECONCILED)

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
                        # writes arrive in order (the hub's ledger lane keeps waiting ones in order)
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

    # --- usage -------------------------------------------------------------------------------

    def team_usage(self, catalog: Catalog, team: str | None, user: str) -> TeamUsage:
        """For the form's previews: what admission would count now (the team's holdings and
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
        return open_spans(db, team)

    def _hours_this_month(
        self, db: Session, team: str, now: datetime, spans: list[Span] | None = None
    ) -> Decimal:
        return hours_this_month(db, team, now, spans)


@lru_cache(maxsize=1)
def _team_lock_statement() -> Any:
    """One round trip: create the team's lock row if needed, and lock it either way (ON
    CONFLICT DO UPDATE locks the existing row until the transaction ends); built once."""
    statement = pg_insert(TeamLock).values(team=bindparam("team"))
    return statement.on_conflict_do_update(
        index_elements=["team"], set_={"team": statement.excluded.team}
    )


def _type_name(catalog: Catalog, gpu_type: str) -> str:
    known = catalog.gpu_types.get(gpu_type)
    return known.display_name if known else gpu_type


def _no_free(
    db: Session,
    install: str | None,
    catalog: Catalog,
    request: Request,
    capacity: int | None,
    free: int,
) -> str:
    """Why no GPU of the type is free: how many there are, and who holds them (servers, and
    people in line whose turn it is)."""
    gpu_type = request.gpu_type or ""
    name = _type_name(catalog, gpu_type)
    in_sessions = select(
        literal("s").label("kind"),
        UsageSession.user.label("user"),
        UsageSession.server_name.label("server_name"),
        UsageSession.gpu_count.label("gpu_count"),
    ).where(
        UsageSession.gpu_type == gpu_type,
        UsageSession.ended_at.is_(None),
        UsageSession.gpu_count > 0,
        of_install(install),
    )
    in_holds = select(literal("h"), GPUHold.user, GPUHold.server_name, GPUHold.gpu_count).where(
        GPUHold.gpu_type == gpu_type, same_install(GPUHold.install, install)
    )
    servers: dict[str, int] = {}
    holds: list[tuple[str, str, int]] = []
    for kind, user, server_name, count in db.execute(union_all(in_sessions, in_holds)):
        if kind == "h":
            holds.append((user, server_name, count))
            continue
        key = f"{user}/{server_name}"
        servers[key] = servers.get(key, 0) + count
    held = ", ".join(f"{k} ({n})" for k, n in sorted(servers.items())) or "no server"
    line = ", ".join(f"{u}/{name} ({n})" for u, name, n in sorted(holds, key=lambda h: h[0]))
    return (
        f"no {name} is free for {request.user}/{request.server_name} ({request.gpu_count} "
        f"needed): {capacity} in all, {free} free, held by {held}"
        + (f", and set aside for people in line: {line}" if line else "")
        + "."
    )
