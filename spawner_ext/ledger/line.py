"""The line of one GPU type as the ledger sees it, read inside a transaction: free GPUs (capacity,
sessions, holds), the live requests, each waiting team's standing and what running servers will
free. What policy/waitlist.py decides on; admission and the wait-list both read it here."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, func, or_, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ..catalog import Catalog
from ..policy.admission import budget_used_up
from ..policy.waitlist import (
    Line,
    Running,
    TeamStanding,
    Waiting,
    decayed_gpu_hours,
    expected_end,
)
from .models import (
    LIVE_REQUEST_STATES,
    GPUCapacity,
    GPUHold,
    GPUTypeLock,
    ServerActivity,
    UsageSession,
    WaitlistRequest,
)
from .sessions import of_install
from .team_reads import hours_this_month

DEFAULT_TYPICAL = timedelta(hours=1)
"""How long a session is expected to last before the ledger has seen any of its type."""
TYPICAL_SAMPLE = 200
"""How many of a type's latest closed sessions give its typical length."""
HALF_LIVES_BACK = 8
"""Sessions that ended longer ago than this many half-lives weigh under 0.4 % and are not read."""
JOIN_ORDER = datetime(2000, 1, 1, tzinfo=UTC)
"""`light_line` orders requests by their ledger id, as times from here (positions only)."""


@dataclass(frozen=True)
class LineView:
    """One GPU type's line now, with what the estimate needs."""

    line: Line
    running: tuple[Running, ...]
    typical: timedelta
    capacity: int | None
    """GPUs of the type the install's servers can get (None: unknown or autoscaled)."""


def lock_gpu_type(db: Session, gpu_type: str) -> None:
    """Hold the GPU type's lock until the transaction ends (PostgreSQL: its row; SQLite:
    BEGIN IMMEDIATE holds the whole database already). Take it before any team's lock."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(_type_lock_statement(), {"gpu_type": gpu_type})


@lru_cache(maxsize=1)
def _type_lock_statement() -> Any:
    """Create the type's lock row if needed and lock it either way, in one round trip (ON
    CONFLICT DO UPDATE locks the existing row until the transaction ends); built once."""
    statement = pg_insert(GPUTypeLock).values(gpu_type=bindparam("gpu_type"))
    return statement.on_conflict_do_update(
        index_elements=["gpu_type"], set_={"gpu_type": statement.excluded.gpu_type}
    )


def live_requests(db: Session, install: str | None, gpu_type: str) -> list[WaitlistRequest]:
    return list(
        db.scalars(
            select(WaitlistRequest)
            .where(
                WaitlistRequest.gpu_type == gpu_type,
                WaitlistRequest.state.in_(LIVE_REQUEST_STATES),
                same_install(WaitlistRequest.install, install),
            )
            .order_by(WaitlistRequest.joined_at, WaitlistRequest.uid)
        )
    )


def holds_of_type(db: Session, install: str | None, gpu_type: str) -> list[GPUHold]:
    return list(
        db.scalars(
            select(GPUHold).where(
                GPUHold.gpu_type == gpu_type, same_install(GPUHold.install, install)
            )
        )
    )


def usable_capacity(
    db: Session, catalog: Catalog, install: str | None, gpu_type: str
) -> int | None:
    """GPUs of the type the install's servers can get (its capacity less what others' pods
    use); None when unknown (nothing recorded yet, no install) or unlimited (autoscaled)."""
    kind = catalog.gpu_types.get(gpu_type)
    if kind is None or kind.autoscaled or install is None:
        return None
    row = db.get(GPUCapacity, (install, gpu_type))
    return None if row is None else max(row.total - row.used_elsewhere, 0)


def quick_check(
    db: Session, catalog: Catalog, install: str | None, gpu_type: str
) -> tuple[int, int | None]:
    """(requests waiting for the type, GPUs of it free now or None when unlimited), in one
    statement: what admission looks at before it needs the whole line."""
    return quick_check_result(
        db.execute(select(*quick_check_columns(catalog, install, gpu_type))).one()
    )


def quick_check_columns(catalog: Catalog, install: str | None, gpu_type: str) -> tuple[Any, ...]:
    """The scalar subqueries `quick_check` selects (for a caller that selects more beside them):
    the requests waiting, and for a type of known, limited capacity the GPUs the install can get,
    those in its open sessions and those held."""
    return free_check_columns(install, gpu_type, limited_capacity(catalog, install, gpu_type))


def limited_capacity(catalog: Catalog, install: str | None, gpu_type: str) -> bool:
    """Whether the install can get only so many GPUs of the type (not autoscaled, known type,
    an install to count for): what makes free GPUs worth counting."""
    kind = catalog.gpu_types.get(gpu_type)
    return not (kind is None or kind.autoscaled or install is None)


def free_check_columns(install: Any, gpu_type: Any, limited: bool) -> tuple[Any, ...]:
    """`quick_check_columns` with the install and GPU type as values or bind parameters."""
    waiting = (
        select(func.count())
        .where(
            WaitlistRequest.gpu_type == gpu_type,
            WaitlistRequest.state == "waiting",
            same_install(WaitlistRequest.install, install),
        )
        .scalar_subquery()
    )
    if not limited:
        return (waiting,)
    capacity = (
        select(GPUCapacity.total - GPUCapacity.used_elsewhere)
        .where(GPUCapacity.install == install, GPUCapacity.gpu_type == gpu_type)
        .scalar_subquery()
    )
    in_sessions = (
        select(func.coalesce(func.sum(UsageSession.gpu_count), 0))
        .where(
            UsageSession.gpu_type == gpu_type,
            UsageSession.ended_at.is_(None),
            of_install(install),
        )
        .scalar_subquery()
    )
    in_holds = (
        select(func.coalesce(func.sum(GPUHold.gpu_count), 0))
        .where(GPUHold.gpu_type == gpu_type, GPUHold.install == install)
        .scalar_subquery()
    )
    return waiting, capacity, in_sessions, in_holds


def quick_check_result(values: Sequence[Any]) -> tuple[int, int | None]:
    """`quick_check`'s answer from the values of `quick_check_columns`."""
    count, _, free = quick_check_figures(values)
    return count, free


