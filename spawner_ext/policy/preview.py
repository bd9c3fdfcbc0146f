"""What a profile costs, how much of the team's quota and budget is left, and whether it may
start, shown before launch. Pure. Whether it may start is admission's own decision
(admission.py) asked about the profile, never a second copy of its rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..catalog import Catalog, Profile
from .admission import TeamUsage as TeamUsage
from .admission import budget_used_up, budget_warning, decide_in, next_month_start

NO_FREE_GPU = "no-free-gpu"
"""Reason label of a profile this machine has too few free GPUs for (the local allocator's)."""


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
    """Admission's refusal label (gpu-quota, user-cap, budget), or `no-free-gpu` (local mode)."""


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


def profile_preview(
    catalog: Catalog,
    profile: Profile,
    team: str | None,
    usage: TeamUsage,
    now: datetime,
    machine_free: Mapping[str, int] | None = None,
) -> ProfilePreview:
    """The preview of `profile` for `usage.user` charged to `team`: `blocked` is admission's
    refusal of that request on `usage`, word for word (the budget is left unjudged when
    `usage` has no GPU-hours, i.e. without metering). `machine_free`: GPUs per type free on this
    machine (local mode, where the local allocator refuses too few; checked first), None on
    Kubernetes."""
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
    if on_machine is not None and on_machine < gpu.count:
        blocked, reason = machine_note(on_machine, gpu_type.display_name), NO_FREE_GPU
    elif not decision.admitted:
        blocked, reason = decision.message, decision.reason
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
    )
