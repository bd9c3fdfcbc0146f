"""The wait-list in the ledger: joining, turns (holds), starting, cancelling and expiring, each in
one transaction under the GPU type's lock, so no GPU goes to two people and no request is served
twice, whichever process (hub, service, a second service) gets there first. The order, positions
and estimates are policy/waitlist.py's; this module reads their inputs and records the outcome."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..catalog import Catalog
from ..policy.admission import Holding, TeamUsage, decide_in
from ..policy.waitlist import Waiting, estimates, positions, turns
from .admission_reads import read_for_admission
from .base import LedgerBase
from .line import (
    LineView,
    light_line,
    live_requests,
    lock_gpu_type,
    read_line,
    same_install,
)
from .models import (
    LIVE_REQUEST_STATES,
    GPUCapacity,
    GPUHold,
    UsageSession,
    WaitlistRequest,
)
from .outbox import enqueue
from .rules import holdings_of
from .sessions import dialect_insert, of_install

STARTS = ("auto", "ask")
WAITABLE = frozenset({"gpu-quota", "no-free-gpu", "line"})
"""Refusal reasons that waiting can cure: the team's quota is held, no GPU is free, or others
wait for the type. Others (budget, user-cap, a profile not allowed) are refused outright."""


@dataclass(frozen=True)
class JoinRequest:
    """A request to wait for a GPU profile, resolved by the caller (a spawn's plan)."""

    user: str
    server_name: str
    team: str
    profile: str
    gpu_type: str
    gpu_count: int
    options: Mapping[str, str]
    start: str = "ask"


@dataclass(frozen=True)
class WaitRequest:
    """A request as its person and the API see it."""

    id: str
    user: str
    server_name: str
    team: str
    profile: str
    gpu_type: str
    gpu_count: int
    options: Mapping[str, str]
    start: str
    state: str
    joined_at: datetime
    turn_at: datetime | None
    hold_until: datetime | None
    start_asked_at: datetime | None
    ended_at: datetime | None
    message: str | None
    session: str | None
    position: int | None = None
    estimated_start: datetime | None = None
    blocked: str | None = None
    """Why it is skipped for now though it keeps its place (its team's quota, budget)."""
    reclaim_at: datetime | None = None
    """Borrowed GPUs of the type are being reclaimed for its team: when the first is stopped
    (a waiting request's GPU is on its way, at the latest then)."""

    @property
    def live(self) -> bool:
        return self.state in LIVE_REQUEST_STATES

    def as_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "id": self.id,
            "user": self.user,
            "server_name": self.server_name,
            "team": self.team,
            "profile": self.profile,
            "gpu_type": self.gpu_type,
            "gpu_count": self.gpu_count,
            "options": dict(self.options),
            "start": self.start,
            "state": self.state,
            "position": self.position,
            "estimated_start": iso(self.estimated_start),
            "blocked": self.blocked,
            "reclaim_at": iso(self.reclaim_at),
            "joined_at": iso(self.joined_at),
            "turn_at": iso(self.turn_at),
            "hold_until": iso(self.hold_until),
            "ended_at": iso(self.ended_at),
            "message": self.message,
        }


class WaitlistError(Exception):
    """A wait-list call that cannot be done; `status` is the HTTP status to answer."""

    status = 400


class AlreadyWaiting(WaitlistError):
    status = 409