def quick_check_figures(values: Sequence[Any]) -> tuple[int, int | None, int | None]:
    """(requests waiting, GPUs the install can get, GPUs free) from the values of
    `quick_check_columns`; the last two None when unlimited or unknown."""
    count = int(values[0] or 0)
    if len(values) == 1 or values[1] is None:
        return count, None, None
    usable, used, held = max(int(values[1]), 0), int(values[2] or 0), int(values[3] or 0)
    return count, usable, max(usable - used - held, 0)


def light_line(
    db: Session, catalog: Catalog, install: str | None, gpu_type: str, now: datetime
) -> Line:
    """The line of `gpu_type` with what its order needs and no more (positions only: no free
    GPUs, budgets or caps, no running servers), in five queries whatever its length: how a
    request that joins learns its place inside its short transaction."""
    # In join order: the ledger's id (joins of a type take its lock one after the other, so
    # ids rise with joined_at), which spares reading and converting a time per request.
    rows = db.execute(
        select(
            WaitlistRequest.id,
            WaitlistRequest.uid,
            WaitlistRequest.user,
            WaitlistRequest.server_name,
            WaitlistRequest.team,
            WaitlistRequest.gpu_count,
            WaitlistRequest.state,
        ).where(
            WaitlistRequest.gpu_type == gpu_type,
            WaitlistRequest.state.in_(LIVE_REQUEST_STATES),
            same_install(WaitlistRequest.install, install),
        )
    ).all()
    teams = sorted({r.team for r in rows if r.team in catalog.teams})
    held: dict[str, int] = dict.fromkeys(teams, 0)
    for team, count in db.execute(
        select(UsageSession.team, func.sum(UsageSession.gpu_count))
        .where(
            UsageSession.gpu_type == gpu_type,
            UsageSession.ended_at.is_(None),
            UsageSession.team.in_(teams),
            UsageSession.borrowed.is_(False),
        )
        .group_by(UsageSession.team)
    ):
        if team is not None:
            held[team] += int(count or 0)
    for team, count in db.execute(
        select(GPUHold.team, func.sum(GPUHold.gpu_count))
        .where(GPUHold.gpu_type == gpu_type, GPUHold.team.in_(teams))
        .group_by(GPUHold.team)
    ):
        held[team] += int(count or 0)
    half_life = catalog.waitlist.half_life
    spans: dict[str, list[tuple[datetime, datetime | None, int]]] = {t: [] for t in teams}
    for team, started, ended, count in db.execute(
        select(
            UsageSession.team,
            UsageSession.started_at,
            UsageSession.ended_at,
            UsageSession.gpu_count,
        ).where(
            UsageSession.gpu_type == gpu_type,
            UsageSession.team.in_(teams),
            UsageSession.started_at.is_not(None),
            or_(
                UsageSession.ended_at.is_(None),
                UsageSession.ended_at > now - half_life * HALF_LIVES_BACK,
            ),
        )
    ):
        if started is not None and team is not None:
            spans[team].append((started, ended, count))
    typical = typical_length(db, gpu_type)
    return Line(
        gpu_type=gpu_type,
        free=None,
        waiting=tuple(
            Waiting(
                id=r.uid,
                user=r.user,
                server_name=r.server_name,
                team=r.team,
                gpu_type=gpu_type,
                gpu_count=r.gpu_count,
                joined_at=JOIN_ORDER + timedelta(microseconds=r.id),
                held=r.state != "waiting",
            )
            for r in rows
        ),
        teams={
            team: TeamStanding(
                team=team,
                quota=catalog.teams[team].quota.gpus.get(gpu_type, 0),
                held=held[team],
                recent_gpu_hours=decayed_gpu_hours(spans[team], now, half_life),
            )
            for team in teams
        },
        reserve_after=catalog.waitlist.reserve_after,
        now=now,
        expected_hours=typical.total_seconds() / 3600,
    )


