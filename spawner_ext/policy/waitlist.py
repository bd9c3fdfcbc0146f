"""Who gets the next free GPUs of a type, in what order, and roughly when: the wait-list's
decisions. Pure: no I/O; the ledger gathers the line and acts on the answer.

The rules, in the order they apply:

- *Fair share* (`fair_order`): teams take turns by weighted fair queueing on their recent,
  decayed GPU-hours per GPU of quota (`decayed_gpu_hours`); first come, first served within a
  team and between equals.
- *Turns* (`turns`): walking that order, a request blocked by its team (budget, quota full, user
  cap) is skipped and keeps its place; one that fits the free GPUs is served; a smaller request
  may start past a larger one that does not fit (backfill) until the larger one has waited
  `reserve_after`, after which the free GPUs are set aside for it.
- *Direct spawns* (`may_start_directly`) ask `turns` about a line with them in it, so a spawn
  outside the line never jumps it.
- *Estimates* (`estimates`) replay `turns` as running servers end.

Beyond the shared design (issue 19), each with a default, so code written to the design works:

- `Line.capacity` (default None: unknown): the most GPUs of the type the line can ever have. A
  request for more is skipped ("capacity") instead of reserving GPUs for ever and stalling the
  line; `estimates` derives it from `free` and `running` when it is None.
- A team's fair-share charge starts at `recent_gpu_hours + held * expected_hours`, not at
  `recent_gpu_hours`: GPUs a team holds now (sessions, holds) are charged as one typical session
  each. Without it a team that was just served would, on the next tick, take every GPU that
  frees up until its usage caught up (the virtual charge lasts only one call).
- `Running.team` and `Running.user` (default None): whose server it is, so that `estimates` sees
  a team's quota and a user's cap free up when it ends.
- `expected_end` takes `now`, which it never returns a time before, and an optional `cull_at`
  (the stop the culler has announced); `idle_since` and `idle_timeout` default to None.
- Skip reasons use admission's labels: the team's `blocked` text (e.g. "budget"), "gpu-quota",
  "user-cap", and "capacity".
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Waiting:
    """One live request, as the order sees it."""

    id: str
    user: str
    server_name: str
    team: str
    gpu_type: str
    gpu_count: int
    joined_at: datetime
    held: bool = False
    """It already has its hold (state held or starting): not served again, not in the order.
    Its GPUs are counted in its team's `held` and are not `free`."""


@dataclass(frozen=True)
class TeamStanding:
    """One team, for one GPU type."""

    team: str
    quota: int
    """The team's quota of the type (catalog); 0: none."""
    held: int
    """GPUs of the type the team holds now (open sessions and holds)."""
    recent_gpu_hours: float
    """Decayed GPU-hours of the type (see `decayed_gpu_hours`)."""
    blocked: str | None = None
    """Why the team cannot start anything now (e.g. "budget"), else None."""
    user_cap: int | None = None
    """`gpus_per_user`: the most GPUs one user may hold in the team; None: no cap."""
    user_held: Mapping[str, int] = field(default_factory=dict)
    """User -> GPUs (all types) the user holds in this team."""


@dataclass(frozen=True)
class Line:
    """The line of one GPU type at one moment: everything the decisions need."""

    gpu_type: str
    free: int | None
    """GPUs of the type free for the line now (capacity - in use - holds); None: unlimited
    (an autoscaled type: only quotas and caps hold requests back)."""
    waiting: tuple[Waiting, ...]
    """Live requests of this type, in any order."""
    teams: Mapping[str, TeamStanding]
    """Team -> standing. A team missing here counts as one with no quota and no usage."""
    reserve_after: timedelta
    """How long the request at the head may be passed by smaller ones (backfill)."""
    now: datetime
    expected_hours: float = 1.0
    """Typical session GPU-hours per GPU of the type: the charge of one more GPU in the order."""
    capacity: int | None = None
    """The most GPUs of the type the line can ever get (None: unknown). Requests for more are
    skipped as "capacity"."""


@dataclass(frozen=True)
class Turns:
    """What `turns` decided for a line."""

    serve: tuple[Waiting, ...]
    """Requests given a hold now, in fair order."""
    skipped: Mapping[str, str]
    """Request id -> why it is passed over now (it keeps its place): the team's `blocked`
    reason, "gpu-quota", "user-cap" or "capacity"."""
    reserved_for: str | None
    """The request the remaining free GPUs are set aside for, if any."""


@dataclass(frozen=True)
class Running:
    """Something that occupies GPUs of the type now, for the estimate: a running server, or a
    hold (as a server that runs `typical` from now)."""

    gpu_count: int
    expected_end: datetime
    """See `expected_end`."""
    team: str | None = None
    """Whose quota it counts against (None: unknown, the team's quota never frees up)."""
    user: str | None = None
    """Whose user cap it counts against (None: unknown)."""


