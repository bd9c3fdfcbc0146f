"""Borrowing benchmark: the wait-list benchmark's seeded, contended month of people wanting H100s
(`benchmarks/waitlist.py`: its trace, its teams, its line) run through hard quotas, through
borrowing as gpuhub does it (the real pure functions of `spawner_ext/policy/borrowing.py`, as the
ledger calls them) and through a Kueue-like policy, with each session's GPUs busy or idle in
turn. It prints its figures and whether the issue's targets are met; it asserts nothing.

- *Hard quotas*: the wait-list as today (`waitlist.run_waitlist`'s model: people stay in line
  until `max_wait`).
- *Borrowing*: a spawn over its team's own quota borrows (everyone who may, does) when GPUs are
  free, nobody waits in line for the type (the line comes before a borrow) and `place` finds
  lendable quota; otherwise it joins the line for its own quota, as admission
  (`ledger/admission.py`) decides. The service's reclaim pass (`ledger/reclaims.py`), every tick
  and when a request joins: `reclaim_need` over the requests in line on their own quota (fair
  order, those the line skips left out), `choose_reclaims` among borrowed servers (past
  `min_runtime`, idle first), warned `reclaim_notice` ahead, stopped when due (its GPUs free a
  tick later); when fewer GPUs are needed than are being reclaimed (a GPU freed elsewhere, a
  request left the line), `withdraw_reclaims`: the choices not yet due that are due soonest stay
  while they cover what is still needed, the others are withdrawn. First in each pass, a
  borrowed server not chosen becomes an own one (`conversions`) when its team's own quota has
  room for it again: no longer reclaimable, its GPU-hours from then on not borrowed. Catalog
  defaults (`reclaim_notice` 15 min, `min_runtime` 1 h); every team may borrow up to its own
  quota again (`borrow_limit` = quota; `--borrow-limit pool`: the rest of the pool) and lends
  all of its quota (no `lend_limit`); one cohort of all teams.
- *Kueue-like*: borrow freely (a spawn and a request in line over its own quota borrow whenever
  GPUs are free and quota is lendable, unless someone waits on their own quota), reclaim the
  most recently admitted borrowed server first, no notice, no `min_runtime` (stopped at the
  pass, freed a tick later); a borrowed server stays borrowed (no conversion).
- `--what-if`: the product's rules with a line that gives borrowed turns as Kueue-like's does
  (not what gpuhub does), and hard quotas with no quotas at all (every team may hold the whole
  pool: the most any borrowing allocates, the ceiling of the utilisation target).

Quotas: the wait-list benchmark's 6/4/2/2 (sum 14 on 8 GPUs), or `--quotas` (e.g. 4,2,1,1: the
same shares scaled to partition the pool, as Kueue's nominal quotas usually do); the trace does
not depend on them.

Lenders' extra wait: the minutes a request in line on its own quota could not be served from
the free GPUs but could have been were the borrowed GPUs free (counted in the line's order, as
`reclaim_need` counts). Two bounds are checked. The issue's words: the remaining `min_runtime` of
the oldest borrowed server + `reclaim_notice` + a tick, taken when first held up. The corrected
one (`deadline`): order the borrowed servers by when their GPUs are free at the latest (chosen:
`reclaim_at`; not chosen: once past `min_runtime`, or now, + `reclaim_notice`) and take the one
at which they cover what the request is short (its GPUs and those of the requests before it,
less the free ones) + two ticks (one for the pass that chooses it or finds it due, one for the
stop); it moves later only when what the request is short grows (a request came before it in
the fair order, GPUs freed went to a request behind it) or a borrowed server it counted on
became own, each counted. `--explain` prints the timeline of each request past either.

GPU activity: each person has a busy fraction (Beta(1.5, 3), mean 1/3) and a mean busy period
(10-40 min); each session alternates busy and idle periods (exponential, means giving that
fraction), busy or idle first by the fraction, seeded per request. A server is idle at a reclaim
pass when its modelled GPUs are idle then (the culler's latest report).

Run: .venv/bin/python -m benchmarks.borrowing [--seed 1] [--days 28] [--quotas 4,2,1,1]
     [--borrow-limit quota|pool] [--what-if] [--explain]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from benchmarks.admission import machine
from benchmarks.waitlist import (
    MINUTE,
    START,
    TEAMS,
    Outcome,
    Pool,
    TeamSpec,
    Want,
    _waiting,
    demand_line,
    fmt,
    make_trace,
    pct,
    when,
)
from benchmarks.waitlist_latency import CAPACITY, EXAMPLE_CATALOG
from spawner_ext.catalog import Borrowing, load_catalog
from spawner_ext.catalog.durations import format_duration
from spawner_ext.catalog.waitlist import Waitlist
from spawner_ext.policy.borrowing import (
    BorrowedServer,
    Loan,
    Placement,
    Share,
    Wanting,
    choose_reclaims,
    conversions,
    place,
    reclaim_need,
    withdraw_reclaims,
)
from spawner_ext.policy.waitlist import Waiting, fair_order, may_start_directly, turns

TICK = 0.5  # minutes: the service's pass (metering.reconcile_interval, 30 s)
BUSY_FRACTION = (1.5, 3.0)  # Beta(a, b) of a person's busy share of session time: mean 1/3
BUSY_PERIOD = (10.0, 40.0)  # minutes: a person's mean busy period (uniform)
TARGET_UTILISATION = 4 / 3


@dataclass(frozen=True)
class Scenario:
    """The teams' quotas of the pool and how much each may borrow."""

    teams: tuple[TeamSpec, ...]
    borrow_limit: dict[str, int]

    @property
    def label(self) -> str:
        quotas = "/".join(str(t.quota) for t in self.teams)
        limits = "/".join(str(self.borrow_limit[t.name]) for t in self.teams)
        return (
            f"quotas {quotas} (sum {sum(t.quota for t in self.teams)}) on {CAPACITY} GPUs, "
            f"borrow_limit {limits}"
        )


