"""What a profile costs and how much of the team's quota is left, shown before launch. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from ..catalog import Catalog, Profile


@dataclass(frozen=True)
class TeamUsage:
    """What a team holds now and has used this month. `gpu_hours_this_month` is None when no
    metering source is configured."""

    gpus_in_use: Mapping[str, int] = field(default_factory=dict)
    """GPU type -> GPUs held by the team's running servers."""
    user_gpus_in_use: int = 0
    """GPUs held by the asking user's running servers (all types)."""
    gpu_hours_this_month: Decimal | None = None


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
    """Why this profile cannot start right now, or None."""


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


def next_month_start(now: datetime) -> datetime:
    """When a calendar-month budget resets: 00:00 UTC on the first of next month."""
    now = now.astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def budget_preview(catalog: Catalog, team: str, usage: TeamUsage, now: datetime) -> BudgetPreview:
    quota = catalog.teams[team].quota
    budget = quota.monthly_gpu_hours
    used = usage.gpu_hours_this_month
    resets = next_month_start(now)
    if budget is None or used is None:
        return BudgetPreview(team, budget, used, None, None, None, False, resets)
    left = max(budget - used, Decimal(0))
    percent = 100 if budget == 0 else int(used * 100 / budget)
    exhausted = used >= budget
    warning = None
    if exhausted:
        warning = (
            f"team {team!r} has used its {budget} GPU-hours for this month; new GPU servers "
            f"can start again on {resets:%Y-%m-%d}"
        )
    elif percent >= quota.budget_warning_percent:
        warning = f"team {team!r} has used {percent}% of its {budget} GPU-hours this month"
    return BudgetPreview(team, budget, used, left, percent, warning, exhausted, resets)


def profile_preview(
    catalog: Catalog,
    profile: Profile,
    team: str | None,
    usage: TeamUsage,
    machine_free: Mapping[str, int] | None = None,
) -> ProfilePreview:
    """`machine_free`: GPUs per type free on this machine (local mode), None on Kubernetes."""
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
    user_left = (
        None
        if quota.gpus_per_user is None
        else max(quota.gpus_per_user - usage.user_gpus_in_use, 0)
    )
    blocked = None
    on_machine = None if machine_free is None else machine_free.get(gpu.type, 0)
    if on_machine is not None and on_machine < gpu.count:
        blocked = (
            f"this machine has {on_machine} {gpu_type.display_name} free"
            if on_machine
            else f"this machine has no free {gpu_type.display_name}"
        )
    elif free < gpu.count:
        blocked = f"team {team!r} has {free} of {allowed} {gpu_type.display_name} free now"
    elif user_left is not None and user_left < gpu.count:
        blocked = (
            f"you may hold {quota.gpus_per_user} GPUs at once and hold {usage.user_gpus_in_use}"
        )
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
    )