def decayed_gpu_hours(
    spans: Iterable[tuple[datetime, datetime | None, int]],
    now: datetime,
    half_life: timedelta,
) -> float:
    """Recent GPU-hours with exponential decay: a GPU-hour used `half_life` ago weighs half.

    Each span is (started, ended or None for still running, gpu_count); it counts
    `gpu_count * ∫ 2^-((now - t) / H) dt` over the part of the span up to `now`, in hours. The
    integral in closed form: `H / ln 2 * (2^-(now - end)/H - 2^-(now - start)/H)`. A server that
    has run for ever weighs at most `H / ln 2` hours per GPU."""
    if half_life <= timedelta(0):
        raise ValueError(f"half_life must be positive, not {half_life}")
    h = half_life / HOUR
    total = 0.0
    for started, ended, gpu_count in spans:
        end = now if ended is None else min(ended, now)
        start = min(started, now)
        if end <= start or gpu_count <= 0:
            continue
        age_end = (now - end) / HOUR
        age_start = (now - start) / HOUR
        total += gpu_count * h / math.log(2) * (2 ** (-age_end / h) - 2 ** (-age_start / h))
    return total


def _standing(line: Line, team: str) -> TeamStanding:
    return line.teams.get(team) or TeamStanding(team, quota=0, held=0, recent_gpu_hours=0.0)


def fair_order(line: Line) -> tuple[Waiting, ...]:
    """The line's live requests not yet served, in the order they get GPUs (weighted fair
    queueing).

    Each team has a charge: its `recent_gpu_hours` plus `expected_hours` for each GPU of the
    type it holds now. Repeatedly, the team whose charge per GPU of quota (`charge / quota`) is
    lowest gives its earliest request (by `joined_at`, then `id`), and its charge grows by
    `gpu_count * expected_hours` (a virtual charge: what that request will likely use), so two
    teams with many requests interleave in proportion to their quotas. Teams with quota 0 come
    after every team with a quota. Ties (to 1e-9) go to the team whose next request joined first,
    then to the lower request id. Held requests are not in the order."""
    queues: dict[str, list[Waiting]] = {}
    for w in sorted(line.waiting, key=lambda w: (w.joined_at, w.id)):
        if not w.held:
            queues.setdefault(w.team, []).append(w)
    standings = {team: _standing(line, team) for team in queues}
    charge = {
        team: s.recent_gpu_hours + s.held * line.expected_hours for team, s in standings.items()
    }
    heads = dict.fromkeys(queues, 0)
    order: list[Waiting] = []

    def key(team: str) -> tuple[bool, float, datetime, str]:
        quota = standings[team].quota
        head = queues[team][heads[team]]
        return (quota <= 0, round(charge[team] / max(quota, 1), 9), head.joined_at, head.id)

    # A heap of the teams by key: only the team just served changes its key.
    teams = [(key(team), team) for team in queues]
    heapq.heapify(teams)
    while teams:
        _, team = heapq.heappop(teams)
        w = queues[team][heads[team]]
        order.append(w)
        charge[team] += w.gpu_count * line.expected_hours
        heads[team] += 1
        if heads[team] < len(queues[team]):
            heapq.heappush(teams, (key(team), team))
    return tuple(order)


def _blocker(
    line: Line, w: Waiting, team_held: Mapping[str, int], user_held: Mapping[tuple[str, str], int]
) -> str | None:
    """Why `w` cannot be served whatever is free, or None."""
    standing = _standing(line, w.team)
    if standing.blocked:
        return standing.blocked
    if line.capacity is not None and w.gpu_count > line.capacity:
        return "capacity"
    if team_held[w.team] + w.gpu_count > standing.quota:
        return "gpu-quota"
    cap = standing.user_cap
    if cap is not None and user_held[w.team, w.user] + w.gpu_count > cap:
        return "user-cap"
    return None


def turns(line: Line) -> Turns:
    """Which requests get a hold now.

    Walk `fair_order`. A request is skipped (it keeps its place; the reason is in `skipped`)
    when its team is blocked (e.g. budget used up), when it asks for more than `capacity`, when
    its team would hold more than its quota of the type, or when its user would hold more than
    the team's `user_cap`. Otherwise it is served if its GPUs fit in `free` (then they leave
    `free` and count as held by its team and user for the requests after it). The first request
    not skipped that does not fit decides what happens next: if it has waited `reserve_after` or
    longer, nothing after it is served, and the free GPUs are set aside for it (`reserved_for`);
    if not, later requests that fit may be served (backfill). The walk goes on to the end to
    record every skip. With `free` None every request not skipped is served."""
    free = line.free
    team_held = {team: s.held for team, s in line.teams.items()}
    user_held = {
        (team, user): n for team, s in line.teams.items() for user, n in s.user_held.items()
    }
    serve: list[Waiting] = []
    skipped: dict[str, str] = {}
    reserved_for: str | None = None
    head_seen = False
    for w in fair_order(line):
        team_held.setdefault(w.team, 0)
        user_held.setdefault((w.team, w.user), 0)
        reason = _blocker(line, w, team_held, user_held)
        if reason is not None:
            skipped[w.id] = reason
        elif reserved_for is not None:
            continue
        elif free is None or w.gpu_count <= free:
            serve.append(w)
            if free is not None:
                free -= w.gpu_count
            team_held[w.team] += w.gpu_count
            user_held[w.team, w.user] += w.gpu_count
        elif not head_seen:
            head_seen = True
            if line.now - w.joined_at >= line.reserve_after:
                reserved_for = w.id
    return Turns(tuple(serve), skipped, reserved_for)