def scenario(quotas: Sequence[int] | None = None, *, borrow_limit: str = "quota") -> Scenario:
    """The wait-list benchmark's teams with `quotas` (in `TEAMS` order; None: theirs) and a
    `borrow_limit` of each team's quota ("quota") or the rest of the pool ("pool": it may hold
    every GPU, as a Kueue ClusterQueue without a borrowingLimit)."""
    if quotas is not None and len(quotas) != len(TEAMS):
        raise SystemExit(
            f"--quotas needs {len(TEAMS)} numbers ({', '.join(t.name for t in TEAMS)}), "
            f"got {len(quotas)}"
        )
    teams = (
        TEAMS
        if quotas is None
        else tuple(replace(t, quota=q) for t, q in zip(TEAMS, quotas, strict=True))
    )
    limits = {t.name: t.quota if borrow_limit == "quota" else CAPACITY - t.quota for t in teams}
    return Scenario(teams, limits)


@dataclass(frozen=True)
class Policy:
    label: str
    borrowing: bool
    notice: float
    """Minutes between a reclaim's choice and its stop."""
    min_runtime: float
    """Minutes a borrowed server runs before it may be chosen."""
    kueue: bool
    """The newest borrowed server is reclaimed first whatever its GPUs do; a borrowed server
    stays borrowed."""
    line_borrows: bool = False
    """Only people waiting on their own quota come before a borrow, and requests in line over
    their own quota borrow when GPUs are free (the product: anyone in line comes first, and the
    line never gives a borrowed turn)."""


def policies(settings: Borrowing, *, what_if: bool = False) -> tuple[Policy, ...]:
    """Hard quotas, the product's borrowing and the Kueue-like policy; `what_if`: and the
    product's reclaim rules with a line that gives borrowed turns (not what gpuhub does)."""
    ours = Policy(
        "borrowing",
        True,
        settings.reclaim_notice / MINUTE,
        settings.min_runtime / MINUTE,
        kueue=False,
    )
    found: tuple[Policy, ...] = (
        Policy("hard quotas", False, 0.0, 0.0, kueue=False),
        ours,
        Policy("Kueue-like", True, 0.0, 0.0, kueue=True, line_borrows=True),
    )
    if what_if:
        found += (replace(ours, label="what-if: line borrows", line_borrows=True),)
    return found


# --- GPU activity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    """When a session's GPUs are busy: from its start, busy (or idle) until the first switch,
    then the other, and so on."""

    busy_first: bool
    switches: tuple[float, ...]
    """Minutes since the start at which busy and idle swap."""

    def busy_at(self, age: float) -> bool:
        return self.busy_first == (bisect.bisect_right(self.switches, age) % 2 == 0)

    def after(self, age: float) -> Activity:
        """The activity of the session's rest from `age` on."""
        return Activity(self.busy_at(age), tuple(s - age for s in self.switches if s > age))

    def busy_minutes(self, until: float) -> float:
        """Busy minutes in the first `until` minutes of the session."""
        total, busy, last = 0.0, self.busy_first, 0.0
        for switch in self.switches:
            if switch >= until:
                break
            if busy:
                total += switch - last
            busy, last = not busy, switch
        return total + (until - last if busy and until > last else 0.0)


def activities(wants: Sequence[Want], seed: int) -> dict[str, Activity]:
    """Request id -> its session's GPU activity (seeded, independent of the models)."""
    rng = random.Random(seed + 3)
    people = {
        user: (min(max(rng.betavariate(*BUSY_FRACTION), 0.02), 0.98), rng.uniform(*BUSY_PERIOD))
        for user in sorted({w.user for w in wants})
    }
    found = {}
    for w in wants:
        fraction, busy = people[w.user]
        idle = busy * (1 - fraction) / fraction
        r = random.Random(f"{seed}:{w.id}")
        first = state = r.random() < fraction
        t, switches = 0.0, []
        while True:
            t += r.expovariate(1 / (busy if state else idle))
            if t >= w.length:
                break
            switches.append(t)
            state = not state
        found[w.id] = Activity(first, tuple(switches))
    return found


# --- the pool, with borrowed servers ----------------------------------------------------------


