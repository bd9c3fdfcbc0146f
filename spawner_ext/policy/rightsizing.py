"""Right-sizing: from what a session used of its GPUs (policy/gpu_use.py), the cheaper profile
that would have done, and what following such advice would have saved in a month. Pure: the
caller gathers the session's use, its profile and the profiles the team may start.

The rule (docs/explanation/right-sizing.md explains it):

| Condition                                          | Suggestion                               |
|----------------------------------------------------|------------------------------------------|
| observed less than `min_observed` (30 minutes)     | none: too little to judge                |
| a profile's memory per GPU < peak + `headroom` 25 %| never that profile                       |
| a profile with fewer GPUs than were in use at once | never that profile                       |
| another GPU type, a full-GPU session               | only if its use was light: busy at most  |
|                                                    | `light_percent` (25 %) of the time, or   |
|                                                    | the busiest GPU at or below 25 % for     |
|                                                    | 95 % of it, measured over `min_observed` |
| another GPU type, a MIG session                    | by memory alone (NVML has no utilisation |
|                                                    | for a MIG slice)                         |
| several fit                                        | the cheapest (then fewest GPUs, slug)    |
| none cheaper per hour fits                         | none                                     |
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from ..catalog import Catalog
from .gpu_use import GPUUse
from .identity import Identity
from .profiles import why_not

CENTS = Decimal("0.01")


@dataclass(frozen=True)
class UsedProfile:
    """The profile a session ran with, as the ledger recorded it."""

    slug: str
    gpu_type: str
    gpu_count: int
    price_per_hour: Decimal
    """The whole server's price per hour (all its GPUs)."""
    is_mig: bool = False
    """Its GPUs are MIG slices: NVML tells their memory, not their utilisation."""


@dataclass(frozen=True)
class Candidate:
    """A GPU profile the session's team (and user) may start."""

    slug: str
    gpu_type: str
    gpu_count: int
    memory_mib: int
    """Memory of one of its GPUs (or MIG slices), MiB."""
    price_per_hour: Decimal
    """The whole server's price per hour."""
    is_mig: bool = False


@dataclass(frozen=True)
class RightSizing:
    """The rule's settings (see the module docstring)."""

    min_observed: timedelta = timedelta(minutes=30)
    headroom_percent: int = 25
    light_percent: int = 25


class Change(enum.StrEnum):
    SMALLER_GPU = "smaller-gpu"
    """Another, cheaper GPU type (or MIG slice), as many GPUs or fewer."""
    FEWER_GPUS = "fewer-gpus"
    """The same GPU type, fewer of them."""


@dataclass(frozen=True)
class Suggestion:
    """A cheaper profile that would have done for a session, and the figures that say so."""

    profile: str
    """The suggested profile's slug."""
    price_per_hour: Decimal
    instead_of: str
    """The session's profile's slug."""
    instead_of_price_per_hour: Decimal
    change: Change
    peak_memory_mib: int
    """The most memory in use on any one of the session's GPUs."""
    memory_total_mib: int
    """The memory of one of the session's GPUs."""
    gpus_in_use: int
    """The most GPUs in use at once (at least 1)."""
    gpu_count: int
    """The GPUs the session held."""
    is_mig: bool
    """The session's GPUs were MIG slices (judged by memory alone)."""
    busy_percent: int | None
    """Percent of the observed time any GPU was busy; None: not known (MIG)."""
    p95_percent: int | None
    """The busiest GPU's utilisation 95 % of the time stayed at or below this; None: unknown."""
    observed_seconds: int

    @property
    def saving_per_hour(self) -> Decimal:
        return self.instead_of_price_per_hour - self.price_per_hour