def positions(line: Line) -> Mapping[str, int]:
    """Request id -> its 1-based place in `fair_order` (held requests have none). A skipped
    request keeps its place."""
    return {w.id: place for place, w in enumerate(fair_order(line), start=1)}


def may_start_directly(line: Line, candidate: Waiting) -> bool:
    """May a server be spawned directly (not from the line) now? Only if `turns` of the line
    with `candidate` in it, joined now, would serve it now: it neither jumps the line nor takes
    GPUs set aside for the head. An empty line with enough free GPUs: True. `candidate.id` must
    not be the id of a request in the line."""
    joined = replace(candidate, joined_at=line.now, held=False)
    served = turns(replace(line, waiting=(*line.waiting, joined))).serve
    return any(w.id == joined.id for w in served)


def estimates(
    line: Line, running: Sequence[Running], typical: timedelta
) -> Mapping[str, datetime | None]:
    """Request id -> when it will likely get its GPUs (not held requests: they have them).

    An event simulation that replays `turns`: at `now`, and each time something in `running`
    ends (at its `expected_end`, never before `now`), its GPUs are free again (and leave its
    team's and user's holdings when `team`/`user` are given) and `turns` runs on the requests
    left, with the clock at that time; each request served starts a server that runs `typical`.
    None when it cannot be told: its team stays blocked (the budget), it never fits (more than
    the capacity: `line.capacity`, else `free` plus all of `running`), or its quota or cap
    never frees up in the simulation. With `free` None, a request waits only for its team's
    quota and its user's cap."""
    capacity = line.capacity
    if capacity is None and line.free is not None:
        capacity = line.free + sum(r.gpu_count for r in running)
    free = line.free
    teams = dict(line.teams)
    seq = itertools.count()  # ends at the same time: in the order they were added
    ends = [(max(r.expected_end, line.now), next(seq), r) for r in running]
    heapq.heapify(ends)
    pending = [w for w in line.waiting if not w.held]
    result: dict[str, datetime | None] = {w.id: None for w in pending}
    now = line.now

    def add(team: str | None, user: str | None, gpus: int) -> None:
        if team is None:
            return
        s = teams.get(team) or TeamStanding(team, quota=0, held=0, recent_gpu_hours=0.0)
        user_held = dict(s.user_held)
        if user is not None:
            user_held[user] = max(user_held.get(user, 0) + gpus, 0)
        teams[team] = replace(s, held=max(s.held + gpus, 0), user_held=user_held)

    while True:
        sim = replace(
            line, free=free, waiting=tuple(pending), teams=teams, now=now, capacity=capacity
        )
        served = turns(sim).serve
        for w in served:
            result[w.id] = now
            if free is not None:
                free -= w.gpu_count
            add(w.team, w.user, w.gpu_count)
            done = Running(w.gpu_count, now + typical, w.team, w.user)
            heapq.heappush(ends, (done.expected_end, next(seq), done))
        ids = {w.id for w in served}
        pending = [w for w in pending if w.id not in ids]
        if not pending or not ends:
            return result
        now = ends[0][0]
        while ends and ends[0][0] <= now:
            _, _, ended = heapq.heappop(ends)
            if free is not None:
                free += ended.gpu_count
            add(ended.team, ended.user, -ended.gpu_count)


def expected_end(
    started: datetime,
    *,
    max_age: timedelta | None,
    typical: timedelta,
    now: datetime,
    idle_since: datetime | None = None,
    idle_timeout: timedelta | None = None,
    cull_at: datetime | None = None,
    lengths: Sequence[float] = (),
) -> datetime:
    """When a running server will likely end: the earliest of its `max_age` deadline, its idle
    deadline (`idle_since + idle_timeout`, only while it is idle: `idle_since` not None), the
    stop the culler has announced (`cull_at`) and its likely natural end, but never before
    `now` (a server past them all is still running).

    Its likely natural end, with `lengths` (seconds that recent closed sessions of its type
    lasted): now plus the median of what the sessions that lasted longer than this server's age
    ran beyond that age (its residual life: a server that has run for hours is likely one of
    the long ones); now when none lasted as long. Without `lengths`: `started + typical`."""
    if lengths:
        age = (now - started).total_seconds()
        beyond = [length - age for length in lengths if length > age]
        natural = now + timedelta(seconds=statistics.median(beyond)) if beyond else now
    else:
        natural = started + typical
    deadlines = [natural]
    if max_age is not None:
        deadlines.append(started + max_age)
    if idle_since is not None and idle_timeout is not None:
        deadlines.append(idle_since + idle_timeout)
    if cull_at is not None:
        deadlines.append(cull_at)
    return max(min(deadlines), now)