@dataclass
class BorrowPool(Pool):
    """The wait-list benchmark's pool, whose running servers may be borrowed (their loans)."""

    loans: dict[str, tuple[Loan, ...]] = field(default_factory=dict)
    """Request id -> the loans of a borrowed server running now."""
    borrow_limit: dict[str, int] = field(default_factory=dict)
    """Team -> its `borrow_limit` (absent: its quota)."""

    def own(self, team: str) -> int:
        borrowed = sum(w.gpus for w, _ in self.running.values() if w.team == team and self.lent(w))
        return self.used(team) - borrowed

    def lent(self, want: Want) -> bool:
        return want.id in self.loans

    def end(self, want: Want, t: float) -> None:
        super().end(want, t)
        self.loans.pop(want.id, None)

    def shares(self) -> dict[str, Share]:
        """Each team's `Share`, as `read_shares` reads it: no lend_limit."""
        borrowed: dict[str, int] = defaultdict(int)
        lent: dict[str, int] = defaultdict(int)
        for want, _ in self.running.values():
            for loan in self.loans.get(want.id, ()):
                borrowed[want.team] += loan.gpus
                lent[loan.lender] += loan.gpus
        return {
            name: Share(
                name,
                quota=spec.quota,
                own=self.own(name),
                borrowed=borrowed[name],
                lent=lent[name],
                borrow_limit=self.borrow_limit.get(name, spec.quota),
            )
            for name, spec in self.teams.items()
        }


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Fate:
    """What happened to one request beyond its `Outcome`."""

    borrowed: bool = False
    converted: float | None = None
    """When its borrowed server became an own one (its team's quota had room again)."""
    stopped: float | None = None
    """When it was reclaimed (its GPUs freed)."""
    idle_when_chosen: bool = False
    busy_past_idle: bool = False
    """Chosen busy while an idle borrowed server of the type was not chosen."""
    busy_past_eligible_idle: bool = False
    """... while an idle one past `min_runtime` was not chosen."""
    rejoined: bool = False
    """A reclaimed server's person asking again for the rest of their session."""
    own_reclaimed: bool = False
    """It was reclaimed on its team's own quota (must never happen)."""
    extra: float = 0.0
    """Minutes it waited on its own quota while borrowed servers held the GPUs it needed."""
    bound: float | None = None
    """The issue's bound on `extra`, at the moment borrowing first held it up."""
    held_since: float | None = None
    """When borrowing first held it up."""
    deadline: float | None = None
    """When, at the latest, borrowing stops holding it up (`deadline`); moved only when what
    it is short grows or a borrowed server it counted on becomes own."""
    short: int = 0
    """GPUs it was short (in the line's order) when last held up."""
    ahead: int = 0
    """GPUs wanted before it in the line's order (on their own quota) when last held up."""
    cover: dict[str, int] = field(default_factory=dict)
    """The borrowed servers when last held up: request id -> GPUs."""
    first_deadline: float | None = None
    """Its deadline when first held up (never moved)."""
    late_first: float = 0.0
    """Minutes it was held up after `first_deadline` at most."""
    moves: tuple[str, ...] = ()
    """Why its deadline moved, each time it did."""
    late: float = 0.0
    """Minutes it was held up after its deadline at most (0: never)."""


@dataclass(frozen=True)
class Entry:
    """One thing that happened in a run, for `explain`."""

    t: float
    subject: str
    """The request it happened to."""
    text: str


@dataclass
class Run:
    label: str
    policy: Policy
    outcomes: dict[str, Outcome]
    fates: dict[str, Fate]
    choices: int
    """Borrowed servers chosen (each choice queues a warning to its user)."""
    withdrawn: int
    converted: int
    """Borrowed servers that became own ones."""
    seconds: float
    activity: dict[str, Activity]
    """Request id -> its GPU activity, rejoined requests' included."""