def needed_mib(peak_mib: int, headroom_percent: int) -> int:
    """Memory a GPU must have for a session whose peak was `peak_mib`: the peak plus the
    headroom, rounded up to a whole MiB."""
    return -(-peak_mib * (100 + headroom_percent) // 100)


def light_use(use: GPUUse, rule: RightSizing) -> bool:
    """Whether a full-GPU session's use was light enough for a slower GPU to have done: its
    utilisation known for at least `min_observed`, and busy at most `light_percent` of the time
    or the busiest GPU at or below `light_percent` for 95 % of it."""
    if use.measured_seconds < rule.min_observed.total_seconds():
        return False
    busy, p95 = use.busy_percent, use.p95
    return (busy is not None and busy <= rule.light_percent) or (
        p95 is not None and p95 <= rule.light_percent
    )


def suggest(
    use: GPUUse,
    used: UsedProfile,
    candidates: Iterable[Candidate],
    rule: RightSizing = RightSizing(),
) -> Suggestion | None:
    """The cheapest of `candidates` that would have done for a session that used `use` of
    `used`'s GPUs, or None: too little observed, or nothing cheaper fits (the module's table)."""
    if used.gpu_count < 1 or use.observed_seconds < rule.min_observed.total_seconds():
        return None
    memory = needed_mib(use.peak_memory_mib, rule.headroom_percent)
    gpus = min(max(use.peak_gpus_in_use, 1), used.gpu_count)
    other_type_ok = used.is_mig or light_use(use, rule)
    fits = [
        c
        for c in candidates
        if c.slug != used.slug
        and c.price_per_hour < used.price_per_hour
        and c.memory_mib >= memory
        and c.gpu_count >= gpus
        and (c.gpu_type == used.gpu_type or other_type_ok)
    ]
    if not fits:
        return None
    best = min(fits, key=lambda c: (c.price_per_hour, c.gpu_count, c.slug))
    return Suggestion(
        profile=best.slug,
        price_per_hour=best.price_per_hour,
        instead_of=used.slug,
        instead_of_price_per_hour=used.price_per_hour,
        change=Change.FEWER_GPUS if best.gpu_type == used.gpu_type else Change.SMALLER_GPU,
        peak_memory_mib=use.peak_memory_mib,
        memory_total_mib=use.memory_total_mib,
        gpus_in_use=gpus,
        gpu_count=used.gpu_count,
        is_mig=used.is_mig,
        busy_percent=None if used.is_mig else use.busy_percent,
        p95_percent=None if used.is_mig else use.p95,
        observed_seconds=use.observed_seconds,
    )


def possible_saving(sessions: Iterable[tuple[Suggestion | None, int]]) -> Decimal:
    """What following the suggestions would have saved over some sessions (e.g. a user's in a
    month): for each (suggestion, seconds the server was held, within the month), the saving
    per hour times those hours; sessions without a suggestion save nothing. In cents."""
    total = sum(
        (s.saving_per_hour * seconds / 3600 for s, seconds in sessions if s is not None),
        Decimal(0),
    )
    return total.quantize(CENTS, rounding=ROUND_HALF_UP)


# --- inputs from the catalog ---------------------------------------------------------------------


def used_profile(
    catalog: Catalog, slug: str, gpu_type: str, gpu_count: int, price_per_hour: Decimal
) -> UsedProfile:
    """A session's profile as the ledger recorded it (its price as admitted), MIG or not from
    the catalog's GPU type (a type gone from the catalog: not MIG)."""
    entry = catalog.gpu_types.get(gpu_type)
    return UsedProfile(
        slug, gpu_type, gpu_count, price_per_hour, entry.is_mig if entry is not None else False
    )


def candidates(
    catalog: Catalog, team: str, who: Identity, memory_mib: Mapping[str, int]
) -> list[Candidate]:
    """The GPU profiles `who` may start charged to `team` (policy/profiles.py `why_not`: the
    team's profiles, the profile's teams and groups, the team's quota), at today's prices.
    `memory_mib` is each GPU type's memory per GPU; a type without one is left out (no advice
    can be given about memory not known)."""
    out = []
    for profile in catalog.profiles:
        gpu = profile.gpu
        if gpu is None or gpu.type not in memory_mib or gpu.type not in catalog.gpu_types:
            continue
        if why_not(catalog, profile, who, team) is not None:
            continue
        gpu_type = catalog.gpu_types[gpu.type]
        out.append(
            Candidate(
                slug=profile.slug,
                gpu_type=gpu.type,
                gpu_count=gpu.count,
                memory_mib=memory_mib[gpu.type],
                price_per_hour=gpu_type.price_per_hour * gpu.count,
                is_mig=gpu_type.is_mig,
            )
        )
    return out


# --- words for people ----------------------------------------------------------------------------


def gigabytes(mib: int) -> str:
    """Memory in words: "6 GB", "0.5 GB", "80 GB" (GiB, as GPU makers name their cards)."""
    gib = mib / 1024
    text = f"{gib:.0f}" if gib >= 10 else f"{gib:.1f}".removesuffix(".0")
    return f"{text} GB"


def price(amount: Decimal, currency: str | None = None) -> str:
    """ "0.70/h", or "0.70 USD/h" with a currency."""
    money = amount.quantize(CENTS, rounding=ROUND_HALF_UP)
    return f"{money} {currency}/h" if currency else f"{money}/h"


def suggestion_words(s: Suggestion, currency: str | None = None) -> str:
    """ "used at most 6 GB of 80 GB and was busy 3 % of the time: `l4-single` would have cost
    0.70/h instead of 4.10/h"; "... of 80 GB on 1 of its 4 GPUs and was busy ..."; "used at
    most 3 GB of its 10 GB MIG slice (NVML tells no utilisation for one): ..."."""
    peak, total = gigabytes(s.peak_memory_mib), gigabytes(s.memory_total_mib)
    if s.is_mig:
        used = f"used at most {peak} of its {total} MIG slice (NVML tells no utilisation for one)"
    else:
        used = f"used at most {peak} of {total}"
        if s.gpus_in_use < s.gpu_count:
            used += f" on {s.gpus_in_use} of its {s.gpu_count} GPUs"
        if s.busy_percent is None:
            used += " (its utilisation is not known)"
        else:
            used += f" and was busy {s.busy_percent} % of the time"
    return (
        f"{used}: `{s.profile}` would have cost {price(s.price_per_hour, currency)} instead of "
        f"{price(s.instead_of_price_per_hour, currency)}"
    )


def saving_words(amount: Decimal, currency: str) -> str:
    """ "could have saved 84.20 USD this month" (nothing: "")."""
    if amount <= 0:
        return ""
    return f"could have saved {amount.quantize(CENTS)} {currency} this month"