def read_line(
    db: Session,
    catalog: Catalog,
    install: str | None,
    gpu_type: str,
    now: datetime,
    *,
    requests: list[WaitlistRequest] | None = None,
    extra_teams: tuple[str, ...] = (),
    exclude_hold_of: tuple[str, str] | None = None,
) -> LineView:
    """The line of `gpu_type` for `install` now. `extra_teams`: teams to stand in it besides
    the waiting ones (a direct spawn's). `exclude_hold_of`: (user, server_name) whose own hold
    is being consumed (it neither counts as taken nor as its team's)."""
    rows = live_requests(db, install, gpu_type) if requests is None else requests
    holds = [
        h
        for h in holds_of_type(db, install, gpu_type)
        if exclude_hold_of is None or (h.user, h.server_name) != exclude_hold_of
    ]
    sessions = db.execute(
        select(
            UsageSession.id,
            UsageSession.team,
            UsageSession.user,
            UsageSession.profile,
            UsageSession.gpu_count,
            UsageSession.started_at,
            UsageSession.reclaim_at,
        ).where(
            UsageSession.gpu_type == gpu_type,
            UsageSession.ended_at.is_(None),
            UsageSession.gpu_count > 0,
            of_install(install),
        )
    ).all()
    capacity = usable_capacity(db, catalog, install, gpu_type)
    free: int | None = None
    if capacity is not None:
        taken = sum(s.gpu_count for s in sessions) + sum(h.gpu_count for h in holds)
        free = max(capacity - taken, 0)
    lengths = recent_lengths(db, gpu_type)
    typical = typical_of(lengths)
    teams = sorted({r.team for r in rows} | set(extra_teams))
    standings = {
        team: _standing(db, catalog, team, gpu_type, now, holds, exclude_hold_of)
        for team in teams
        if team in catalog.teams
    }
    waiting = tuple(
        Waiting(
            id=r.uid,
            user=r.user,
            server_name=r.server_name,
            team=r.team,
            gpu_type=r.gpu_type,
            gpu_count=r.gpu_count,
            joined_at=r.joined_at,
            held=r.state != "waiting",
        )
        for r in rows
    )
    line = Line(
        gpu_type=gpu_type,
        free=free,
        waiting=waiting,
        teams=standings,
        reserve_after=catalog.waitlist.reserve_after,
        now=now,
        expected_hours=typical.total_seconds() / 3600,
        capacity=capacity,
    )
    running = _running(db, catalog, sessions, now, typical, lengths) + tuple(
        # a held GPU will run its holder's server: as one that ends a typical length from now
        Running(gpu_count=h.gpu_count, expected_end=now + typical, team=h.team, user=h.user)
        for h in holds
    )
    return LineView(line, running, typical, capacity)