def simulate(
    wants: Sequence[Want],
    settings: Waitlist,
    policy: Policy,
    activity: dict[str, Activity],
    *,
    patience: bool = False,
    journal: list[Entry] | None = None,
    setup: Scenario | None = None,
) -> Run:
    """One model on the trace: the wait-list's events (as `waitlist.run_waitlist`, without its
    estimates; `patience`: a person in line cancels when their stock patience runs out), and
    for borrowing models the borrowing at a spawn, the service's reclaim pass every tick and at
    each join, a reclaimed person asking again at once for the rest of their session, and the
    time borrowing held each lender's request up. `journal`: what happened, appended in order
    (for `explain`)."""
    clock = time.process_time()

    def log(t: float, subject: str, text: str) -> None:
        if journal is not None:
            journal.append(Entry(t, subject, text))

    setup = setup or scenario()
    pool = BorrowPool({t.name: t for t in setup.teams}, settings, borrow_limit=setup.borrow_limit)
    activity = dict(activity)
    outcomes = {w.id: Outcome(w) for w in wants}
    fates = {w.id: Fate() for w in wants}
    waiting: dict[str, Want] = {}
    chosen: dict[str, float] = {}
    """Borrowed request id -> when it is due (reclaim_at)."""
    stopping: set[str] = set()
    withdrawn = choices = converted = 0
    blocked: set[str] = set()
    heap: list[tuple[float, int, str, Want | None]] = []
    seq = itertools.count()
    hold = settings.hold / MINUTE

    def add(t: float, kind: str, want: Want | None) -> None:
        heapq.heappush(heap, (t, next(seq), kind, want))

    for w in wants:
        add(w.at, "arrive", w)
    if policy.borrowing:
        add(0.0, "tick", None)

    def begin(want: Want, t: float, loans: tuple[Loan, ...] = ()) -> None:
        if loans:
            pool.loans[want.id] = loans
            fates[want.id].borrowed = True
        pool.start(want, t)
        log(
            t,
            want.id,
            f"{want.team} starts {want.gpus} GPU(s), "
            + ("borrowed" if loans else "own")
            + f", runs {want.length:.1f} min; free {pool.free()}",
        )
        outcomes[want.id].started = t
        add(t + want.length, "end", want)

    def serve(t: float) -> None:
        for turn in turns(pool.line(list(waiting.values()), t)).serve:
            want = waiting.pop(turn.id)
            outcomes[want.id].turn = t
            if want.start == "auto":
                begin(want, t)
                continue
            pool.holds[want.id] = (want, t)
            log(t, want.id, f"{want.team} gets its turn: a hold of {want.gpus}; free {pool.free()}")
            if want.answer is not None and want.answer < hold:
                add(t + want.answer, "answer", want)
            else:
                add(t + hold, "hold expires", want)

    def borrow(want: Want, t: float) -> bool:
        """Start `want` on borrowed quota if admission would: over its own quota, GPUs free,
        nobody waiting, and lendable quota found."""
        team = pool.teams[want.team]
        if pool.own(want.team) + want.gpus <= team.quota or want.gpus > pool.free():
            return False
        if waiting and (not policy.line_borrows or in_need(t)):
            # the product: anyone in line comes before a borrow; Kueue-like: those waiting on
            # their own quota (whom it would preempt for) do
            return False
        placement = place(pool.shares(), want.team, want.gpus)
        if not isinstance(placement, Placement):
            return False
        begin(want, t, placement.loans)
        return True

    def queued_borrow(t: float) -> None:
        """`line_borrows`: requests in line over their own quota borrow, in the line's order."""
        if not waiting or pool.free() == 0:
            return
        line = pool.line(list(waiting.values()), t)
        skipped = turns(line).skipped
        for w in fair_order(line):
            if skipped.get(w.id) != "gpu-quota":
                continue
            want = waiting.pop(w.id)
            if borrow(want, t):
                outcomes[w.id].turn = t
            else:
                waiting[w.id] = want

    def in_need(t: float) -> list[Waiting]:
        """Requests in line on their own quota as the reclaim pass reads them: in the line's
        order, those it skips (over their own quota) left out."""
        if not waiting:
            return []
        line = pool.line(list(waiting.values()), t)
        skipped = turns(line).skipped
        return [w for w in fair_order(line) if w.id not in skipped]

    def server(w: Want, started: float, t: float) -> BorrowedServer:
        return BorrowedServer(
            w.id,
            w.team,
            w.gpus,
            when(started),
            idle=not activity[w.id].busy_at(t - started),
        )

    def convert(t: float) -> None:
        """Borrowed servers not chosen whose team's own quota has room again become own ones,
        oldest first (ledger/reclaims.py's `_convert`: `conversions` per team)."""
        nonlocal converted
        shares = pool.shares()
        running = [(w, s) for w, s in pool.running.values() if pool.lent(w)]
        for team in sorted({w.team for w, _ in running}):
            mine = [server(w, s, t) for w, s in running if w.team == team and w.id not in chosen]
            for done in conversions(shares[team], mine):
                log(t, done.id, f"{team} borrowed server becomes own")
                del pool.loans[done.id]
                fates[done.id].converted = t
                converted += 1

    def reclaim(t: float) -> None:
        """The service's pass (ledger/reclaims.py's `_reclaim_type`, for the one type)."""
        nonlocal withdrawn, choices
        if not policy.kueue:
            convert(t)
        borrowed = [(w, s) for w, s in pool.running.values() if pool.lent(w)]
        if not borrowed:
            return
        wanting = [Wanting(w.team, w.gpu_count) for w in in_need(t)]
        shares, free = pool.shares(), pool.free()
        reclaiming = sum(pool.running[i][0].gpus for i in chosen)
        need, team = reclaim_need(shares, wanting, free, reclaiming)
        eligible = timedelta(minutes=policy.min_runtime)
        if need > 0 and team is not None:
            candidates = [server(w, s, t) for w, s in borrowed if w.id not in chosen]
            if policy.kueue:
                picked = newest_first(candidates, need)
            else:
                picked = choose_reclaims(candidates, need, when(t), eligible)
            left = [c for c in candidates if c not in picked]
            for pick in picked:
                choices += 1
                chosen[pick.id] = t + policy.notice
                log(
                    t,
                    pick.id,
                    f"chosen ({'idle' if pick.idle else 'busy'}, age "
                    f"{(when(t) - pick.started_at) / MINUTE:.1f} min) for {team}'s need of "
                    f"{need}, due {t + policy.notice:.1f}",
                )
                fate = fates[pick.id]
                fate.idle_when_chosen = pick.idle
                fate.busy_past_idle = not pick.idle and any(c.idle for c in left)
                fate.busy_past_eligible_idle = not pick.idle and any(
                    c.idle and when(t) - c.started_at >= eligible for c in left
                )
        elif chosen:
            # As the ledger: fewer needed now, so the choices not yet due that are due soonest
            # stay while they cover what is still needed; the others are withdrawn.
            still, _ = reclaim_need(shares, wanting, free, 0)
            due = {i for i, at in chosen.items() if at <= t}
            still -= sum(pool.running[i][0].gpus for i in due)
            not_due = [
                (server(w, s, t), when(chosen[w.id]))
                for w, s in borrowed
                if w.id in chosen and w.id not in due
            ]
            for gone in withdraw_reclaims(not_due, max(still, 0), when(t)):
                log(t, gone.id, "choice withdrawn")
                del chosen[gone.id]
                withdrawn += 1
        for i, due_at in chosen.items():
            if due_at <= t and i not in stopping:
                stopping.add(i)
                log(t, i, f"due: stop requested, GPUs free at {t + TICK:.1f}")
                add(t + TICK, "reclaimed", pool.running[i][0])

    def deadline(short: int, borrowed: list[tuple[Want, float]], t: float) -> float:
        """When `short` GPUs held by borrowed servers are free at the latest, if nothing else
        changes: a server chosen is due at its `reclaim_at`, one not chosen is chosen once past
        `min_runtime` (now if it is) and due `reclaim_notice` later; each pass comes within a
        tick (the one that chooses it, the one that finds it due) and its GPUs are free a tick
        after the stop."""
        ready = sorted(
            (
                (chosen[w.id] if w.id in chosen else max(s + policy.min_runtime, t) + policy.notice)
                + 2 * TICK,
                w.gpus,
            )
            for w, s in borrowed
        )
        total = 0
        for at, gpus in ready:
            total += gpus
            if total >= short:
                return at
        raise AssertionError("held up by borrowing for more GPUs than borrowed servers hold")

    def look(t: float) -> None:
        """Which requests in line borrowing holds up now: on their own quota (counted in the
        line's order as `reclaim_need` counts them), not servable from the free GPUs, servable
        were the borrowed GPUs free. The first time, its bound as the issue words it: the
        remaining `min_runtime` of the oldest borrowed server, plus `reclaim_notice`, plus a
        tick; and its `deadline`, moved later only when what it is short grows (a request came
        before it in the line, or free GPUs went to a request behind it) or a borrowed server
        it counted on became own."""
        before = set(blocked)
        blocked.clear()
        borrowed = [(w, s) for w, s in pool.running.values() if pool.lent(w)]
        if not borrowed or not waiting:
            for i in sorted(before):
                log(t, i, "no longer held up by borrowing")
            return
        lent = sum(w.gpus for w, _ in borrowed)
        oldest = min(s for _, s in borrowed)
        free = pool.free()
        own = {name: pool.own(name) for name in pool.teams}
        ids = {w.id: w.gpus for w, _ in borrowed}
        wanted = 0
        for w in in_need(t):
            if own[w.team] + w.gpu_count > pool.teams[w.team].quota:
                continue
            own[w.team] += w.gpu_count
            ahead = wanted
            wanted += w.gpu_count
            if free < wanted <= free + lent:
                blocked.add(w.id)
                fate = fates[w.id]
                if fate.bound is None:
                    left = max(policy.min_runtime - (t - oldest), 0.0)
                    fate.bound = left + policy.notice + TICK
                    fate.held_since = t
                short = wanted - free
                gone = [i for i in fate.cover if i not in ids]
                # GPUs of borrowed servers that ended or were reclaimed since: had they gone
                # to it or to those before it, it would be short of that many fewer
                freed = sum(fate.cover[i] for i in gone if fates[i].converted is None)
                why: str | None = None
                if fate.deadline is None:
                    why = "first"
                elif short > fate.short - freed:
                    why = "overtaken" if ahead > fate.ahead else "free GPUs taken"
                elif any(fates[i].converted is not None for i in gone):
                    why = "conversion"
                if why is not None:
                    at = deadline(short, borrowed, t)
                    if fate.deadline is not None:
                        fate.moves += (why,)
                        log(t, w.id, f"deadline moved ({why}): {fate.deadline:.2f} -> {at:.2f}")
                        at = max(at, fate.deadline)
                    fate.deadline = at
                    if fate.first_deadline is None:
                        fate.first_deadline = at
                fate.short, fate.ahead, fate.cover = short, ahead, ids
                if w.id not in before:
                    ages = ", ".join(
                        f"{x.id} {x.gpus} GPU(s) age {t - s:.1f}"
                        for x, s in sorted(borrowed, key=lambda b: b[1])
                    )
                    log(
                        t,
                        w.id,
                        f"held up by borrowing (free {free}, wanted {wanted} in line order; "
                        f"bound {fate.bound:.1f}, deadline {fate.deadline:.2f}); "
                        f"borrowed: {ages}",
                    )
        for i in sorted(before - blocked):
            log(t, i, "no longer held up by borrowing")

    last = 0.0
    while heap:
        t, _, kind, want = heapq.heappop(heap)
        for i in blocked:
            fate = fates[i]
            fate.extra += t - last
            if fate.deadline is not None and t > fate.deadline + 1e-9:
                fate.late = max(fate.late, t - fate.deadline)
            if fate.first_deadline is not None and t > fate.first_deadline + 1e-9:
                fate.late_first = max(fate.late_first, t - fate.first_deadline)
        last = t
        if kind == "tick":
            reclaim(t)
            look(t)  # conversions change what borrowed servers hold
            if heap:  # anything left to happen
                add(t + TICK, "tick", None)
            continue
        assert want is not None
        outcome = outcomes[want.id]
        if kind == "arrive":
            line = pool.line(list(waiting.values()), t)
            if may_start_directly(line, _waiting(want, held=False)):
                begin(want, t)
            elif not (policy.borrowing and borrow(want, t)):
                log(t, want.id, f"{want.team} joins the line for {want.gpus} GPU(s)")
                outcome.joined = True
                waiting[want.id] = want
                add(t + settings.max_wait / MINUTE, "expire", want)
                if patience:
                    add(t + want.patience, "cancel", want)
        elif kind == "end":
            if want.id not in pool.running:
                continue  # reclaimed before
            pool.end(want, t)
            log(t, want.id, f"{want.team} ends; free {pool.free()}")
            chosen.pop(want.id, None)
            stopping.discard(want.id)
        elif kind == "reclaimed":
            if want.id not in pool.running:
                continue  # ended on its own meanwhile
            fates[want.id].stopped = t
            fates[want.id].own_reclaimed = not pool.lent(want)
            started = pool.running[want.id][1]
            pool.end(want, t)
            log(t, want.id, f"reclaimed; free {pool.free()}")
            del chosen[want.id]
            stopping.discard(want.id)
            again = rejoin(want, t, started)
            activity[again.id] = activity[want.id].after(t - started)
            outcomes[again.id], fates[again.id] = Outcome(again), Fate(rejoined=True)
            add(t, "arrive", again)
        elif kind == "answer":
            begin(want, t)
        elif kind == "hold expires":
            del pool.holds[want.id]
            log(t, want.id, "hold expires")
            outcome.abandoned, outcome.ended = "hold expired", t
        elif kind in ("expire", "cancel"):
            if want.id not in waiting:
                continue
            del waiting[want.id]
            log(t, want.id, f"leaves the line ({kind})")
            outcome.abandoned = "expired" if kind == "expire" else "cancelled"
            outcome.ended = t
        serve(t)
        if policy.line_borrows:
            queued_borrow(t)
        if policy.borrowing:
            if kind == "arrive" and want.id in waiting:
                reclaim(t)  # a join wakes the service
            look(t)
    return Run(
        policy.label,
        policy,
        outcomes,
        fates,
        choices,
        withdrawn,
        converted,
        time.process_time() - clock,
        activity,
    )


