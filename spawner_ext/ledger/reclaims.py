"""Giving borrowed GPUs back: the service's pass that makes borrowed servers own ones when their
team's quota has room again, chooses borrowed servers to stop for people waiting on their own
team's quota (policy/borrowing.py decides), withdraws the choices nobody needs any more (the
soonest due stay), and says which are due. Under each GPU type's lock, so two services never
choose the same GPUs twice; the choice, its time and its message are written in one
transaction, so a service killed after choosing leaves a warned server that the next pass stops
on time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..catalog import Borrowing, Catalog
from ..end_reason import EndReason
from ..policy.borrowing import (
    BorrowedServer,
    Share,
    Wanting,
    choose_reclaims,
    conversions,
    reclaim_need,
    withdraw_reclaims,
)
from .admission_reads import read_shares
from .base import LedgerBase
from .line import lock_gpu_type, quick_check, same_install
from .models import SessionLoan, UsageSession, WaitlistRequest
from .outbox import enqueue
from .rules import billed_seconds
from .sessions import close_row, of_install


@dataclass(frozen=True)
class Reclaim:
    """A borrowed server chosen to give its GPUs back."""

    session_id: int
    user: str
    server_name: str
    team: str | None
    gpu_type: str
    gpu_count: int
    reclaim_at: datetime
    reclaim_for: str
    first: bool = True
    """Due for the first time in this pass (its stop was recorded now; later passes ask the
    hub again until the server is gone)."""


@dataclass
class ReclaimResult:
    chosen: list[Reclaim] = field(default_factory=list)
    """Chosen in this pass (their users are warned from now on)."""
    withdrawn: list[int] = field(default_factory=list)
    """Sessions whose choice was withdrawn (nobody waits for their GPUs any more)."""
    due: list[Reclaim] = field(default_factory=list)
    """Chosen and due now: their stop is recorded (reason `reclaimed`); stop their servers."""
    converted: list[int] = field(default_factory=list)
    """Sessions of borrowed servers that became own ones (their team's quota had room again)."""


class ReclaimLedger(LedgerBase):
    def reclaim(self, catalog: Catalog, idle: Mapping[int, bool]) -> ReclaimResult:
        """One pass over every GPU type with borrowed servers of this install: choose what to
        reclaim (`idle`: session id -> its GPUs idle as the culler sees them; absent: busy),
        withdraw what is no longer needed, and return what is due."""
        result = ReclaimResult()
        settings = catalog.borrowing or Borrowing()
        with self._reads() as db:
            kinds = sorted(
                {
                    kind
                    for kind in db.scalars(
                        select(UsageSession.gpu_type)
                        .where(
                            UsageSession.borrowed.is_(True),
                            UsageSession.ended_at.is_(None),
                            of_install(self.install),
                        )
                        .distinct()
                    )
                    if kind is not None
                }
            )
        for gpu_type in kinds:
            now = self.clock()
            with self._sessions.begin() as db:
                lock_gpu_type(db, gpu_type)
                self._reclaim_type(db, catalog, settings, gpu_type, idle, now, result)
        return result

    def _reclaim_type(
        self,
        db: Session,
        catalog: Catalog,
        settings: Borrowing,
        gpu_type: str,
        idle: Mapping[int, bool],
        now: datetime,
        result: ReclaimResult,
    ) -> None:
        borrowed = list(
            db.scalars(
                select(UsageSession)
                .where(
                    UsageSession.gpu_type == gpu_type,
                    UsageSession.borrowed.is_(True),
                    UsageSession.ended_at.is_(None),
                    of_install(self.install),
                )
                .order_by(UsageSession.id)
            )
        )
        # Waiting on their own quota, in the line's order as its last pass placed them; those
        # the line skips (budget, cap) would not start on a freed GPU, so they reclaim nothing.
        waiting = [
            Wanting(team, count)
            for team, count in db.execute(
                select(WaitlistRequest.team, WaitlistRequest.gpu_count)
                .where(
                    WaitlistRequest.gpu_type == gpu_type,
                    WaitlistRequest.state == "waiting",
                    WaitlistRequest.blocked.is_(None),
                    same_install(WaitlistRequest.install, self.install),
                )
                .order_by(WaitlistRequest.position.is_(None), WaitlistRequest.position)
                .order_by(WaitlistRequest.id)
            )
        ]
        _, counted = quick_check(db, catalog, self.install, gpu_type)
        # unlimited or unknown capacity (autoscaled, nothing recorded): nothing to free up
        free = counted if counted is not None else sum(w.gpus for w in waiting)
        shares = read_shares(db, catalog, gpu_type, tuple(catalog.teams))
        converted = self._convert(db, shares, borrowed, now)
        if converted:
            result.converted.extend(converted)
            shares = read_shares(db, catalog, gpu_type, tuple(catalog.teams))
            borrowed = [s for s in borrowed if s.id not in converted]
        chosen_rows = [s for s in borrowed if s.reclaim_at is not None]
        reclaiming = sum(s.gpu_count for s in chosen_rows)
        need, team = reclaim_need(shares, waiting, free, reclaiming)

        def candidate(s: UsageSession) -> BorrowedServer:
            assert s.started_at is not None
            return BorrowedServer(
                str(s.id), s.team or "", s.gpu_count, s.started_at, idle.get(s.id, False)
            )

        running = [s for s in borrowed if s.started_at is not None]  # not yet running: not yet
        if need > 0 and team is not None:
            unchosen = [candidate(s) for s in running if s.reclaim_at is None]
            picked = {int(c.id) for c in choose_reclaims(unchosen, need, now, settings.min_runtime)}
            for row in borrowed:
                if row.id in picked:
                    row.reclaim_at = now + settings.reclaim_notice
                    row.reclaim_for = team
                    chosen = _reclaim(row)
                    result.chosen.append(chosen)
                    _enqueue_notice(db, catalog, chosen, now)
        elif chosen_rows:
            # No more needed than is being reclaimed. If fewer are needed now (a GPU freed
            # elsewhere, a request was cancelled), the choices not yet due that are due soonest
            # stay chosen while they cover what is still needed; the others are withdrawn
            # (`withdraw_reclaims`). Nothing is chosen anew, so a kept choice is never traded for
            # a later stop, and a choice that gives more than is needed (a 2-GPU server for one
            # GPU) stays chosen rather than being withdrawn and chosen again.
            still, _ = reclaim_need(shares, waiting, free, 0)
            due = [r for r in chosen_rows if r.reclaim_at is not None and r.reclaim_at <= now]
            still -= sum(r.gpu_count for r in due)
            open_choices = [
                (candidate(r), r.reclaim_at)
                for r in chosen_rows  # in id order, as the withdrawals come back
                if r.reclaim_at is not None and r not in due
            ]
            rows = {str(r.id): r for r in chosen_rows}
            for server in withdraw_reclaims(open_choices, max(still, 0), now):
                row = rows[server.id]
                row.reclaim_at = row.reclaim_for = None
                result.withdrawn.append(row.id)
        for row in borrowed:
            if row.reclaim_at is not None and row.reclaim_at <= now:
                first = row.stop_reason is None
                if first:
                    row.stop_reason = EndReason.RECLAIMED.value
                    row.stop_requested_at = now
                result.due.append(replace(_reclaim(row), first=first))

    def _convert(
        self,
        db: Session,
        shares: Mapping[str, Share],
        borrowed: Sequence[UsageSession],
        now: datetime,
    ) -> list[int]:
        """Borrowed servers (not chosen for a reclaim) whose team's own quota has room for them
        again become own ones, oldest first (`conversions`): each session is split now, the
        borrowed part closed as `split` with its loans and its price, the server going on in an
        own part at the type's own price. Returns the sessions that went on as own."""
        done: list[int] = []
        for team in sorted({s.team for s in borrowed if s.team is not None and s.team in shares}):
            rows = {
                str(s.id): s
                for s in borrowed
                if s.team == team and s.reclaim_at is None and s.started_at is not None
            }
            candidates = [
                BorrowedServer(str(s.id), team, s.gpu_count, s.started_at, False)
                for s in rows.values()
                if s.started_at is not None
            ]
            for chosen in conversions(shares[team], candidates):
                _split(db, rows[chosen.id], now)
                done.append(rows[chosen.id].id)
        return done

    def earlier_cost(self, session: UsageSession) -> Decimal:
        """What the earlier parts of a split session's run cost (its borrowed part before it
        became own); 0 for a session that is its run's only part."""
        if session.run_started_at is None or session.started_at is None:
            return Decimal(0)
        u = UsageSession
        query = select(func.coalesce(func.sum(u.cost), 0)).where(
            u.user == session.user,
            u.server_name == session.server_name,
            u.end_reason == EndReason.SPLIT.value,
            u.started_at >= session.run_started_at,
            u.ended_at <= session.started_at,
            u.id != session.id,
            of_install(session.install),
        )
        with self._reads() as db:
            return Decimal(db.scalar(query) or 0)

    def open_borrowed(self) -> list[int]:
        """Ids of this install's open borrowed sessions (whose idleness a reclaim pass asks)."""
        with self._reads() as db:
            return list(
                db.scalars(
                    select(UsageSession.id).where(
                        UsageSession.borrowed.is_(True),
                        UsageSession.ended_at.is_(None),
                        of_install(self.install),
                    )
                )
            )


def _split(db: Session, row: UsageSession, now: datetime) -> None:
    """The borrowed part of `row` until `now` becomes a closed session of its own (billed at the
    borrowed price, keeping the loans); `row`, which the running server carries, goes on from
    `now` as an own session at the type's own price, remembering when the run started. The
    split falls on a whole billed second, so the two parts bill every second of the run once."""
    assert row.started_at is not None
    at = row.started_at + timedelta(seconds=billed_seconds(row.started_at, now))
    part = UsageSession(
        user=row.user,
        team=row.team,
        server_name=row.server_name,
        profile=row.profile,
        gpu_type=row.gpu_type,
        gpu_count=row.gpu_count,
        price_per_hour=row.price_per_hour,
        currency=row.currency,
        requested_at=row.requested_at,
        started_at=row.started_at,
        last_seen_at=at,
        runtime_ref=row.runtime_ref,
        catalog_version=row.catalog_version,
        install=row.install,
        borrowed=True,
        own_price_per_hour=row.own_price_per_hour,
        run_started_at=row.run_started_at,
    )
    db.add(part)
    db.flush()
    close_row(db, part, at, EndReason.SPLIT)
    db.execute(
        update(SessionLoan).where(SessionLoan.session_id == row.id).values(session_id=part.id)
    )
    row.run_started_at = row.run_started_at or row.started_at
    row.started_at = at
    row.last_seen_at = now
    if row.own_price_per_hour is not None:
        row.price_per_hour = row.own_price_per_hour
    row.borrowed = False
    row.own_price_per_hour = None


def _reclaim(row: UsageSession) -> Reclaim:
    assert row.gpu_type is not None and row.reclaim_at is not None
    return Reclaim(
        session_id=row.id,
        user=row.user,
        server_name=row.server_name,
        team=row.team,
        gpu_type=row.gpu_type,
        gpu_count=row.gpu_count,
        reclaim_at=row.reclaim_at,
        reclaim_for=row.reclaim_for or "",
    )


def _enqueue_notice(db: Session, catalog: Catalog, reclaim: Reclaim, now: datetime) -> None:
    """Queue the warning to the borrower by the channels the admin configured (once per choice:
    the key names the session and its stop time)."""
    kind = catalog.gpu_types.get(reclaim.gpu_type)
    name = kind.display_name if kind else reclaim.gpu_type
    lender = catalog.teams.get(reclaim.reclaim_for)
    whose = (lender.display_name or reclaim.reclaim_for) if lender else reclaim.reclaim_for
    server = (
        f"{reclaim.user}/{reclaim.server_name}"
        if reclaim.server_name
        else f"{reclaim.user}'s default server"
    )
    text = (
        f"{server} runs on other teams' idle {name} quota, and {whose} needs the GPUs back: it "
        f"will be stopped at {reclaim.reclaim_at:%H:%M} UTC. Your open notebooks are saved "
        "first; save anything else before then."
    )
    enqueue(
        db,
        catalog,
        key=f"reclaim:{reclaim.session_id}:{reclaim.reclaim_at:%Y%m%dT%H%M%S}",
        user=reclaim.user,
        subject=f"Your borrowed {name} server stops at {reclaim.reclaim_at:%H:%M} UTC",
        text=text,
        event={
            "event": "borrowing.reclaim",
            "user": reclaim.user,
            "server_name": reclaim.server_name,
            "team": reclaim.team,
            "gpu_type": reclaim.gpu_type,
            "gpu_count": reclaim.gpu_count,
            "reclaim_at": reclaim.reclaim_at.isoformat(),
            "reclaim_for": reclaim.reclaim_for,
            "message": text,
        },
        at=now,
    )