def _standing(
    db: Session,
    catalog: Catalog,
    team: str,
    gpu_type: str,
    now: datetime,
    holds: list[GPUHold],
    exclude_hold_of: tuple[str, str] | None,
) -> TeamStanding:
    """A team's standing for one type: quota, what it holds on its own quota (sessions of every
    install, as admission counts them: not its borrowed servers; plus holds), its users' GPUs
    (borrowed ones too: the user's cap counts them), its recent use, and whether its budget is
    spent."""
    quota = catalog.teams[team].quota
    open_rows = db.execute(
        select(
            UsageSession.user,
            UsageSession.gpu_type,
            UsageSession.gpu_count,
            UsageSession.borrowed,
        ).where(
            UsageSession.team == team,
            UsageSession.ended_at.is_(None),
            UsageSession.gpu_count > 0,
        )
    ).all()
    team_holds = db.scalars(select(GPUHold).where(GPUHold.team == team)).all()
    user_held: dict[str, int] = {}
    held = 0
    for user, kind, count, borrowed in open_rows:
        user_held[user] = user_held.get(user, 0) + count
        if kind == gpu_type and not borrowed:
            held += count
    for hold in team_holds:
        if exclude_hold_of is not None and (hold.user, hold.server_name) == exclude_hold_of:
            continue
        user_held[hold.user] = user_held.get(hold.user, 0) + hold.gpu_count
        if hold.gpu_type == gpu_type:
            held += hold.gpu_count
    half_life = catalog.waitlist.half_life
    since = now - half_life * HALF_LIVES_BACK
    spans = db.execute(
        select(UsageSession.started_at, UsageSession.ended_at, UsageSession.gpu_count).where(
            UsageSession.team == team,
            UsageSession.gpu_type == gpu_type,
            UsageSession.started_at.is_not(None),
            or_(UsageSession.ended_at.is_(None), UsageSession.ended_at > since),
        )
    ).all()
    recent = decayed_gpu_hours(((s, e, n) for s, e, n in spans if s is not None), now, half_life)
    return TeamStanding(
        team=team,
        quota=quota.gpus.get(gpu_type, 0),
        held=held,
        recent_gpu_hours=recent,
        blocked="budget" if budget_used_up(quota, hours_this_month(db, team, now)) else None,
        user_cap=quota.gpus_per_user,
        user_held=user_held,
    )


def typical_length(db: Session, gpu_type: str) -> timedelta:
    """The median length of the type's latest closed sessions (DEFAULT_TYPICAL without any)."""
    return typical_of(recent_lengths(db, gpu_type))


def typical_of(lengths: list[float]) -> timedelta:
    """The median of session lengths in seconds, at least a minute (DEFAULT_TYPICAL of none)."""
    if not lengths:
        return DEFAULT_TYPICAL
    return timedelta(seconds=max(statistics.median(lengths), 60.0))


def recent_lengths(db: Session, gpu_type: str) -> list[float]:
    """Seconds that the type's latest closed sessions (at most TYPICAL_SAMPLE) lasted."""
    rows = db.execute(
        select(UsageSession.started_at, UsageSession.ended_at)
        .where(
            UsageSession.gpu_type == gpu_type,
            UsageSession.started_at.is_not(None),
            UsageSession.ended_at.is_not(None),
        )
        .order_by(UsageSession.ended_at.desc())
        .limit(TYPICAL_SAMPLE)
    ).all()
    return [(e - s).total_seconds() for s, e in rows if s is not None and e is not None]


def _running(
    db: Session,
    catalog: Catalog,
    sessions: Sequence[Any],
    now: datetime,
    typical: timedelta,
    lengths: Sequence[float] = (),
) -> tuple[Running, ...]:
    """What each open session of the type is expected to free, and when: its max-age deadline,
    the culler's announced stop or its reclaim, or its likely natural end from the type's recent
    session lengths (`expected_end`: its residual life at its age)."""
    ids = [s[0] for s in sessions]
    culls: dict[int, datetime] = {}
    if ids:
        culls = {
            session_id: cull_at
            for session_id, cull_at in db.execute(
                select(ServerActivity.session_id, ServerActivity.cull_at).where(
                    ServerActivity.session_id.in_(ids), ServerActivity.cull_at.is_not(None)
                )
            )
            if cull_at is not None
        }
    found = []
    for session_id, team, user, profile_slug, count, started, reclaim_at in sessions:
        profile = catalog.profile(profile_slug)
        max_age = (profile.max_age if profile else None) or catalog.culling.max_age
        stops = [at for at in (culls.get(session_id), reclaim_at) if at is not None]
        end = expected_end(
            started or now,
            now=now,
            max_age=max_age,
            cull_at=min(stops) if stops else None,
            typical=typical,
            lengths=lengths,
        )
        found.append(Running(gpu_count=count, expected_end=end, team=team, user=user))
    return tuple(found)


def same_install(column: Any, install: str | None) -> Any:
    """A wait-list row (request, hold) of `install`; every row for a handle of no install."""
    if install is None:
        return true()
    return column == install