def rejoin(want: Want, t: float, started: float) -> Want:
    """The person whose server was reclaimed at `t` asks again at once for the rest of it."""
    return replace(want, id=f"{want.id}r", at=t, length=want.length - (t - started))


def newest_first(servers: Sequence[BorrowedServer], gpus: int) -> tuple[BorrowedServer, ...]:
    """Kueue-like victims: the most recently admitted borrowed servers until `gpus` are covered."""
    picked: list[BorrowedServer] = []
    for server in sorted(servers, key=lambda s: (s.started_at, s.id), reverse=True):
        if gpus <= 0:
            break
        picked.append(server)
        gpus -= server.gpus
    return tuple(picked)


# --- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeamFigures:
    requests: int
    allocated: float
    """GPU-hours of sessions within the trace."""
    borrowed: float
    """... of them on borrowed quota."""
    busy: float
    """... of them with the GPUs busy."""
    mean_wait: float
    p95_wait: float
    abandoned: dict[str, int]
    reclaimed_idle: int
    reclaimed_busy: int
    own_reclaimed: int
    rejoined: int
    """Requests of people whose server was reclaimed, for the rest of their session."""
    worst_extra: float
    worst_bound: float
    """The bound as the issue words it of the request with the worst extra wait."""
    worst_corrected: float
    """... and its corrected bound (its final deadline less when it was first held up)."""
    over_bound: int
    """Requests whose extra wait passed their bound as the issue words it."""
    worst_excess: float
    """Minutes by which an extra wait passed that bound at most (0: none did)."""
    over_first: int
    """Requests held up after their deadline as taken when first held up (never moved)."""
    worst_late_first: float
    over_corrected: int
    """Requests held up after their deadline (moved when what they were short grew)."""
    worst_late: float
    moved: dict[str, int]
    """Why deadlines moved: cause -> times."""
    busy_past_idle: int
    busy_past_eligible_idle: int


