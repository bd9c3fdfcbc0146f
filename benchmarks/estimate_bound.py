"""How good can a wait-list estimate be at all? The best any single estimate could do, knowing
everything but the future: the running servers' ages and the exact distribution of session
lengths (the wait-list benchmark's: lognormal, sigma 1, median 90 min, 5 min to 12 h). For a
request that waits for the k-th of n running servers to end (no arrivals or other turns in
between, which only add spread), the time it waits is drawn many times; the estimate that is
within a factor 2 of the most draws is found, and how often it is. Averaged over seeded
states of n running servers with ages as a steady state leaves them (length-biased).

Run: .venv/bin/python -m benchmarks.estimate_bound [--seed 1] [--states 30] [--draws 2000]
Deterministic for a seed; no timing. Recorded in docs/benchmarks.md (Wait-list)."""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Sequence

MEDIAN_MINUTES = 90.0
SIGMA = 1.0
SHORTEST, LONGEST = 5.0, 720.0


def session_length(rng: random.Random) -> float:
    return min(max(rng.lognormvariate(math.log(MEDIAN_MINUTES), SIGMA), SHORTEST), LONGEST)


def residual(rng: random.Random, age: float) -> float:
    """The rest of a session that has run `age` minutes: a length drawn given it exceeds it."""
    while True:
        length = session_length(rng)
        if length > age:
            return length - age


def steady_ages(rng: random.Random, running: int) -> list[float]:
    """Ages of `running` servers as a steady state leaves them: a server caught running is
    length-biased (long sessions are more often running), at a uniform point of its life."""
    ages = []
    for _ in range(running):
        lengths = [session_length(rng) for _ in range(64)]
        length = rng.choices(lengths, weights=lengths)[0]
        ages.append(rng.uniform(0, length))
    return ages


def best_within_two(waits: Sequence[float]) -> float:
    """The largest share of `waits` within a factor 2 of one estimate e (e/2 <= w <= 2e)."""
    ordered = sorted(waits)
    best = 0.0
    low = 0
    for high, estimate in enumerate(ordered):  # e = a draw; the window [e/2, 2e] slides
        while ordered[low] < estimate / 2:
            low += 1
        top = high
        while top + 1 < len(ordered) and ordered[top + 1] <= 2 * estimate:
            top += 1
        best = max(best, (top - low + 1) / len(ordered))
    return best


def bound(running: int, kth: int, states: int, draws: int, seed: int) -> list[float]:
    rng = random.Random(f"{seed}:{running}:{kth}")
    found = []
    for _ in range(states):
        ages = steady_ages(rng, running)
        waits = [sorted(residual(rng, a) for a in ages)[kth - 1] for _ in range(draws)]
        found.append(best_within_two(waits))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--states", type=int, default=30)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--running", type=int, default=8)
    args = parser.parse_args(argv)
    print(
        f"Best possible share of estimates within a factor 2 ({args.running} running servers, "
        f"lognormal sigma {SIGMA:g}, median {MEDIAN_MINUTES:g} min; seed {args.seed}, "
        f"{args.states} states x {args.draws} draws)"
    )
    print()
    print("| waits for the | mean | lowest state | highest state |")
    print("|---|---|---|---|")
    for kth in (1, 2, 3, 4, 8):
        if kth > args.running:
            continue
        found = bound(args.running, kth, args.states, args.draws, args.seed)
        print(
            f"| {kth}. server to end | {statistics.mean(found):.0%} | {min(found):.0%} "
            f"| {max(found):.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
