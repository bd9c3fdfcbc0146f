"""Fleet simulation of culling: a seeded synthetic month of GPU notebook sessions through
gpuhub's policy (`decide_cull`, the function the service runs) and stock
jupyterhub-idle-culler's rule (no Jupyter activity for `--timeout`, or older than `--max-age`,
looked at every `--cull-every`), on the same trace. Stock runs twice: with Zero to JupyterHub
4.4.0's default `cull` values (timeout 3600, every 600, maxAge 0), and with gpuhub's settings
where it has them (idle 1 h, max age 3 d, looked at as often as gpuhub looks).

Each session is a minute-by-minute timeline of what a person and their code do:
- interactive work: Jupyter activity and GPU bursts in working hours, the tab then left open
  overnight (JupyterLab's polling is Jupyter activity), or the laptop closed;
- tabs left open: an hour of work, then days of an open tab and an idle GPU;
- silent training runs: the GPU busy for hours with no Jupyter activity (a cell that prints
  nothing), started from a tab that is then closed;
- nights and weekends: sessions started on Friday evening and forgotten.
gpuhub warns before it culls: a person at the notebook then clicks Keep (an open tab does not).
A session ends when its timeline ends (the user stops it) or when a policy culls it. Printed:
allocated, used (GPU busy) and wasted (allocated and idle) GPU-hours, and the busy sessions
killed (culled while the GPU still had work to do). Targets: wasted <= 0.3x stock's, 0 busy
sessions killed. Both cullers look at the clock's multiples of their interval since the trace's
start, not at times relative to each session's start.

Run: .venv/bin/python -m benchmarks.culling_fleet [--sessions N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from spawner_ext.policy.culling import CullAction, CullSettings, ServerActivity, decide_cull

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
MINUTE = timedelta(minutes=1)
STEP = 2  # minutes between gpuhub's culling cycles
OURS = CullSettings(
    idle_timeout=timedelta(hours=1),
    gpu_idle_timeout=timedelta(minutes=30),
    max_age=timedelta(days=3),
    warn_before=timedelta(minutes=10),
    gpu_utilization_percent=5,
)


@dataclass(frozen=True)
class StockSettings:
    """jupyterhub-idle-culler's options, in minutes (its flags are in seconds)."""

    label: str
    timeout: int
    """--timeout: cull a server with no activity for this long."""
    every: int
    """--cull-every: minutes between cycles."""
    max_age: int
    """--max-age: cull a server this old whatever it does; 0: never."""


