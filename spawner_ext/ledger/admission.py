"""The admission engine: a spawn is admitted (and its session opened) only if its team's quotas,
its user's cap and the team's budget allow it, decided by policy/admission.py in one locked
transaction; refusal counters; which teams are over budget; the usage a preview counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ..catalog import Catalog
from ..end_reason import EndReason
from ..policy.admission import Decision, TeamUsage, decide_in
from .base import LedgerBase
from .models import AdmissionRefusals, TeamLock, TeamMonthUsage, UsageSession
from .reconcile import Server
from .rules import Span, gpu_seconds_between, holdings_of, month_key, month_start
from .sessions import close_row, dialect_insert, new_session, of_install


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


class AdmissionEngine(LedgerBase):
    """Admission and the team-wide reads it shares with previews and budget enforcement."""

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
            row = new_session(
                request,
                requested_at=now,
                catalog_version=request.catalog_version,
                install=self.install,
            )
            db.add(row)
            db.flush()
            return Admission(row.id, row.uid, warning)

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