def figures(run: Run, team: str | None, hours: float) -> TeamFigures:
    """A team's figures (None: all teams) over the trace's `hours`; waits and abandoned requests
    include those of people asking again after a reclaim."""
    horizon = hours * 60
    allocated = borrowed = busy = 0.0
    waits: list[float] = []
    abandoned: dict[str, int] = defaultdict(int)
    moved: dict[str, int] = defaultdict(int)
    reclaimed = [0, 0]
    own_reclaimed = over = over_first = over_corrected = 0
    past_idle = past_eligible = rejoined = n = 0
    worst, worst_bound, worst_corrected = 0.0, 0.0, 0.0
    excess = late_first = late = 0.0
    for o in run.outcomes.values():
        w = o.want
        if team is not None and w.team != team:
            continue
        fate = run.fates[w.id]
        n += not fate.rejoined
        rejoined += fate.rejoined
        if o.abandoned:
            abandoned[o.abandoned] += 1
        if fate.bound is not None and fate.extra > fate.bound + 1e-9:
            over += 1
            excess = max(excess, fate.extra - fate.bound)
        over_first += fate.late_first > 0
        late_first = max(late_first, fate.late_first)
        over_corrected += fate.late > 0
        late = max(late, fate.late)
        for why in fate.moves:
            moved[why] += 1
        if fate.extra > worst:
            worst, worst_bound = fate.extra, fate.bound or 0.0
            assert fate.deadline is not None and fate.held_since is not None
            worst_corrected = fate.deadline - fate.held_since
        if o.started is None:
            continue
        waits.append(o.started - w.at)
        end = fate.stopped if fate.stopped is not None else o.started + w.length
        ran = max(min(end, horizon) - o.started, 0.0)
        allocated += w.gpus * ran
        if fate.borrowed:
            own_from = fate.converted if fate.converted is not None else end
            borrowed += w.gpus * max(min(own_from, end, horizon) - o.started, 0.0)
        busy += w.gpus * run.activity[w.id].busy_minutes(ran)
        if fate.stopped is not None:
            reclaimed[fate.idle_when_chosen] += 1
            own_reclaimed += fate.own_reclaimed
            past_idle += fate.busy_past_idle
            past_eligible += fate.busy_past_eligible_idle
    return TeamFigures(
        requests=n,
        allocated=allocated / 60,
        borrowed=borrowed / 60,
        busy=busy / 60,
        mean_wait=statistics.fmean(waits) if waits else math.nan,
        p95_wait=pct(waits, 95),
        abandoned=dict(abandoned),
        reclaimed_idle=reclaimed[1],
        reclaimed_busy=reclaimed[0],
        own_reclaimed=own_reclaimed,
        rejoined=rejoined,
        worst_extra=worst,
        worst_bound=worst_bound,
        worst_corrected=worst_corrected,
        over_bound=over,
        worst_excess=excess,
        over_first=over_first,
        worst_late_first=late_first,
        over_corrected=over_corrected,
        worst_late=late,
        moved=dict(moved),
        busy_past_idle=past_idle,
        busy_past_eligible_idle=past_eligible,
    )


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def report(
    runs: Sequence[Run],
    wants: Sequence[Want],
    days: int,
    seed: int,
    activity: dict[str, Activity],
    setup: Scenario,
    ceiling: Run | None = None,
) -> str:
    """The table of `runs` (the first: hard quotas) per team and in all, and the targets;
    `ceiling`: hard quotas of the whole pool for every team, the most any borrowing allocates."""
    hours = days * 24.0
    cpu = ", ".join(f"{r.label} {r.seconds:.1f} s" for r in runs)
    busy_share = sum(
        a.busy_minutes(w.length) * w.gpus for w, a in ((w, activity[w.id]) for w in wants)
    ) / sum(w.length * w.gpus for w in wants)
    lines = [
        f"Trace: seed {seed}, {days} days from {START:%Y-%m-%d} (a Monday), {len(wants):,} "
        f"requests, {CAPACITY} H100s, quotas "
        + ", ".join(f"{t.name} {t.quota}" for t in setup.teams)
        + ", borrow_limit "
        + ", ".join(f"{t.name} {setup.borrow_limit[t.name]}" for t in setup.teams)
        + f". GPUs busy {100 * busy_share:.1f} % of the trace's session time. CPU: {cpu}.",
        demand_line(wants, days),
        "",
        "| team | quota | model | allocated GPU-h (borrowed) | of quota-hours | busy / allocated "
        "| mean wait (min) | p95 wait (min) | abandoned | reclaimed: idle + busy "
        "| within-quota reclaimed | lenders' worst extra wait (bound as worded; corrected), "
        "over each |",
        "|" + "---|" * 12,
    ]
    table: dict[tuple[str | None, str], TeamFigures] = {}
    quotas = f"{sum(t.quota for t in setup.teams)} of {CAPACITY}"
    for spec in (*setup.teams, None):
        for r in runs:
            name = spec.name if spec else None
            f = table[name, r.label] = figures(r, name, hours)
            quota = spec.quota if spec else CAPACITY
            share = f.allocated / (quota * hours)
            abandoned = " + ".join(f"{n} {why}" for why, n in sorted(f.abandoned.items())) or "0"
            extra = (
                f"{fmt(f.worst_extra, 1)} ({fmt(f.worst_bound, 1)}; {fmt(f.worst_corrected, 1)}), "
                f"{f.over_bound}; {f.over_corrected}"
                if r.policy.borrowing
                else "-"
            )
            lines.append(
                f"| {name or '**all**'} | {quotas if spec is None else quota} "
                f"| {r.label} | {fmt(f.allocated)} ({fmt(f.borrowed)}) "
                f"| {100 * share:.1f} %{'' if spec else ' of the GPUs'} "
                f"| {100 * f.busy / f.allocated if f.allocated else math.nan:.1f} % "
                f"| {fmt(f.mean_wait, 1)} | {fmt(f.p95_wait, 1)} | {abandoned} "
                f"| {f.reclaimed_idle} + {f.reclaimed_busy} "
                f"| {f.own_reclaimed} | {extra} |"
            )
    base = table[None, runs[0].label]
    asked = sum(w.gpus * max(min(w.length, hours * 60 - w.at), 0.0) for w in wants) / 60
    lines += [
        "",
        f"Asked for: {fmt(asked)} GPU-hours within the trace, were every request served at "
        f"once ({asked / base.allocated:.2f}x hard quotas' allocation).",
    ]
    if ceiling is not None:
        top = figures(ceiling, None, hours)
        lines.append(
            f"No quotas (every team may hold all {CAPACITY} GPUs; one line, the most any "
            f"borrowing can allocate): {fmt(top.allocated)} GPU-hours "
            f"({top.allocated / base.allocated:.2f}x hard quotas'), mean wait "
            f"{fmt(top.mean_wait, 1)} min, p95 {fmt(top.p95_wait, 1)} min."
        )
    lines += ["", "Targets (against hard quotas):"]
    for r in runs[1:]:
        total = table[None, r.label]
        limit = r.policy.min_runtime + r.policy.notice + 2 * TICK
        p95 = []
        worse = 0.0
        for t in setup.teams:
            ours, theirs = table[t.name, r.label].p95_wait, table[t.name, runs[0].label].p95_wait
            change = ours - theirs
            p95.append(f"{t.name} {fmt(ours, 1)} vs {fmt(theirs, 1)} ({change:+.1f})")
            worse = max(worse, change)
        moved = ", ".join(f"{n} {why}" for why, n in sorted(total.moved.items())) or "none"
        ratio = total.allocated / base.allocated
        met = [
            (
                f"allocated GPU-hours at least {TARGET_UTILISATION:.2f}x hard quotas': "
                f"{fmt(total.allocated)} vs {fmt(base.allocated)} ({ratio:.2f}x; "
                f"{100 * total.allocated / (CAPACITY * hours):.1f} % vs "
                f"{100 * base.allocated / (CAPACITY * hours):.1f} % of the GPU-hours); busy "
                f"{fmt(total.busy)} vs {fmt(base.busy)} GPU-hours "
                f"({total.busy / base.busy:.2f}x)",
                ratio >= TARGET_UTILISATION,
            ),
            (
                "p95 wait equal or better for every team: "
                + "; ".join(p95)
                + (
                    f"; worse by at most {worse:.1f} min, "
                    f"{100 * worse / limit:.0f} % of min_runtime + reclaim_notice + two ticks "
                    f"({limit:g} min)"
                    if worse > 0 and r.policy.min_runtime > 0
                    else ""
                ),
                worse <= 0,
            ),
            (f"within-quota servers reclaimed: {total.own_reclaimed}", total.own_reclaimed == 0),
            (
                f"busy servers reclaimed while an idle borrowed one was left: "
                f"{total.busy_past_idle} (of them, an idle one past min_runtime: "
                f"{total.busy_past_eligible_idle}); reclaimed {total.reclaimed_idle} idle, "
                f"{total.reclaimed_busy} busy",
                total.busy_past_idle == 0,
            ),
            (
                f"lenders' extra wait within the bound as the issue words it (remaining "
                f"min_runtime of the oldest borrowed server + reclaim_notice + a tick): worst "
                f"{fmt(total.worst_extra, 1)} min (its bound {fmt(total.worst_bound, 1)}); "
                f"{total.over_bound} requests over their bound, by at most "
                f"{fmt(total.worst_excess, 2)} min",
                total.over_bound == 0,
            ),
            (
                f"lenders held up within the corrected bound (the remaining min_runtime of the "
                f"youngest of the soonest-freed borrowed servers that cover what the request is "
                f"short + reclaim_notice + two ticks), taken when first held up: "
                f"{total.over_first} requests held up after it, by at most "
                f"{fmt(total.worst_late_first, 2)} min",
                total.over_first == 0,
            ),
            (
                f"... taken again when what the request is short grew or a borrowed server it "
                f"counted on became own (deadlines moved: {moved}): {total.over_corrected} "
                f"requests held up after it, by at most {fmt(total.worst_late, 2)} min; worst "
                f"extra wait {fmt(total.worst_extra, 1)} min (its bound "
                f"{fmt(total.worst_corrected, 1)})",
                total.over_corrected == 0,
            ),
        ]
        lines += [f"- {r.label} {mark(ok)} {text}" for text, ok in met]
        lines.append(
            f"- {r.label}: servers chosen (a warning each) {r.choices}, choices withdrawn "
            f"{r.withdrawn}, borrowed servers that became own {r.converted}"
        )
    return "\n".join(lines)