class NotWaitable(WaitlistError):
    """Waiting cannot help (the budget is spent, the user's cap, ...): refused with the reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownRequest(WaitlistError):
    status = 404


@dataclass
class ServeResult:
    """What one pass over the lines did, for the service to act on."""

    given: list[WaitRequest] = field(default_factory=list)
    """Requests given their turn now (a hold)."""
    to_start: list[WaitRequest] = field(default_factory=list)
    """Requests in state starting whose hold is not consumed yet: ask the hub to start them
    (again, if an earlier ask got lost)."""
    ended: list[WaitRequest] = field(default_factory=list)
    """Requests that expired or failed in this pass."""


class WaitlistLedger(LedgerBase):
    """Requests in line and their holds, for one install."""

    # --- reads -------------------------------------------------------------------------------

    def get(self, catalog: Catalog, uid: str) -> WaitRequest | None:
        with self._reads() as db:
            row = self._row(db, uid)
            if row is None:
                return None
            return self._view(db, catalog, [row])[0]

    def requests(
        self,
        catalog: Catalog,
        *,
        user: str | None = None,
        team: str | None = None,
        live: bool = True,
        limit: int = 500,
    ) -> list[WaitRequest]:
        """Requests of `user` and/or `team` (live ones only by default), oldest first, with
        positions and estimates."""
        query = select(WaitlistRequest).where(same_install(WaitlistRequest.install, self.install))
        if user is not None:
            query = query.where(WaitlistRequest.user == user)
        if team is not None:
            query = query.where(WaitlistRequest.team == team)
        if live:
            query = query.where(WaitlistRequest.state.in_(LIVE_REQUEST_STATES))
        query = query.order_by(WaitlistRequest.joined_at, WaitlistRequest.uid).limit(limit)
        with self._reads() as db:
            rows = list(db.scalars(query))
            return self._view(db, catalog, rows)

    def preview(
        self, catalog: Catalog, team: str, user: str, gpu_type: str, gpu_count: int
    ) -> tuple[int, datetime | None]:
        """The place (1-based) and estimated start a new request would get now."""
        now = self.clock()
        with self._reads() as db:
            view = read_line(db, catalog, self.install, gpu_type, now, extra_teams=(team,))
        candidate = Waiting(
            id="~preview",
            user=user,
            server_name="~preview",
            team=team,
            gpu_type=gpu_type,
            gpu_count=gpu_count,
            joined_at=now,
        )
        line = replace(view.line, waiting=(*view.line.waiting, candidate))
        place = positions(line).get(candidate.id, len(line.waiting))
        when = estimates(line, view.running, view.typical).get(candidate.id)
        return place, when

    # --- changes -----------------------------------------------------------------------------

    def join(self, catalog: Catalog, request: JoinRequest, place: bool = True) -> WaitRequest:
        """Put a request in line (or give it its turn at once when a GPU is free for it).
        Raises AlreadyWaiting (409) when the user waits for that server already or it runs,
        NotWaitable (400) when waiting cannot help.

        The join itself is a short transaction under the GPU type's lock; the new request's
        place is worked out after it, from a read that holds no lock (the whole line and the
        teams' recent use: tens of milliseconds with a thousand waiting), and stored unless the
        service's pass placed it first. `place=False` leaves that to the service's next pass."""
        if request.start not in STARTS:
            raise WaitlistError(f"start must be 'auto' or 'ask', not {request.start!r}")
        if request.gpu_count < 1:
            raise WaitlistError(
                f"profile {request.profile!r} needs no GPU: start it directly, no need to wait"
            )
        if not catalog.waitlist.enabled:
            raise WaitlistError("the wait-list is turned off (waitlist.enabled in the catalog)")
        now = self.clock()
        with self._sessions.begin() as db:
            lock_gpu_type(db, request.gpu_type)
            self._check_not_waiting(db, request)
            reads = read_for_admission(
                db,
                catalog,
                self.install,
                team=request.team,
                user=request.user,
                server_name=request.server_name,
                gpu_type=request.gpu_type,
                now=now,
            )
            if reads.stale:
                raise AlreadyWaiting(
                    f"{_server(request.user, request.server_name)} is running or starting; stop "
                    "it first, or wait for another named server"
                )
            # Waiting cannot cure a spent budget or the user's own cap: refused as a spawn is.
            # The team's quota being held is what the line is for, so it is judged on the
            # user's own holdings (their sessions and holds) only.
            usage = TeamUsage(
                user=request.user,
                holdings=holdings_of(s for s in reads.spans if s.user == request.user)
                + tuple(
                    Holding(h.user, h.gpu_type, h.gpu_count)
                    for h in reads.holds
                    if h.team == request.team and h.user == request.user
                ),
                gpu_hours_this_month=reads.gpu_hours_this_month(now),
            )
            decision = decide_in(
                catalog,
                request.team,
                usage,
                gpu_type=request.gpu_type,
                gpu_count=request.gpu_count,
                now=now,
            )
            if not decision.admitted and decision.reason not in WAITABLE:
                raise NotWaitable(decision.message, decision.reason or "refused")
            self._check_could_ever_start(catalog, request, reads.capacity)
            row = WaitlistRequest(
                install=self.install,
                user=request.user,
                server_name=request.server_name,
                team=request.team,
                profile=request.profile,
                gpu_type=request.gpu_type,
                gpu_count=request.gpu_count,
                options=json.dumps(dict(request.options), sort_keys=True),
                start=request.start,
                state="waiting",
                joined_at=now,
                start_attempts=0,
            )
            db.add(row)
            try:
                db.flush()
            except IntegrityError:
                raise AlreadyWaiting(
                    f"{_server(request.user, request.server_name)} is already waiting in line; "
                    "cancel that request first, or follow it"
                ) from None
            served = reads.free is None or reads.free >= 1
            if served:
                # a GPU may be free for someone: give turns now (and place the line)
                self._serve_type(db, catalog, request.gpu_type, now, ServeResult())
            # as `_view`, less the borrowed GPUs being reclaimed for the team: one statement
            # fewer under the type's lock (the page's next read shows them)
            joined = (
                self._view(db, catalog, [row])[0]
                if served
                else _request(row, row.position, row.estimated_start, row.blocked)
            )
        if served or not place or joined.state != "waiting":
            return joined
        # Nothing was free: only this request's place, after the lock is let go; its estimate
        # (and everyone's places) come with the service's next pass, which the API asks for.
        position = self._place_after_join(catalog, joined.id, request.gpu_type, now)
        return replace(joined, position=position)

    def _place_after_join(
        self, catalog: Catalog, uid: str, gpu_type: str, now: datetime
    ) -> int | None:
        """A newly joined request's place, read without a lock, then stored unless a pass of
        the service has placed it (or it has ended) meanwhile."""
        with self._reads() as db:
            line = light_line(db, catalog, self.install, gpu_type, now)
        position = positions(line).get(uid)
        if position is None:
            return None
        with self._sessions.begin() as db:
            db.execute(
                update(WaitlistRequest)
                .where(
                    WaitlistRequest.uid == uid,
                    WaitlistRequest.state == "waiting",
                    WaitlistRequest.position.is_(None),
                )
                .values(position=position)
            )
        return position

    def _check_not_waiting(self, db: Session, request: JoinRequest) -> None:
        live = db.scalar(
            select(WaitlistRequest.uid).where(
                same_install(WaitlistRequest.install, self.install),
                WaitlistRequest.user == request.user,
                WaitlistRequest.server_name == request.server_name,
                WaitlistRequest.state.in_(LIVE_REQUEST_STATES),
            )
        )
        if live is not None:
            raise AlreadyWaiting(
                f"{_server(request.user, request.server_name)} is already waiting in line "
                f"(request {live}); cancel it first, or follow it"
            )

    def _check_could_ever_start(
        self, catalog: Catalog, request: JoinRequest, capacity: int | None
    ) -> None:
        """A request that no turn could ever serve is refused, not left waiting: more GPUs than
        the team's quota of the type, or than the type has in all."""
        quota = catalog.teams[request.team].quota.gpus.get(request.gpu_type, 0)
        kind = catalog.gpu_types.get(request.gpu_type)
        name = kind.display_name if kind else request.gpu_type
        if request.gpu_count > quota:
            raise NotWaitable(
                f"team {request.team!r} may hold {quota} {name} at once, and "
                f"{request.profile!r} needs {request.gpu_count}: waiting cannot help. Pick a "
                "smaller profile, or ask an admin to raise the team's quota.",
                "gpu-quota",
            )
        if capacity is not None and request.gpu_count > capacity:
            raise NotWaitable(
                f"there are {capacity} {name} in all, and {request.profile!r} needs "
                f"{request.gpu_count}: waiting cannot help. Pick a smaller profile.",
                "capacity",
            )

    def cancel(self, catalog: Catalog, uid: str, message: str | None = None) -> WaitRequest:
        """End a live request (its hold goes to the next person); an ended one is returned as
        it is. The caller stops the server when the result's `start_asked_at` is set and the
        state is cancelled (a cancel after the start was asked for)."""
        now = self.clock()
        with self._sessions.begin() as db:
            row = self._row(db, uid)
            if row is None:
                raise UnknownRequest(f"no wait-list request {uid!r}")
            if row.state in LIVE_REQUEST_STATES:
                lock_gpu_type(db, row.gpu_type)
                db.refresh(row)
            if row.state in LIVE_REQUEST_STATES:
                held = row.state != "waiting"
                self._end(db, row, "cancelled", now, message or "cancelled by its user")
                if held:  # its GPUs go to the next person now
                    self._serve_type(db, catalog, row.gpu_type, now, ServeResult())
            return self._view(db, catalog, [row])[0]

    def ask_start(self, catalog: Catalog, uid: str) -> WaitRequest:
        """The person starts an "ask" request whose GPU is held: it becomes starting (the caller
        asks the hub). A request already starting, or started, is returned as it is."""
        now = self.clock()
        with self._sessions.begin() as db:
            row = self._row(db, uid)
            if row is None:
                raise UnknownRequest(f"no wait-list request {uid!r}")
            lock_gpu_type(db, row.gpu_type)
            db.refresh(row)
            if row.state == "waiting":
                raise WaitlistError(
                    "it is not this request's turn yet: no GPU is held for it. It starts (or "
                    "asks you) when it is."
                )
            if row.state == "held":
                row.state = "starting"
                row.start_asked_at = now
            elif row.state not in ("starting", "started"):
                raise AlreadyWaiting(f"this request has ended ({row.state}): {row.message or ''}")
            return self._view(db, catalog, [row])[0]

    def start_failed(self, uid: str, message: str) -> None:
        """Count a start the hub refused or did not take; the request stays starting (and is
        asked again) until its hold runs out."""
        with self._sessions.begin() as db:
            row = self._row(db, uid)
            if row is not None and row.state == "starting":
                row.start_attempts += 1
                row.message = message[:500]

    def set_capacity(self, gpu_type: str, total: int, used_elsewhere: int = 0) -> None:
        """Record how many GPUs of a type this install's servers can get."""
        if self.install is None:
            raise ValueError("capacity is per install; open the ledger with install=")
        now = self.clock()
        with self._sessions.begin() as db:
            statement = dialect_insert(db)(GPUCapacity).values(
                install=self.install,
                gpu_type=gpu_type,
                total=total,
                used_elsewhere=used_elsewhere,
                observed_at=now,
            )
            db.execute(
                statement.on_conflict_do_update(
                    index_elements=["install", "gpu_type"],
                    set_={
                        "total": statement.excluded.total,
                        "used_elsewhere": statement.excluded.used_elsewhere,
                        "observed_at": statement.excluded.observed_at,
                    },
                )
            )

    def capacities(self) -> dict[str, tuple[int, int]]:
        """GPU type -> (total, used elsewhere) recorded for this install."""
        with self._reads() as db:
            return {
                row.gpu_type: (row.total, row.used_elsewhere)
                for row in db.scalars(
                    select(GPUCapacity).where(GPUCapacity.install == self.install)
                )
            }

    def cancelled_but_running(self, within: timedelta = timedelta(days=1)) -> list[WaitRequest]:
        """Requests cancelled after their server was admitted whose server still runs (its
        session, the one the request started, is open): the service stops them, every tick
        until they are gone. A server the person started again later has another session and
        is left alone."""
        since = self.clock() - within
        query = (
            select(WaitlistRequest)
            .join(UsageSession, UsageSession.uid == WaitlistRequest.session)
            .where(
                same_install(WaitlistRequest.install, self.install),
                WaitlistRequest.state == "cancelled",
                WaitlistRequest.ended_at > since,
                UsageSession.ended_at.is_(None),
            )
        )
        with self._reads() as db:
            rows = list(db.scalars(query))
            return [self._plain(row) for row in rows]

    def line_counts(self) -> list[tuple[str, str, str, int]]:
        """(team, GPU type, state, requests) of this install's requests, for the metrics."""
        query = (
            select(
                WaitlistRequest.team,
                WaitlistRequest.gpu_type,
                WaitlistRequest.state,
                func.count(),
            )
            .where(same_install(WaitlistRequest.install, self.install))
            .group_by(WaitlistRequest.team, WaitlistRequest.gpu_type, WaitlistRequest.state)
        )
        with self._reads() as db:
            return [(t, g, st, int(n)) for t, g, st, n in db.execute(query)]

    def waits(self) -> list[tuple[str, str, float]]:
        """(team, GPU type, seconds from joining to the turn) of every request given its turn,
        for the wait-time histogram (a turn is given once, so these only ever grow)."""
        query = select(
            WaitlistRequest.team,
            WaitlistRequest.gpu_type,
            WaitlistRequest.joined_at,
            WaitlistRequest.turn_at,
        ).where(
            same_install(WaitlistRequest.install, self.install),
            WaitlistRequest.turn_at.is_not(None),
        )
        with self._reads() as db:
            return [
                (t, g, max((turn - joined).total_seconds(), 0.0))
                for t, g, joined, turn in db.execute(query)
                if turn is not None
            ]

    def holds(self) -> list[GPUHold]:
        with self._reads() as db:
            return list(
                db.scalars(select(GPUHold).where(same_install(GPUHold.install, self.install)))
            )

    def serve(self, catalog: Catalog) -> ServeResult:
        """The service's pass: in every line, end what expired, then give turns; one transaction
        per GPU type."""
        result = ServeResult()
        with self._reads() as db:
            kinds = sorted(
                set(
                    db.scalars(
                        select(WaitlistRequest.gpu_type)
                        .where(
                            same_install(WaitlistRequest.install, self.install),
                            WaitlistRequest.state.in_(LIVE_REQUEST_STATES),
                        )
                        .distinct()
                    )
                )
                | set(
                    db.scalars(
                        select(GPUHold.gpu_type)
                        .where(same_install(GPUHold.install, self.install))
                        .distinct()
                    )
                )
            )
        for gpu_type in kinds:
            now = self.clock()
            with self._sessions.begin() as db:
                lock_gpu_type(db, gpu_type)
                self._serve_type(db, catalog, gpu_type, now, result)
                result.to_start.extend(
                    self._view(db, catalog, [r])[0]
                    for r in live_requests(db, self.install, gpu_type)
                    if r.state == "starting" and r.session is None
                )
        return result

    # --- within a locked transaction ----------------------------------------------------------

    def _serve_type(
        self, db: Session, catalog: Catalog, gpu_type: str, now: datetime, result: ServeResult
    ) -> None:
        """Expire, then give turns in `gpu_type`'s line (its lock held)."""
        rows = live_requests(db, self.install, gpu_type)
        max_wait = catalog.waitlist.max_wait
        for row in rows:
            profile = catalog.profile(row.profile)
            gpu = profile.gpu if profile is not None else None
            if gpu is None or gpu.type != row.gpu_type or gpu.count != row.gpu_count:
                self._end(
                    db,
                    row,
                    "failed",
                    now,
                    f"profile {row.profile!r} changed in the catalog (or was removed) while you "
                    "waited; choose a profile and join again",
                )
            elif row.state == "waiting" and now - row.joined_at >= max_wait:
                self._end(
                    db,
                    row,
                    "expired",
                    now,
                    f"no GPU came free within {_duration(max_wait)} (waitlist.max_wait); join "
                    "again, or pick another profile",
                )
            elif row.state == "held" and row.hold_until is not None and now >= row.hold_until:
                message = (
                    f"the GPU was held for you for {_duration(catalog.waitlist.hold)} and not "
                    "started; it went to the next person. Join again when you are ready."
                )
                self._end(db, row, "expired", now, message)
            elif row.state == "starting" and row.session is not None:
                self._follow_start(db, row, now)
            elif (
                row.state == "starting"
                and row.session is None
                and row.hold_until is not None
                and now >= row.hold_until
            ):
                self._end(
                    db,
                    row,
                    "failed",
                    now,
                    "your server could not be started in time"
                    + (f": {row.message}" if row.message else ""),
                )
            if row.state not in LIVE_REQUEST_STATES:
                result.ended.append(self._view(db, catalog, [row])[0])
        rows = [r for r in rows if r.state in LIVE_REQUEST_STATES]
        if not catalog.waitlist.enabled:
            return
        view = read_line(db, catalog, self.install, gpu_type, now, requests=rows)
        by_uid = {r.uid: r for r in rows}
        served = turns(view.line).serve
        for chosen in served:
            row = by_uid[chosen.id]
            self._give_turn(db, catalog, row, now)
            result.given.append(self._view(db, catalog, [row])[0])
        if served:
            view = read_line(db, catalog, self.install, gpu_type, now, requests=rows)
        self._place_line(view, rows)

    def _place_line(self, view: LineView, rows: Sequence[WaitlistRequest]) -> None:
        """Record each waiting request's place, estimate and reason to be skipped (what reads
        show until the next pass); requests with a turn have none."""
        places = positions(view.line)
        whens = estimates(view.line, view.running, view.typical)
        skipped = turns(view.line).skipped
        for row in rows:
            waiting = row.state == "waiting"
            position = places.get(row.uid) if waiting else None
            estimate = whens.get(row.uid) if waiting else None
            blocked = skipped.get(row.uid) if waiting else None
            if (row.position, row.estimated_start, row.blocked) != (position, estimate, blocked):
                row.position, row.estimated_start, row.blocked = position, estimate, blocked

    def _follow_start(self, db: Session, row: WaitlistRequest, now: datetime) -> None:
        """A request whose server was admitted: started once billing started (the server runs),
        failed if its session ended first (the start failed or was stopped)."""
        session = db.scalar(select(UsageSession).where(UsageSession.uid == row.session))
        if session is None or session.ended_at is not None:
            self._end(
                db,
                row,
                "failed",
                now,
                "your server stopped before it was ready"
                + (f" ({session.end_reason})" if session is not None else ""),
            )
        elif session.started_at is not None:
            row.state = "started"
            row.ended_at = now
            row.message = None

    def _give_turn(
        self, db: Session, catalog: Catalog, row: WaitlistRequest, now: datetime
    ) -> None:
        hold = catalog.waitlist.hold
        row.turn_at = now
        row.hold_until = now + hold
        if row.start == "auto":
            row.state = "starting"
            row.start_asked_at = now
        else:
            row.state = "held"
        db.add(
            GPUHold(
                request_id=row.id,
                install=row.install,
                gpu_type=row.gpu_type,
                gpu_count=row.gpu_count,
                team=row.team,
                user=row.user,
                server_name=row.server_name,
                created_at=now,
                until=row.hold_until,
            )
        )
        enqueue_turn(db, catalog, row, now)

    def _end(
        self, db: Session, row: WaitlistRequest, state: str, now: datetime, message: str
    ) -> None:
        row.state = state
        row.ended_at = now
        row.message = message[:500]
        hold = db.get(GPUHold, row.id)
        if hold is not None:
            db.delete(hold)
        db.flush()

    # --- helpers -------------------------------------------------------------------------------

    def _row(self, db: Session, uid: str) -> WaitlistRequest | None:
        return db.scalar(
            select(WaitlistRequest).where(
                WaitlistRequest.uid == uid, same_install(WaitlistRequest.install, self.install)
            )
        )

    def _plain(self, row: WaitlistRequest) -> WaitRequest:
        """A request without its place and estimate (no line read)."""
        return _request(row, None, None, None)

    def _view(
        self, db: Session, catalog: Catalog, rows: Sequence[WaitlistRequest]
    ) -> list[WaitRequest]:
        """Rows as WaitRequests, waiting ones with their place and estimate as the line was
        last worked out (`_place_line`: at every turn-giving pass, and a new request's place
        when it joins), and when borrowed GPUs being reclaimed for their team free up."""
        del catalog
        reclaims: dict[tuple[str, str], datetime] = {}
        if any(row.state == "waiting" for row in rows):
            reclaims = {
                (team, gpu_type): at
                for team, gpu_type, at in db.execute(
                    select(
                        UsageSession.reclaim_for,
                        UsageSession.gpu_type,
                        func.min(UsageSession.reclaim_at),
                    )
                    .where(
                        UsageSession.reclaim_at.is_not(None),
                        UsageSession.ended_at.is_(None),
                        of_install(self.install),
                    )
                    .group_by(UsageSession.reclaim_for, UsageSession.gpu_type)
                )
                if team is not None and gpu_type is not None and at is not None
            }
        return [
            replace(
                _request(row, row.position, row.estimated_start, row.blocked),
                reclaim_at=reclaims.get((row.team, row.gpu_type)),
            )
            if row.state == "waiting"
            else _request(row, None, None, None)
            for row in rows
        ]


def _request(
    row: WaitlistRequest,
    position: int | None,
    estimate: datetime | None,
    blocked: str | None,
) -> WaitRequest:
    return WaitRequest(
        id=row.uid,
        user=row.user,
        server_name=row.server_name,
        team=row.team,
        profile=row.profile,
        gpu_type=row.gpu_type,
        gpu_count=row.gpu_count,
        options=json.loads(row.options or "{}"),
        start=row.start,
        state=row.state,
        joined_at=row.joined_at,
        turn_at=row.turn_at,
        hold_until=row.hold_until,
        start_asked_at=row.start_asked_at,
        ended_at=row.ended_at,
        message=row.message,
        session=row.session,
        position=position,
        estimated_start=estimate,
        blocked=blocked,
    )


def enqueue_turn(db: Session, catalog: Catalog, row: WaitlistRequest, now: datetime) -> None:
    """Queue the "your turn" message to the channels the admin configured (outbox.py sends it)."""
    kind = catalog.gpu_types.get(row.gpu_type)
    name = kind.display_name if kind else row.gpu_type
    gpus = f"{row.gpu_count} {name}" + ("" if row.gpu_count == 1 else " GPUs")
    if row.start == "auto":
        text = f"It is your turn: {gpus} for {_server(row.user, row.server_name)} is starting now."
    else:
        assert row.hold_until is not None
        text = (
            f"It is your turn: {gpus} is held for {_server(row.user, row.server_name)} until "
            f"{row.hold_until:%H:%M} UTC. Start your server before then, or it goes to the "
            "next person."
        )
    event = {
        "event": "waitlist.turn",
        "request": row.uid,
        "user": row.user,
        "server_name": row.server_name,
        "team": row.team,
        "profile": row.profile,
        "gpu_type": row.gpu_type,
        "gpu_count": row.gpu_count,
        "start": row.start,
        "hold_until": row.hold_until.isoformat() if row.hold_until else None,
        "message": text,
    }
    enqueue(
        db,
        catalog,
        key=f"waitlist:{row.uid}:turn",
        user=row.user,
        subject=f"Your {name} is ready",
        text=text,
        event=event,
        at=now,
    )


def consume_hold(
    db: Session, install: str | None, user: str, server_name: str, session: str, now: datetime
) -> WaitlistRequest | None:
    """At the holder's admission (in its transaction): the hold is used up, and its request
    records the session it started. Returns the request, or None without a hold."""
    hold = db.scalar(
        select(GPUHold).where(
            same_install(GPUHold.install, install),
            GPUHold.user == user,
            GPUHold.server_name == server_name,
        )
    )
    if hold is None:
        return None
    row = db.get(WaitlistRequest, hold.request_id)
    db.delete(hold)
    if row is not None:
        row.state = "starting"
        row.start_asked_at = row.start_asked_at or now
        row.session = session
    return row


def _server(user: str, server_name: str) -> str:
    return f"{user}/{server_name}" if server_name else f"{user}'s default server"


def _duration(value: Any) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
