"""What a profile costs, how much of the team's quota and budget is left, and whether it may
start, shown before launch; when waiting in line can cure a refusal, the offer to wait with the
place and estimate the line would give. Pure. Whether it may start is admission's own decision
(admission.py) asked about the profile, never a second copy of its rules; the place and estimate
are the ledger's (WaitlistLedger.preview), gathered by the spawner and handed in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from ..catalog import Catalog, Profile
from .admission import TeamUsage as TeamUsage
from .admission import budget_used_up, budget_warning, decide_in, next_month_start
from .waitlist_text import ordinal, wait_words

NO_FREE_GPU = "no-free-gpu"
"""Reason label of a profile with too few free GPUs of its type: on this machine (the local
allocator's) or in the capacity the ledger records (admission's)."""
LINE = "line"
"""Reason label of a profile others wait for and would get first (admission's)."""
WAITABLE = frozenset({"gpu-quota", NO_FREE_GPU, LINE})
"""Refusals that waiting in line can cure (as ledger/waitlist.WAITABLE, which a pure module may
not import; a test keeps the two equal). The budget and the per-user cap are not among them."""

LineKey = tuple[str, str, int]
"""(team, GPU type, GPU count): what a place in line depends on."""


@dataclass(frozen=True)
class LineSpot:
    """A GPU type's line as seen by one would-be request (team, type, count), read from the
    ledger by the spawner: the place (1-based) and estimated start the request would get if it
    joined now (WaitlistLedger.preview), and the type's GPUs free for anyone now."""

    place: int | None
    """None: not asked (the wait-list is off)."""
    estimate: datetime | None
    """When it would likely get its GPUs; None when the line cannot tell."""
    free: int | None = None
    """GPUs of the type free now (recorded capacity less open sessions and holds); None when
    unknown (no capacity recorded, or a type with an autoscaler behind it)."""
    capacity: int | None = None
    """GPUs of the type the install's servers can get at all (`usable_capacities`); None when
    unknown or unlimited."""

    def starts_now(self, now: datetime) -> bool:
        """Whether the line would serve the request at once (nobody before it, a GPU free)."""
        return self.place is None or (self.estimate is not None and self.estimate <= now)


@dataclass(frozen=True)
class WaitOffer:
    """The offer to wait for a GPU instead of being refused: `text` reads "No NVIDIA H100 80GB
    free now: wait for a GPU — you would be 3rd in line, about 40 minutes"."""

    lead: str
    """Why it cannot start now: "No NVIDIA H100 80GB free now"."""
    place: int
    estimate: datetime | None
    tail: str
    """Where the person would stand: "you would be 3rd in line, about 40 minutes"."""
    url: str | None = None
    """The wait-list page, with this profile and team filled in to join (the form adds it)."""

    @property
    def text(self) -> str:
        return f"{self.lead}: wait for a GPU \N{EM DASH} {self.tail}"


@dataclass(frozen=True)
class ProfilePreview:
    """The numbers a person sees next to one profile for one team."""

    slug: str
    team: str | None
    price_per_hour: Decimal
    currency: str
    gpu_type: str | None
    gpu_type_name: str | None
    gpu_count: int
    gpus_quota: int | None
    gpus_free: int | None
    user_gpus_left: int | None
    blocked: str | None
    """Why this profile cannot start right now (a sentence), or None."""
    blocked_reason: str | None = None
    """Admission's refusal label (gpu-quota, user-cap, budget, no-free-gpu, line), or
    `no-free-gpu` from this machine's free GPUs (local mode)."""
    offer: WaitOffer | None = None
    """Where the person would stand in line, when waiting can cure `blocked` and the wait-list
    is on; None otherwise (a spent budget, the per-user cap: refused, no offer)."""


@dataclass(frozen=True)
class BudgetPreview:
    """A team's monthly GPU-hour budget. `used`/`left` are None without metering."""

    team: str
    monthly_gpu_hours: Decimal | None
    used: Decimal | None
    left: Decimal | None
    percent_used: int | None
    warning: str | None
    exhausted: bool
    resets_at: datetime


def budget_preview(catalog: Catalog, team: str, usage: TeamUsage, now: datetime) -> BudgetPreview:
    quota = catalog.teams[team].quota
    budget = quota.monthly_gpu_hours
    used = usage.gpu_hours_this_month
    resets = next_month_start(now)
    if budget is None or used is None:
        return BudgetPreview(team, budget, used, None, None, None, False, resets)
    left = max(budget - used, Decimal(0))
    percent = 100 if budget == 0 else int(used * 100 / budget)
    exhausted = budget_used_up(quota, used)
    warning = budget_warning(team, quota, used, now)
    if exhausted:
        warning = (
            f"team {team!r} has used its {budget} GPU-hours for this month; new GPU servers "
            f"can start again on {resets:%Y-%m-%d}"
        )
    return BudgetPreview(team, budget, used, left, percent, warning, exhausted, resets)


def machine_note(free: int, gpu_type_name: str) -> str:
    """Why a profile cannot start on this machine now (local mode)."""
    has = f"{free} {gpu_type_name} free" if free else f"no free {gpu_type_name}"
    return (
        f"this machine has {has} now. Try again when a server on it stops, or pick another profile."
    )


def free_note(free: int, gpu_type_name: str) -> str:
    """Why a profile cannot start now, from the capacity the ledger records (any mode)."""
    has = f"only {free} {gpu_type_name} free" if free else f"no {gpu_type_name} free"
    return f"{has} now (the others run servers or are held for people whose turn it is)."


def line_note(place: int | None, gpu_type_name: str) -> str:
    """Why a profile cannot start now though a GPU may be free: others come first in line."""
    ahead = (place or 1) - 1
    if ahead < 1:
        return f"no {gpu_type_name} is free for you now."
    people = "request waits" if ahead == 1 else "requests wait"
    return f"{ahead} {people} for {gpu_type_name} and would get it before you."


def usable_capacities(
    catalog: Catalog, capacities: Mapping[str, tuple[int, int]]
) -> dict[str, int]:
    """GPU type -> GPUs the install's servers can get, as ledger/line.py's `usable_capacity`
    counts them from the recorded (total, used elsewhere). Types without a recorded capacity,
    or with an autoscaler behind them, are left out (unknown, unlimited)."""
    usable = {}
    for gpu_type, (total, elsewhere) in capacities.items():
        kind = catalog.gpu_types.get(gpu_type)
        if kind is not None and not kind.autoscaled:
            usable[gpu_type] = max(total - elsewhere, 0)
    return usable


def free_gpus(usable: Mapping[str, int], taken: Iterable[tuple[str | None, int]]) -> dict[str, int]:
    """GPU type -> GPUs free now, as ledger/line.py's `read_line` counts them: the `usable`
    capacity less the GPUs of open sessions and holds (`taken`: (type, count) of each)."""
    held: Counter[str] = Counter()
    for gpu_type, count in taken:
        if gpu_type is not None and count > 0:
            held[gpu_type] += count
    return {gpu_type: max(n - held[gpu_type], 0) for gpu_type, n in usable.items()}


def wait_offer(
    catalog: Catalog,
    team: str,
    usage: TeamUsage,
    gpu_type: str,
    gpu_count: int,
    reason: str,
    line: LineSpot,
    now: datetime,
) -> WaitOffer | None:
    """The offer to wait, for a refusal with `reason`: None when the wait-list is off, the
    refusal is not one waiting can cure, or joining would be refused anyway, as the ledger's
    join refuses it: more GPUs than the team's quota of the type or than the type has in all
    (no turn could ever serve it), or the per-user cap, judged on the user's own GPUs (waiting
    for the team's quota cannot lower them)."""
    if not catalog.waitlist.enabled or reason not in WAITABLE or line.place is None:
        return None
    quota = catalog.teams[team].quota.gpus.get(gpu_type, 0)
    if gpu_count > quota or (line.capacity is not None and gpu_count > line.capacity):
        return None
    own = replace(usage, holdings=tuple(h for h in usage.holdings if h.user == usage.user))
    joining = decide_in(catalog, team, own, gpu_type=gpu_type, gpu_count=gpu_count, now=now)
    if not joining.admitted and joining.reason not in WAITABLE:
        return None
    name = catalog.gpu_types[gpu_type].display_name
    lead = f"No {name} free now"
    if reason == "gpu-quota":
        lead += f" in team {team}'s quota"
    # Without a recorded capacity the line knows quotas only: its estimate would say "now" for
    # a GPU this machine does not have free.
    estimate = None if reason == NO_FREE_GPU and line.free is None else line.estimate
    tail = f"you would be {ordinal(line.place)} in line, {wait_words(estimate, now)}"
    return WaitOffer(lead, line.place, estimate, tail)


def profile_preview(
    catalog: Catalog,
    profile: Profile,
    team: str | None,
    usage: TeamUsage,
    now: datetime,
    machine_free: Mapping[str, int] | None = None,
    line: LineSpot | None = None,
) -> ProfilePreview:
    """The preview of `profile` for `usage.user` charged to `team`: `blocked` is admission's
    refusal of that request on `usage`, word for word (the budget is left unjudged when
    `usage` has no GPU-hours, i.e. without metering). A refusal waiting cannot cure (budget,
    per-user cap) comes first; then `machine_free`: GPUs per type free on this machine (local
    mode, where the local allocator refuses too few), None on Kubernetes; then the team's quota;
    then `line`, the type's line as the ledger sees it (free GPUs, and the place a request
    would get: not first, or not served at once, blocks with reason `line`). When waiting can
    cure the refusal, `offer` says where the person would stand (see `wait_offer`)."""
    currency = catalog.metering.currency
    gpu = profile.gpu
    if gpu is None or team is None:
        return ProfilePreview(
            profile.slug, team, Decimal(0), currency, None, None, 0, None, None, None, None
        )
    gpu_type = catalog.gpu_types[gpu.type]
    quota = catalog.teams[team].quota
    allowed = quota.gpus.get(gpu.type, 0)
    free = max(allowed - usage.gpus_in_use.get(gpu.type, 0), 0)
    cap = quota.gpus_per_user
    user_left = None if cap is None else max(cap - usage.user_gpus_in_use, 0)
    decision = decide_in(catalog, team, usage, gpu_type=gpu.type, gpu_count=gpu.count, now=now)
    on_machine = None if machine_free is None else machine_free.get(gpu.type, 0)
    blocked, reason = None, None
    name = gpu_type.display_name
    if not decision.admitted and decision.reason not in WAITABLE:
        blocked, reason = decision.message, decision.reason
    elif on_machine is not None and on_machine < gpu.count:
        blocked, reason = machine_note(on_machine, name), NO_FREE_GPU
    elif not decision.admitted:
        blocked, reason = decision.message, decision.reason
    elif line is not None and line.free is not None and line.free < gpu.count:
        blocked, reason = free_note(line.free, name), NO_FREE_GPU
    elif line is not None and not line.starts_now(now):
        blocked, reason = line_note(line.place, name), LINE
    offer = None
    if reason is not None and line is not None:
        offer = wait_offer(catalog, team, usage, gpu.type, gpu.count, reason, line, now)
    return ProfilePreview(
        slug=profile.slug,
        team=team,
        price_per_hour=gpu_type.price_per_hour * gpu.count,
        currency=currency,
        gpu_type=gpu.type,
        gpu_type_name=gpu_type.display_name,
        gpu_count=gpu.count,
        gpus_quota=allowed,
        gpus_free=free,
        user_gpus_left=user_left,
        blocked=blocked,
        blocked_reason=reason,
        offer=offer,
    )