def explain(run: Run, journal: Sequence[Entry], limit: int = 10) -> str:
    """The timeline of each request (at most `limit`) that borrowing held up past its bound as
    the issue words it or past its deadline: what happened from when it was first held up until
    it got its GPUs (or left the line)."""
    out: list[str] = []
    over = sorted(
        (
            (i, f)
            for i, f in run.fates.items()
            if f.bound is not None and (f.extra > f.bound + 1e-9 or f.late_first > 0)
        ),
        key=lambda item: (-item[1].late, -item[1].late_first, item[0]),
    )
    for i, fate in over[:limit]:
        o = run.outcomes[i]
        assert fate.held_since is not None and fate.deadline is not None
        assert fate.first_deadline is not None and fate.bound is not None
        mine = [e for e in journal if e.subject == i]
        end = o.turn if o.turn is not None else (o.ended if o.ended is not None else mine[-1].t)
        out.append(
            f"{run.label}: request {i} ({o.want.team}, {o.want.gpus} GPU(s)) joined at "
            f"{o.want.at:.2f} min, first held up at {fate.held_since:.2f}, served at "
            f"{end:.2f}: extra wait {fate.extra:.2f} min; bound as worded "
            f"{fate.bound:.2f}, at first held up {fate.first_deadline - fate.held_since:.2f}, "
            f"corrected {fate.deadline - fate.held_since:.2f}"
            + (f" (moved: {', '.join(fate.moves)})" if fate.moves else "")
            + (f"; held up {fate.late:.2f} min after its deadline" if fate.late else "")
        )
        out += [
            f"  {e.t:10.2f}  {e.subject:8}  {e.text}"
            for e in journal
            if fate.held_since - 1e-9 <= e.t <= end + 1e-9
            and (e.subject == i or "held up" not in e.text)
        ]
    if len(over) > limit:
        out.append(f"({len(over) - limit} more)")
    return "\n".join(out) or f"{run.label}: no request over its bound"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.borrowing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=28, help="days of simulated trace")
    parser.add_argument(
        "--quotas",
        type=lambda text: [int(q) for q in text.split(",")],
        help="the teams' quotas, comma-separated in the order "
        + ", ".join(t.name for t in TEAMS)
        + " (default: "
        + ",".join(str(t.quota) for t in TEAMS)
        + "; 4,2,1,1 partitions the 8 GPUs)",
    )
    parser.add_argument(
        "--borrow-limit",
        choices=("quota", "pool"),
        default="quota",
        help="each team's borrow_limit: its quota (default), or the rest of the pool",
    )
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also run the product's reclaim rules with a line that gives borrowed turns, and "
        "no quotas at all (the ceiling of any borrowing)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print the timeline of each lender's request held up past its bound",
    )
    args = parser.parse_args(argv)
    setup = scenario(args.quotas, borrow_limit=args.borrow_limit)
    settings = load_catalog(EXAMPLE_CATALOG).waitlist
    borrowing = Borrowing()
    wants = make_trace(args.days, args.seed)
    activity = activities(wants, args.seed)
    print(f"Borrowing, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"Settings: {setup.label}; catalog defaults reclaim_notice "
        f"{format_duration(borrowing.reclaim_notice)}, "
        f"min_runtime {format_duration(borrowing.min_runtime)}; the example catalog's waitlist "
        f"(hold {format_duration(settings.hold)}, max_wait {format_duration(settings.max_wait)}); "
        f"a tick is {TICK * 60:g} s."
    )
    for patience in (False, True):
        runs = []
        journals = []
        for p in policies(borrowing, what_if=args.what_if):
            journal: list[Entry] = []
            runs.append(
                simulate(
                    wants,
                    settings,
                    p,
                    activity,
                    patience=patience,
                    journal=journal if args.explain else None,
                    setup=setup,
                )
            )
            journals.append(journal)
        print(
            "\n## People in line keep stock's patience (30-120 min), then cancel\n"
            if patience
            else "\n## People stay in line until max_wait\n"
        )
        ceiling = (
            simulate(
                wants,
                settings,
                runs[0].policy,
                activity,
                patience=patience,
                setup=scenario([CAPACITY] * len(TEAMS)),
            )
            if args.what_if
            else None
        )
        print(report(runs, wants, args.days, args.seed, activity, setup, ceiling))
        if args.explain:
            for run, journal in zip(runs[1:], journals[1:], strict=True):
                print("\n" + explain(run, journal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
