"""Wait-list benchmark: a seeded, contended trace of people wanting H100s, run through stock
behaviour (refused, they retry, some give up) and through the wait-list (the real policy
functions), then the latency of joining and of admission with 1,000 requests in line, on SQLite
and PostgreSQL. It prints its figures; it asserts nothing about them.

The trace (simulated time, discrete events, deterministic given --seed): four teams of different
sizes and quotas share 8 H100s; each team's requests arrive as a Poisson process whose rate
follows the hour of day (peaks at 9-12 and 13-17 on weekdays, where demand exceeds the GPUs;
quiet nights; weekends at 30 %); sessions last a lognormal time (skewed: median per team,
sigma 1, 5 min to 12 h); requests are for 1, 2 or 4 GPUs, mostly 1. Each person also has a
patience (30-120 min: how long they keep retrying under stock), a start mode for the wait-list
("auto" or "ask") and, for "ask", how long they take to answer their turn (a few never do).

- *Stock*: a spawn is admitted when the GPUs are free and the team's quota allows it, else
  refused; the person retries every 4-6 min and gives up when their patience runs out. No order
  between them: whoever retries first after GPUs free up gets them.
- *Wait-list*: a spawn that `may_start_directly` starts; any other joins the line, with the
  estimate `estimates` gives then. Each time GPUs free up or someone joins, `turns` on the line
  built from the simulated state gives turns: "auto" starts at once, "ask" holds the GPUs for
  `waitlist.hold` until the person answers (or the hold expires); `waitlist.max_wait` ends a
  request that waited that long. Settings: the example catalog's `waitlist` section.

Run: .venv/bin/python -m benchmarks.waitlist [--seed 1] [--days 28] [--quick] [--no-latency]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.admission import machine, postgres_server
from benchmarks.waitlist_latency import (
    CAPACITY,
    EXAMPLE_CATALOG,
    GPU_TYPE,
    TARGET_P99_MS,
    Timed,
    latency_case,
    latency_table,
    scratch_url,
)
from spawner_ext.catalog import load_catalog
from spawner_ext.catalog.durations import format_duration
from spawner_ext.catalog.waitlist import Waitlist
from spawner_ext.policy.waitlist import (
    Line,
    Running,
    TeamStanding,
    Waiting,
    decayed_gpu_hours,
    estimates,
    expected_end,
    may_start_directly,
    turns,
)

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
MINUTE = timedelta(minutes=1)
MAX_AGE = timedelta(days=3)  # the example catalog's culling.max_age
RETRY = (4.0, 6.0)  # minutes between a refused person's tries (uniform)
PATIENCE = (30.0, 120.0)  # minutes a refused person keeps retrying (uniform)
TYPICAL_SAMPLE = 200  # as the ledger: the median of the type's latest closed sessions
RESIDUAL_SAMPLE = 1000  # the what-if estimates' sample of closed sessions
DRAWS = 20  # replays of the sampled what-if estimate
SHIPPED, RESIDUAL, SAMPLED = "as shipped", "what-if: median residual life", "what-if: sampled"
ESTIMATORS = (SHIPPED, RESIDUAL, SAMPLED)
DEFAULT_TYPICAL = 60.0  # minutes, before any session has ended
NEVER = timedelta(days=10_000)
TARGET_P95_RATIO = 0.5
TARGET_WITHIN_2X = 0.8

HOURLY = (
    # weekday arrival rate by hour of day, as a factor of the team's `rate`
    *[0.1] * 7, 0.3, 0.7, 1.5, 1.5, 1.5, 0.9, 1.4, 1.4, 1.4, 1.4, 0.8, 0.5, *[0.25] * 5,
)  # fmt: skip
WEEKEND = 0.3


@dataclass(frozen=True)
class TeamSpec:
    name: str
    users: int
    quota: int
    """H100s the team may hold at once."""
    rate: float
    """Requests per hour at an hourly factor of 1."""
    median_minutes: float
    """Median session length."""
    sizes: tuple[float, float, float]
    """Weights of 1, 2 and 4 GPUs per request."""


TEAMS = (
    TeamSpec("nlp", 16, 6, 1.2, 90, (0.7, 0.2, 0.1)),
    TeamSpec("vision", 10, 4, 0.8, 60, (0.8, 0.15, 0.05)),
    TeamSpec("robotics", 4, 2, 0.3, 120, (0.85, 0.15, 0.0)),
    TeamSpec("teaching", 30, 2, 1.0, 40, (1.0, 0.0, 0.0)),
)


@dataclass(frozen=True)
class Want:
    """One person wanting a GPU server: the trace both models run."""

    id: str
    team: str
    user: str
    at: float
    """Minutes since START."""
    gpus: int
    length: float
    """Minutes the session runs once started."""
    patience: float
    """Stock: minutes the person keeps retrying."""
    start: str
    """Wait-list: "auto" or "ask"."""
    answer: float | None
    """Wait-list, "ask": minutes from the turn until the person starts it (None: never)."""


def make_trace(days: int, seed: int, teams: Sequence[TeamSpec] = TEAMS) -> list[Want]:
    rng = random.Random(seed)
    wants: list[Want] = []
    for day, hour, team in itertools.product(range(days), range(24), teams):
        rate = team.rate * HOURLY[hour] * (WEEKEND if (START.weekday() + day) % 7 >= 5 else 1)
        t = (day * 24 + hour) * 60.0
        end = t + 60.0
        while True:
            t += rng.expovariate(rate / 60)
            if t >= end:
                break
            (gpus,) = rng.choices((1, 2, 4), weights=team.sizes)
            length = rng.lognormvariate(math.log(team.median_minutes), 1.0)
            auto = rng.random() < 0.4
            answer: float | None = None
            if not auto:
                r = rng.random()
                if r < 0.75:
                    answer = rng.uniform(0.5, 5)
                elif r < 0.9:
                    answer = rng.uniform(5, 10)
                elif r < 0.97:
                    answer = rng.uniform(10, 40)  # too late: the hold has expired
            wants.append(
                Want(
                    id=f"{len(wants):06d}",
                    team=team.name,
                    user=f"{team.name}-{rng.randrange(team.users):02d}",
                    at=t,
                    gpus=gpus,
                    length=min(max(length, 5.0), 720.0),
                    patience=rng.uniform(*PATIENCE),
                    start="auto" if auto else "ask",
                    answer=answer,
                )
            )
    wants.sort(key=lambda w: (w.at, w.id))
    return wants


def when(t: float) -> datetime:
    return START + timedelta(minutes=t)


def minutes(moment: datetime) -> float:
    return (moment - START) / MINUTE


# --- the GPUs: running sessions, holds, each team's standing ----------------------------------


@dataclass
class Pool:
    """The H100s of the simulation: what runs, what is held, and each team's decayed usage
    (kept incrementally: a closed span's decayed GPU-hours only shrink by the decay factor)."""

    teams: dict[str, TeamSpec]
    settings: Waitlist
    running: dict[str, tuple[Want, float]] = field(default_factory=dict)
    """Request id -> (its want, when its session started)."""
    holds: dict[str, tuple[Want, float]] = field(default_factory=dict)
    """Request id -> (its want, when its hold was given)."""
    closed: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Team -> (decayed GPU-hours of its closed sessions at a time, that time)."""
    lengths: list[float] = field(default_factory=list)

    def used(self, team: str | None = None) -> int:
        return sum(
            w.gpus
            for w, _ in itertools.chain(self.running.values(), self.holds.values())
            if team is None or w.team == team
        )

    def free(self) -> int:
        return CAPACITY - self.used()

    def own(self, team: str) -> int:
        """GPUs on the team's own quota (what its quota and the line judge): all it holds here;
        the borrowing benchmark's pool leaves its borrowed servers out."""
        return self.used(team)

    def fits(self, want: Want) -> bool:
        """Stock admission: free GPUs and the team's quota."""
        return want.gpus <= self.free() and self.used(want.team) + want.gpus <= self.quota(want)

    def quota(self, want: Want) -> int:
        return self.teams[want.team].quota

    def start(self, want: Want, t: float) -> None:
        self.holds.pop(want.id, None)
        self.running[want.id] = (want, t)
        if self.free() < 0 or self.own(want.team) > self.quota(want):
            raise AssertionError(f"{want.id} over the GPUs or its team's quota at {t:.1f} min")

    def end(self, want: Want, t: float) -> None:
        _, started = self.running.pop(want.id)
        self.lengths.append(t - started)
        half_life = self.settings.half_life
        span = decayed_gpu_hours([(when(started), when(t), want.gpus)], when(t), half_life)
        value, at = self.closed.get(want.team, (0.0, t))
        decay = 2 ** (-(t - at) / (half_life / MINUTE))
        self.closed[want.team] = (value * decay + span, t)

    def typical(self) -> float:
        recent = self.lengths[-TYPICAL_SAMPLE:]
        return max(statistics.median(recent), 1.0) if recent else DEFAULT_TYPICAL

    def recent_gpu_hours(self, team: str, t: float) -> float:
        half_life = self.settings.half_life
        value, at = self.closed.get(team, (0.0, t))
        spans = [(when(s), None, w.gpus) for w, s in self.running.values() if w.team == team]
        return value * 2 ** (-(t - at) / (half_life / MINUTE)) + decayed_gpu_hours(
            spans, when(t), half_life
        )

    def line(
        self, waiting: Sequence[Want], t: float, *, reserve_after: timedelta | None = None
    ) -> Line:
        """The line as the ledger's read_line builds it: live requests (held ones marked), free
        GPUs net of sessions and holds, each team's quota, holdings and decayed usage."""
        requests = [_waiting(w, held=False) for w in waiting]
        requests += [_waiting(w, held=True, joined=j) for w, j in self.holds.values()]
        teams = {
            name: TeamStanding(
                name,
                quota=spec.quota,
                held=self.own(name),
                recent_gpu_hours=self.recent_gpu_hours(name, t),
            )
            for name, spec in self.teams.items()
        }
        return Line(
            gpu_type=GPU_TYPE,
            free=self.free(),
            waiting=tuple(requests),
            teams=teams,
            reserve_after=self.settings.reserve_after if reserve_after is None else reserve_after,
            now=when(t),
            expected_hours=self.typical() / 60,
            capacity=CAPACITY,
        )

    def expected(self, t: float, *, residual: bool = False) -> list[Running]:
        """What runs or is held, with when it will likely end: as the ledger's `_running`
        (`expected_end`: its start plus the typical length, or now once past it), or, with
        `residual`, after the median residual life of sessions that lasted as long as it has
        (the latest closed sessions that ran at least its age: the median of what they ran
        beyond it)."""
        typical = timedelta(minutes=self.typical())
        found = []
        for w, s in self.running.values():
            if residual:
                end = when(t + self.residual(t - s))
            else:
                end = expected_end(
                    when(s),
                    max_age=MAX_AGE,
                    typical=typical,
                    now=when(t),
                    lengths=[60 * x for x in self.lengths[-TYPICAL_SAMPLE:]],
                )
            found.append(Running(w.gpus, end, w.team, w.user))
        found += [
            Running(w.gpus, when(t) + typical, w.team, w.user) for w, _ in self.holds.values()
        ]
        return found

    def residual(self, age: float) -> float:
        longer = [length - age for length in self.lengths[-RESIDUAL_SAMPLE:] if length > age]
        return statistics.median(longer) if longer else self.typical()


def _waiting(want: Want, *, held: bool, joined: float | None = None) -> Waiting:
    return Waiting(
        id=want.id,
        user=want.user,
        server_name=want.id,
        team=want.team,
        gpu_type=GPU_TYPE,
        gpu_count=want.gpus,
        joined_at=when(want.at),
        held=held,
    )


# --- what is measured -------------------------------------------------------------------------


@dataclass
class Outcome:
    want: Want
    started: float | None = None
    """When its session started (None: never)."""
    abandoned: str | None = None
    """"gave up" (stock), "expired" or "hold expired" (wait-list)."""
    ended: float | None = None
    """When it was abandoned."""
    turn: float | None = None
    """Wait-list: when it was given its GPUs."""
    joined: bool = False
    """Wait-list: it joined the line (could not start directly)."""
    estimates: dict[str, float | None] = field(default_factory=dict)
    """Wait-list: the estimated turn at join time, minutes since START (None: unknown), by
    estimator (ESTIMATORS): the ledger's, and two what-ifs."""

    @property
    def wait(self) -> float | None:
        return None if self.started is None else self.started - self.want.at


@dataclass
class Meter:
    """Integrates, between events, the GPUs idle while someone waited who could use them (as
    `turns` with backfill and no reservation would hand them out, per team of the receiver),
    the GPUs set aside for the head among those, the GPUs held for people to answer, and each
    team's GPUs while it is backlogged (a request of it waits that its quota allows)."""

    last: float = 0.0
    idle_rate: dict[str, int] = field(default_factory=dict)
    reserved_rate: int = 0
    held_rate: int = 0
    backlog: dict[str, int] = field(default_factory=dict)
    """Team -> GPUs it holds, for teams backlogged now."""
    idle: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    reserved: float = 0.0
    held: float = 0.0
    backlogged_minutes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    backlogged_gpu_minutes: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def advance(self, t: float) -> None:
        span = t - self.last
        for team, gpus in self.idle_rate.items():
            self.idle[team] += gpus * span
        self.reserved += self.reserved_rate * span
        self.held += self.held_rate * span
        for team, gpus in self.backlog.items():
            self.backlogged_minutes[team] += span
            self.backlogged_gpu_minutes[team] += gpus * span
        self.last = t

    def look(self, pool: Pool, waiting: Sequence[Want], t: float, reserved: bool) -> None:
        """Record the state after the events at `t`; `reserved`: the wait-list, whose own turns
        may set GPUs aside for the head."""
        self.idle_rate = {}
        self.reserved_rate = 0
        self.held_rate = sum(w.gpus for w, _ in pool.holds.values())
        self.backlog = {
            w.team: pool.used(w.team)
            for w in waiting
            if pool.used(w.team) + w.gpus <= pool.quota(w)
        }
        if not waiting or pool.free() == 0:
            return
        usable = turns(pool.line(waiting, t, reserve_after=NEVER)).serve
        for w in usable:
            self.idle_rate[w.team] = self.idle_rate.get(w.team, 0) + w.gpu_count
        if reserved:
            self.reserved_rate = sum(w.gpu_count for w in usable)


@dataclass
class Result:
    label: str
    outcomes: list[Outcome]
    meter: Meter
    seconds: float


class Events:
    """A discrete-event clock: (time, order added) in a heap."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, str, Want]] = []
        self.seq = itertools.count()

    def add(self, t: float, kind: str, want: Want) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, want))

    def __iter__(self) -> Iterator[tuple[float, str, Want]]:
        while self.heap:
            t, _, kind, want = heapq.heappop(self.heap)
            yield t, kind, want


# --- the two models ---------------------------------------------------------------------------


def run_stock(wants: Sequence[Want], settings: Waitlist, seed: int) -> Result:
    """Refusal and retries: no line, no order between people who retry."""
    clock = time.process_time()
    rng = random.Random(seed + 1)
    pool = Pool({t.name: t for t in TEAMS}, settings)
    outcomes = {w.id: Outcome(w) for w in wants}
    retrying: dict[str, Want] = {}
    meter = Meter()
    events = Events()
    for w in wants:
        events.add(w.at, "try", w)
    for t, kind, want in events:
        meter.advance(t)
        if kind == "end":
            pool.end(want, t)
        elif kind == "try":
            if pool.fits(want):
                retrying.pop(want.id, None)
                pool.start(want, t)
                outcomes[want.id].started = t
                events.add(t + want.length, "end", want)
            else:
                retrying[want.id] = want
                again = t + rng.uniform(*RETRY)
                if again <= want.at + want.patience:
                    events.add(again, "try", want)
                else:
                    events.add(want.at + want.patience, "give up", want)
        elif kind == "give up":
            del retrying[want.id]
            outcomes[want.id].abandoned = "gave up"
            outcomes[want.id].ended = t
        meter.look(pool, list(retrying.values()), t, reserved=False)
    return Result("stock", list(outcomes.values()), meter, time.process_time() - clock)


def run_waitlist(
    wants: Sequence[Want], settings: Waitlist, seed: int, *, patience: bool = False
) -> Result:
    """The wait-list: direct start when `may_start_directly`, else the line; `turns` after every
    change; holds for "ask", max_wait expiry; the estimate at join time. `patience`: a person
    still waiting when their stock patience runs out cancels (equal terms with stock)."""
    clock = time.process_time()
    rng = random.Random(seed + 2)  # for the sampled what-if estimate only
    pool = Pool({t.name: t for t in TEAMS}, settings)
    outcomes = {w.id: Outcome(w) for w in wants}
    waiting: dict[str, Want] = {}
    meter = Meter()
    events = Events()
    hold = settings.hold / MINUTE
    for w in wants:
        events.add(w.at, "arrive", w)

    def begin(want: Want, t: float) -> None:
        pool.start(want, t)
        outcomes[want.id].started = t
        events.add(t + want.length, "end", want)

    def serve(t: float) -> None:
        for chosen in turns(pool.line(list(waiting.values()), t)).serve:
            want = waiting.pop(chosen.id)
            outcomes[want.id].turn = t
            if want.start == "auto":
                begin(want, t)
                continue
            pool.holds[want.id] = (want, t)
            if want.answer is not None and want.answer < hold:
                events.add(t + want.answer, "answer", want)
            else:
                events.add(t + hold, "hold expires", want)

    for t, kind, want in events:
        meter.advance(t)
        outcome = outcomes[want.id]
        if kind == "arrive":
            line = pool.line(list(waiting.values()), t)
            candidate = _waiting(want, held=False)
            if may_start_directly(line, candidate):
                begin(want, t)
            else:
                joined = replace(line, waiting=(*line.waiting, candidate))
                typical = timedelta(minutes=pool.typical())
                outcome.joined = True
                outcome.estimates = {
                    SHIPPED: _at(estimates(joined, pool.expected(t), typical), want),
                    RESIDUAL: _at(
                        estimates(joined, pool.expected(t, residual=True), typical), want
                    ),
                    SAMPLED: sampled_estimate(pool, joined, want, t, rng),
                }
                waiting[want.id] = want
                events.add(t + settings.max_wait / MINUTE, "expire", want)
                if patience:
                    events.add(t + want.patience, "cancel", want)
        elif kind == "end":
            pool.end(want, t)
        elif kind == "answer":
            begin(want, t)
        elif kind == "hold expires":
            del pool.holds[want.id]
            outcome.abandoned, outcome.ended = "hold expired", t
        elif kind in ("expire", "cancel"):
            if want.id not in waiting:
                continue
            del waiting[want.id]
            outcome.abandoned = "expired" if kind == "expire" else "cancelled"
            outcome.ended = t
        serve(t)
        meter.look(pool, list(waiting.values()), t, reserved=True)
    label = "wait-list, stock's patience" if patience else "wait-list"
    return Result(label, list(outcomes.values()), meter, time.process_time() - clock)


def sampled_estimate(
    pool: Pool, line: Line, want: Want, t: float, rng: random.Random
) -> float | None:
    """What-if: the median, over DRAWS replays of `estimates`, of the estimated turn when each
    running server ends after a residual life drawn from the latest closed sessions that ran at
    least its age (a held GPU: a whole session drawn), instead of one expected end each."""
    sample = pool.lengths[-RESIDUAL_SAMPLE:]
    typical = pool.typical()
    found = []
    for _ in range(DRAWS):
        running = []
        for w, started in pool.running.values():
            age = t - started
            longer = [length for length in sample if length > age]
            rest = rng.choice(longer) - age if longer else typical
            running.append(Running(w.gpus, when(t + rest), w.team, w.user))
        for w, _ in pool.holds.values():
            rest = rng.choice(sample) if sample else typical
            running.append(Running(w.gpus, when(t + rest), w.team, w.user))
        at = estimates(line, running, timedelta(minutes=typical)).get(want.id)
        found.append(math.inf if at is None else minutes(at))
    middle = statistics.median(found)
    return None if math.isinf(middle) else middle


def _at(found: Mapping[str, datetime | None], want: Want) -> float | None:
    at = found.get(want.id)
    return None if at is None else minutes(at)


# --- figures ----------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (NaN for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(math.ceil(p / 100 * len(ordered)) - 1, 0))]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 when all are equal, 1/n when one
    has everything."""
    xs = [x for x in values if not math.isnan(x)]
    squares = sum(x * x for x in xs)
    return sum(xs) ** 2 / (len(xs) * squares) if squares else 1.0


@dataclass(frozen=True)
class TeamFigures:
    requests: int
    mean_wait: float
    p95_wait: float
    abandoned: dict[str, int]
    idle_gpu_hours: float
    served_gpu_hours: float
    backlog_share: float
    """GPUs held while backlogged, on average, per GPU of quota."""


def figures(result: Result, team: str | None) -> TeamFigures:
    mine = [o for o in result.outcomes if team is None or o.want.team == team]
    waits = [o.wait for o in mine if o.wait is not None]
    abandoned: dict[str, int] = defaultdict(int)
    for o in mine:
        if o.abandoned:
            abandoned[o.abandoned] += 1
    meter = result.meter
    idle = sum(v for k, v in meter.idle.items() if team is None or k == team) / 60
    share = math.nan
    if team is not None and meter.backlogged_minutes[team]:
        quota = next(t.quota for t in TEAMS if t.name == team)
        share = meter.backlogged_gpu_minutes[team] / meter.backlogged_minutes[team] / quota
    return TeamFigures(
        requests=len(mine),
        mean_wait=statistics.fmean(waits) if waits else math.nan,
        p95_wait=pct(waits, 95),
        abandoned=dict(abandoned),
        idle_gpu_hours=idle,
        served_gpu_hours=sum(o.want.length * o.want.gpus for o in mine if o.started is not None)
        / 60,
        backlog_share=share,
    )


@dataclass(frozen=True)
class EstimateError:
    joined: int
    compared: int
    unknown: int
    median: float
    p90: float
    within_2x: float
    early: float
    """The share of estimates earlier than the turn came."""


def estimate_error(result: Result, estimator: str = SHIPPED) -> EstimateError:
    """|estimated - actual| / actual wait until the turn, for requests that joined the line and
    got their turn; an unknown estimate counts as a miss."""
    errors: list[float] = []
    within = unknown = early = 0
    joined = [o for o in result.outcomes if o.joined]
    for o in joined:
        if o.turn is None:
            continue
        actual = max(o.turn - o.want.at, 1 / 60)
        told = o.estimates.get(estimator)
        if told is None:
            unknown += 1
            errors.append(math.inf)
            continue
        estimated = max(told - o.want.at, 0.0)
        errors.append(abs(estimated - actual) / actual)
        within += actual / 2 <= estimated <= actual * 2
        early += estimated < actual
    n = len(errors)
    return EstimateError(
        len(joined),
        n,
        unknown,
        pct(errors, 50),
        pct(errors, 90),
        within / n if n else math.nan,
        early / n if n else math.nan,
    )


def fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def demand_line(wants: Sequence[Want], days: int) -> str:
    """How contended the trace is: the GPUs its requests would hold at each half hour if every
    one started at once (no GPU limit)."""
    demand = [0] * (days * 48)
    for w in wants:
        first, last = math.ceil(w.at / 30), math.floor((w.at + w.length) / 30)
        for slot in range(first, min(last + 1, len(demand))):
            demand[slot] += w.gpus
    over = sum(d > CAPACITY for d in demand)
    return (
        f"Demand (GPUs the requests would hold with no limit, every half hour): above "
        f"{CAPACITY} in {over / 2:.0f} of {days * 24} hours, peak {max(demand)}, mean "
        f"{statistics.fmean(demand):.1f}."
    )


def simulation_report(results: Sequence[Result], days: int, seed: int) -> tuple[str, bool]:
    """The Markdown figures, and whether the simulation's targets are met by the wait-list as
    the brief models it (people wait until max_wait)."""
    stock = results[0]
    wants = [o.want for o in stock.outcomes]
    cpu = ", ".join(f"{r.label} {r.seconds:.1f} s" for r in results)
    lines = [
        f"Trace: seed {seed}, {days} days from {START:%Y-%m-%d} (a Monday), {len(wants):,} "
        f"requests, {CAPACITY} H100s; sizes 1/2/4 GPUs: "
        + "/".join(str(sum(w.gpus == n for w in wants)) for n in (1, 2, 4))
        + f"; start auto {sum(w.start == 'auto' for w in wants)}, ask "
        f"{sum(w.start == 'ask' for w in wants)} (of whom never answer "
        f"{sum(w.start == 'ask' and w.answer is None for w in wants)}). CPU: {cpu}.",
        demand_line(wants, days),
        "",
        "| team | users | quota | requests | model | mean wait (min) | p95 wait (min) "
        "| abandoned | idle GPU-h while waiting | served GPU-h |",
        "|" + "---|" * 10,
    ]
    for spec in (*TEAMS, None):
        for r in results:
            f = figures(r, spec.name if spec else None)
            name = spec.name if spec else "**all**"
            users = str(spec.users) if spec else str(sum(t.users for t in TEAMS))
            quota = str(spec.quota) if spec else f"{sum(t.quota for t in TEAMS)} of {CAPACITY}"
            abandoned = " + ".join(f"{n} {why}" for why, n in sorted(f.abandoned.items())) or "0"
            lines.append(
                f"| {name} | {users} | {quota} | {f.requests:,} | {r.label} "
                f"| {fmt(f.mean_wait, 1)} | {fmt(f.p95_wait, 1)} | {abandoned} "
                f"| {fmt(f.idle_gpu_hours, 1)} | {fmt(f.served_gpu_hours)} |"
            )
    teams = [t.name for t in TEAMS]
    lines += [
        "",
        "Fairness: Jain's index J(x) = (Σx)² / (n·Σx²) over the 4 teams (1: all equal; 0.25: "
        "one team has it all). J(wait): x = a team's mean wait (equal waits, whatever the quota). "
        "J(service/quota): x = the GPUs a team held on average while backlogged (a request of it "
        "waited that its quota allowed), divided by its quota (backlogged teams share the GPUs "
        "in proportion to their quotas); the x per team in brackets.",
        "",
    ]
    for r in results:
        shares = [figures(r, t).backlog_share for t in teams]
        lines.append(
            f"- {r.label}: J(wait) {jain([figures(r, t).mean_wait for t in teams]):.3f}, "
            f"J(service/quota) {jain(shares):.3f} ({', '.join(fmt(x, 2) for x in shares)})"
        )
    lines.append("")
    for r in results[1:]:
        for what in ESTIMATORS:
            err = estimate_error(r, what)
            lines.append(
                f"- {r.label}, estimate {what}: {err.compared:,} of {err.joined:,} requests "
                f"that joined got their turn; |estimated - actual| / actual wait: median "
                f"{fmt(err.median, 2)}, p90 {fmt(err.p90, 2)}; within a factor 2: "
                f"{fmt(100 * err.within_2x, 1)} %; too early {fmt(100 * err.early, 1)} % "
                f"({err.unknown} without an estimate)"
            )
        lines.append(
            f"- {r.label}: GPU-hours held for people to answer their turn "
            f"{r.meter.held / 60:.1f}; set aside for a multi-GPU request at the head "
            f"(reserve_after) {r.meter.reserved / 60:.1f}"
        )
    every = ", ".join(
        f"{r.label} {fmt(pct([math.inf if o.wait is None else o.wait for o in r.outcomes], 95))}"
        for r in results
    )
    lines.append(
        f"- p95 wait over every request, an abandoned one counted as never served: {every}"
    )
    all_met = True
    lines += ["", "Targets:"]
    base = figures(stock, None)
    for r in results[1:]:
        total = figures(r, None)
        err = estimate_error(r)
        met = [
            (
                f"p95 wait at most {TARGET_P95_RATIO:g}x stock's: {fmt(total.p95_wait, 1)} vs "
                f"{fmt(base.p95_wait, 1)} min ({total.p95_wait / base.p95_wait:.2f}x)",
                total.p95_wait <= TARGET_P95_RATIO * base.p95_wait,
            ),
            (
                f"no GPU idle while someone waits beyond the hold: {total.idle_gpu_hours:.1f} "
                f"GPU-h (stock {base.idle_gpu_hours:.1f})",
                total.idle_gpu_hours == 0,
            ),
            (
                f"estimate within a factor 2 for {TARGET_WITHIN_2X:.0%} of requests: "
                f"{fmt(100 * err.within_2x, 1)} %",
                err.within_2x >= TARGET_WITHIN_2X,
            ),
        ]
        lines += [f"- {r.label}, {'met' if ok else 'NOT met'}: {text}" for text, ok in met]
        if r is results[1]:
            all_met = all(ok for _, ok in met)
    return "\n".join(lines), all_met


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.waitlist", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=28, help="days of simulated trace")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 days, 50 waiting, 10 calls, 1 day of history, SQLite only",
    )
    parser.add_argument("--no-latency", action="store_true", help="the simulation only")
    parser.add_argument("--waiting", type=int, default=1000, help="requests in line (latency)")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per case (latency)")
    parser.add_argument(
        "--budget", type=float, default=30.0, help="seconds of timed calls per case at most"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    args = parser.parse_args(argv)
    history = 8.0
    if args.quick:
        args.days, args.waiting, args.calls, args.budget, history = 3, 50, 10, 5.0, 1.0
        args.backends = ["sqlite"]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"machine: {machine()}; load average {os.getloadavg()}")
    settings = load_catalog(EXAMPLE_CATALOG).waitlist
    wants = make_trace(args.days, args.seed)
    results = [
        run_stock(wants, settings, args.seed),
        run_waitlist(wants, settings, args.seed),
        run_waitlist(wants, settings, args.seed, patience=True),
    ]
    report, _ = simulation_report(results, args.days, args.seed)
    print(f"Wait-list, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"Settings (example catalog): hold {format_duration(settings.hold)}, max_wait "
        f"{format_duration(settings.max_wait)}, half_life {format_duration(settings.half_life)}, "
        f"reserve_after {format_duration(settings.reserve_after)}; stock retries "
        f"every {RETRY[0]:g}-{RETRY[1]:g} min for {PATIENCE[0]:g}-{PATIENCE[1]:g} min.\n"
    )
    print(report)
    if args.no_latency:
        return 0
    timed: list[Timed] = []
    profiles: dict[str, str] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="gpuhub-bench-") as tmp:
        server = None
        if "postgresql" in args.backends:
            server = postgres_server(stack, log)
            if server is None:
                print("\nPostgreSQL skipped: it could not be started (see stderr).")
        for backend in args.backends:
            if backend == "postgresql" and server is None:
                continue
            with scratch_url(backend, server, Path(tmp)) as url:
                found, slow = latency_case(
                    backend, url, args.waiting, args.calls, args.budget, args.seed, log, history
                )
            timed += found
            profiles.update(slow)
    print(
        f"\nLatency with {args.waiting:,} requests in the H100 line. Target: p99 under "
        f"{TARGET_P99_MS:g} ms (✗ marks a miss). Load average {os.getloadavg()[0]:.2f}.\n"
    )
    print(latency_table(timed))
    for what, printed in profiles.items():
        log(f"\nprofile of {what}: {printed}")
    if profiles:
        print(f"\nOver the target, profiled (stderr): {', '.join(profiles)}.")
    return 0


if __name__ == "__main__":
    # Stopped with SIGTERM, it still stops its PostgreSQL server and removes its scratch files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