STOCK_Z2JH = StockSettings(
    # z2jh 4.4.0's chart values: cull.timeout 3600, cull.every 600, cull.maxAge 0
    # (cull.users and cull.removeNamedServers false: no user or named server here to differ).
    "stock, z2jh defaults (idle 1 h, every 10 min, no max age)",
    timeout=60,
    every=10,
    max_age=0,
)
STOCK_MATCHED = StockSettings(
    "stock, gpuhub's settings (idle 1 h, every 2 min, max age 3 d)",
    timeout=60,
    every=STEP,
    max_age=int(OURS.max_age.total_seconds() // 60) if OURS.max_age else 0,
)
STOCK = (STOCK_Z2JH, STOCK_MATCHED)
GPUHUB = "gpuhub"


@dataclass(frozen=True)
class Session:
    kind: str
    start: datetime
    gpus: int
    jupyter: Sequence[bool]
    """Per minute: Jupyter activity (a person, or an open tab's polling)."""
    person: Sequence[bool]
    """Per minute: a person at the notebook (who would see a warning and click Keep)."""
    gpu_busy: Sequence[bool]
    """Per minute: the GPUs above the threshold."""
    kernel_busy: Sequence[bool]
    """Per minute: a kernel executing a cell."""


def _timeline(length: int) -> tuple[list[bool], list[bool], list[bool]]:
    return [False] * length, [False] * length, [False] * length


def interactive(rng: random.Random, start: datetime) -> Session:
    hours = rng.uniform(2, 7)
    work = int(hours * 60)
    open_after = rng.random() < 0.6  # the tab stays open overnight
    tail = rng.randint(8 * 60, 16 * 60) if open_after else rng.randint(30, 120)
    jupyter, gpu, kernel = _timeline(work + tail)
    for m in range(work):
        jupyter[m] = rng.random() < 0.7
    m = 0
    while m < work:  # bursts of GPU work: a few minutes every so often
        m += rng.randint(5, 40)
        burst = rng.randint(2, 15)
        for k in range(m, min(m + burst, work)):
            gpu[k] = kernel[k] = True
        m += burst
    person = jupyter[:work] + [False] * tail
    for k in range(work, work + tail):
        jupyter[k] = open_after and k % 5 == 0  # an open tab polls
    return Session("interactive", start, 1, jupyter, person, gpu, kernel)


def tab_left_open(rng: random.Random, start: datetime) -> Session:
    work, idle = rng.randint(30, 90), rng.randint(24 * 60, 4 * 24 * 60)
    jupyter, gpu, kernel = _timeline(work + idle)
    for m in range(work):
        jupyter[m] = True
        gpu[m] = kernel[m] = rng.random() < 0.3
    person = jupyter[:work] + [False] * idle
    for m in range(work, work + idle):
        jupyter[m] = m % 5 == 0
    return Session("tab left open", start, rng.choice((1, 1, 2)), jupyter, person, gpu, kernel)


def silent_training(rng: random.Random, start: datetime) -> Session:
    setup, train = rng.randint(10, 40), rng.randint(4 * 60, 40 * 60)
    after = rng.randint(30, 6 * 60)  # finished; nobody looks until later
    jupyter, gpu, kernel = _timeline(setup + train + after)
    for m in range(setup):
        jupyter[m] = True
    for m in range(setup, setup + train):
        gpu[m] = kernel[m] = True  # prints nothing: no Jupyter activity
    gpus = rng.choice((1, 2, 4))
    return Session("silent training", start, gpus, jupyter, list(jupyter), gpu, kernel)


def weekend(rng: random.Random, start: datetime) -> Session:
    work, idle = rng.randint(20, 60), rng.randint(40 * 60, 60 * 60)
    jupyter, gpu, kernel = _timeline(work + idle)
    for m in range(work):
        jupyter[m] = True
        gpu[m] = kernel[m] = rng.random() < 0.5
    return Session("night and weekend", start, 1, jupyter, list(jupyter), gpu, kernel)


def trace(sessions: int, seed: int) -> list[Session]:
    """A month of sessions, started on working days' mornings mostly, Fridays' evenings some."""
    rng = random.Random(seed)
    kinds: list[tuple[Callable[[random.Random, datetime], Session], float]] = [
        (interactive, 0.55),
        (tab_left_open, 0.2),
        (silent_training, 0.15),
        (weekend, 0.1),
    ]
    made = []
    for _ in range(sessions):
        make = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
        day = rng.randrange(28)
        if make is weekend:
            day = 4 + 7 * rng.randrange(4)  # a Friday
            start = START + timedelta(days=day, hours=rng.uniform(17, 20))
        else:
            while (START + timedelta(days=day)).weekday() >= 5:
                day = rng.randrange(28)
            start = START + timedelta(days=day, hours=rng.uniform(8, 12))
        made.append(make(rng, start))
    return made


@dataclass
class Outcome:
    allocated_minutes: int = 0
    used_minutes: int = 0
    busy_killed: int = 0
    culled: int = 0
    warned: int = 0

    @property
    def wasted_minutes(self) -> int:
        """GPU-minutes allocated while the GPUs were idle."""
        return self.allocated_minutes - self.used_minutes


def _offset(session: Session) -> int:
    """Minutes from the trace's start to the session's: cycles run on the clock, every culler's
    at the multiples of its interval, whenever a session started."""
    return int((session.start - START) / MINUTE)


def run_stock(session: Session, settings: StockSettings) -> tuple[int, bool, bool]:
    """(minutes allocated, culled, busy work lost) under jupyterhub-idle-culler's rule: at each
    cycle, inactive >= timeout (the last Jupyter activity, else the start), or, with a max age,
    age >= max age."""
    last = 0
    offset = _offset(session)
    for m in range(0, len(session.jupyter)):
        if session.jupyter[m]:
            last = m
        if (offset + m) % settings.every:
            continue
        idle = m - last >= settings.timeout
        too_old = settings.max_age > 0 and m >= settings.max_age
        if idle or too_old:
            return m, True, any(session.gpu_busy[m:])
    return len(session.jupyter), False, False


def run_ours(session: Session) -> tuple[int, bool, bool, bool]:
    """(minutes allocated, culled, busy work lost, warned) under gpuhub's policy, fed what the
    notebook extension reports: a busy GPU or kernel is Jupyter activity, and since when the
    GPUs have been idle with no kernel busy. A person at the notebook when the warning shows
    clicks Keep; an open tab does not."""
    last_activity = 0
    idle_since: int | None = None
    kept: datetime | None = None
    warned = False
    offset = _offset(session)
    for m in range(len(session.jupyter)):
        busy = session.gpu_busy[m] or session.kernel_busy[m]
        if session.jupyter[m] or busy:
            last_activity = m
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = m
        if (offset + m) % STEP:
            continue
        now = session.start + m * MINUTE
        view = ServerActivity(
            started=session.start,
            last_activity=session.start + last_activity * MINUTE,
            gpu_count=session.gpus,
            gpu_busy=session.gpu_busy[m],
            gpu_idle_since=None if idle_since is None else session.start + idle_since * MINUTE,
            kept_at=kept,
        )
        decision = decide_cull(view, OURS, now)
        if decision.action is CullAction.WARN:
            warned = True
            if any(session.person[max(m - STEP, 0) : m + 1]):
                kept = now  # "Keep it"
                continue
        if decision.action is CullAction.CULL:
            return m, True, any(session.gpu_busy[m:]), warned
    return len(session.jupyter), False, False, warned


def simulate(sessions: Sequence[Session]) -> dict[str, Outcome]:
    """Policy label -> outcome: each stock setting, then gpuhub."""
    results = {stock.label: Outcome() for stock in STOCK}
    results[GPUHUB] = Outcome()
    for s in sessions:
        for stock in STOCK:
            minutes, culled, lost = run_stock(s, stock)
            _add(results[stock.label], s, minutes, culled, lost, False)
        minutes, culled, lost, warned = run_ours(s)
        _add(results[GPUHUB], s, minutes, culled, lost, warned)
    return results


def _add(
    outcome: Outcome, s: Session, minutes: int, culled: bool, lost: bool, warned: bool
) -> None:
    outcome.allocated_minutes += minutes * s.gpus
    outcome.used_minutes += sum(s.gpu_busy[:minutes]) * s.gpus
    outcome.culled += culled
    outcome.busy_killed += lost
    outcome.warned += warned


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.culling_fleet")
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sessions = trace(args.sessions, args.seed)
    results = simulate(sessions)
    kinds: dict[str, int] = {}
    for s in sessions:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    print(f"Culling fleet simulation: {len(sessions)} sessions (seed {args.seed}) over 4 weeks:")
    print(", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ".\n")
    ours = results[GPUHUB]
    print(
        "| policy | allocated GPU-h | used GPU-h | wasted GPU-h | gpuhub wasted / this | "
        "culled | busy sessions killed |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, o in results.items():
        print(
            f"| {name} | {o.allocated_minutes / 60:,.0f} | {o.used_minutes / 60:,.0f} | "
            f"{o.wasted_minutes / 60:,.0f} | {ours.wasted_minutes / max(o.wasted_minutes, 1):.2f}x"
            f" | {o.culled:,} | {o.busy_killed:,} |"
        )
    print()
    for stock in STOCK:
        ratio = ours.wasted_minutes / max(results[stock.label].wasted_minutes, 1)
        verdict = "meets" if ratio <= 0.3 and ours.busy_killed == 0 else "misses"
        print(
            f"gpuhub / {stock.label}: wasted GPU-hours {ratio:.2f}x, busy sessions killed "
            f"{ours.busy_killed} vs {results[stock.label].busy_killed} "
            f"(target <= 0.30x and 0: {verdict})"
        )
    print(f"gpuhub warned {ours.warned:,} sessions first.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
