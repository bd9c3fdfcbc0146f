"""When is a running server stopped for being idle, and why? The one culling decision, asked by
the gpuhub service's culler for every server each cycle and offered to stock
jupyterhub-idle-culler as its `cull_arbiter_hook`. Pure: a function of (server, its activity,
the catalog, now); the service gathers the inputs and acts on the answer.

Rules, each giving a time the server would be stopped at if nothing changes:
- `max_age`: the server's age, whatever it does;
- the budget's stop stage: the team's monthly budget is used up and its grace period ends
  (money, not idleness: it stops busy GPUs too, and the warning announces it);
- `idle_timeout`: no Jupyter activity (kernels, terminals, HTTP; a busy kernel counts, as the
  notebook extension reports it) since the last activity or Keep;
- `gpu_idle_timeout`: the server holds GPUs, and every one has been at or below
  `gpu_utilization_percent` with no kernel busy since `gpu_idle_since` (or the last Keep).
A GPU that is busy keeps the server against both idle rules; one whose activity NVML cannot tell (a
MIG device with processes, a failed read) is never judged idle. The earliest time wins; within
`warn_before` of it the server is warned, at it the server is culled.

Keep (`kept_at`) restarts only the idle clocks: it can delay a stop for idleness, never one for
`max_age` or the budget (`keep_delays`), and the warning offers it only where it can."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..catalog import Catalog
from ..end_reason import EndReason


@dataclass(frozen=True)
class CullSettings:
    """The culling settings in force for one server: its profile's, else the catalog's."""

    idle_timeout: timedelta | None
    gpu_idle_timeout: timedelta | None
    max_age: timedelta | None
    warn_before: timedelta
    gpu_utilization_percent: int


def settings_for(catalog: Catalog, profile_slug: str, gpu_count: int) -> CullSettings:
    """The settings for a server of `profile_slug` (a profile gone from the catalog: the
    catalog-wide defaults)."""
    culling = catalog.culling
    profile = catalog.profile(profile_slug)
    idle = (profile.idle_timeout if profile else None) or culling.idle_timeout
    gpu_idle = (profile.gpu_idle_timeout if profile else None) or culling.gpu_idle_timeout
    max_age = (profile.max_age if profile else None) or culling.max_age
    return CullSettings(
        idle_timeout=idle,
        gpu_idle_timeout=gpu_idle if gpu_count else None,
        max_age=max_age,
        warn_before=culling.warn_before,
        gpu_utilization_percent=culling.gpu_utilization_percent,
    )


@dataclass(frozen=True)
class ServerActivity:
    """What is known about a running server's use."""

    started: datetime
    last_activity: datetime | None
    """JupyterHub's last activity of the server (None: never)."""
    gpu_count: int = 0
    gpu_label: str = ""
    """How the warning names the GPUs, e.g. '1x H100'."""
    gpu_busy: bool = False
    """The latest GPU report (if recent) says a GPU is busy."""
    gpu_idle_since: datetime | None = None
    """Since when every GPU has been idle with no kernel busy, by the reports; None when a GPU
    is busy, cannot be judged, or nothing reported."""
    kept_at: datetime | None = None
    """The last time the user clicked Keep in the warning."""
    budget_stop_at: datetime | None = None
    """When the budget's stop stage stops the team's GPU servers (grace over); None: no stop."""
    reclaim_at: datetime | None = None
    """A borrowed server chosen to give its GPUs back: when it is stopped (its user is warned
    from the choice on, however far ahead); None: not chosen."""
    reclaim_for: str = ""
    """The team the GPUs are reclaimed for, as people read it."""


KEEP_DELAYS = frozenset({EndReason.CULLED_IDLE, EndReason.CULLED_GPU_IDLE})
"""The stops Keep can delay: the idle rules, whose clocks it restarts. `max_age` and the budget
ignore it."""


def keep_delays(reason: str | None) -> bool:
    """Whether clicking Keep can delay a stop for `reason` (an EndReason value)."""
    return reason in KEEP_DELAYS


class CullAction(enum.StrEnum):
    KEEP = "keep"
    WARN = "warn"
    CULL = "cull"


@dataclass(frozen=True)
class CullDecision:
    action: CullAction
    reason: EndReason | None = None
    """What the server is (or will be) stopped for; None when no rule applies."""
    cull_at: datetime | None = None
    """When it is stopped if nothing changes."""
    message: str = ""
    """For the person: what happens, when and why."""


def _minutes(delta: timedelta) -> str:
    """'45 seconds', '10 minutes', '3 hours'."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} minutes"
    return f"{minutes // 60} hours"


def _why(reason: EndReason, server: ServerActivity, at: datetime, now: datetime) -> str:
    gpus = "its GPU has" if server.gpu_count == 1 else "its GPUs have"
    if reason is EndReason.MAX_AGE:
        return f"it will have run for {_minutes(at - server.started)}, the longest allowed"
    if reason is EndReason.BUDGET:
        return "the team's monthly GPU budget is used up"
    if reason is EndReason.RECLAIMED:
        whose = server.reclaim_for or "their team"
        return (
            f"it runs on other teams' idle quota, and {whose} needs the GPUs back for people "
            "waiting on their own quota. Open notebooks are saved first"
        )
    if reason is EndReason.CULLED_GPU_IDLE:
        since = max(filter(None, (server.gpu_idle_since, server.kept_at)))
        return f"{gpus} been idle for {_minutes(now - since)}"
    last = max(filter(None, (server.last_activity, server.kept_at, server.started)))
    return f"it has had no activity for {_minutes(now - last)}"


def cull_deadlines(
    server: ServerActivity, settings: CullSettings
) -> list[tuple[datetime, EndReason]]:
    """Each rule's time to stop the server if nothing changes (the rules in the module's
    docstring); `decide_cull` acts on the earliest."""
    candidates: list[tuple[datetime, EndReason]] = []
    if settings.max_age is not None:
        candidates.append((server.started + settings.max_age, EndReason.MAX_AGE))
    if server.budget_stop_at is not None:  # not idleness: it stops busy GPUs too
        candidates.append((server.budget_stop_at, EndReason.BUDGET))
    if server.reclaim_at is not None:  # a borrowed server giving its GPUs back, busy or not
        candidates.append((server.reclaim_at, EndReason.RECLAIMED))
    if not server.gpu_busy:  # idleness never stops a busy GPU
        if settings.idle_timeout is not None:
            last = max(filter(None, (server.last_activity, server.kept_at, server.started)))
            candidates.append((last + settings.idle_timeout, EndReason.CULLED_IDLE))
        if settings.gpu_idle_timeout is not None and server.gpu_count and server.gpu_idle_since:
            since = max(filter(None, (server.gpu_idle_since, server.kept_at)))
            candidates.append((since + settings.gpu_idle_timeout, EndReason.CULLED_GPU_IDLE))
    return candidates


def decide_cull(server: ServerActivity, settings: CullSettings, now: datetime) -> CullDecision:
    """KEEP, WARN (within `warn_before` of the cull) or CULL, with the reason and the time."""
    candidates = cull_deadlines(server, settings)
    if not candidates:
        return CullDecision(CullAction.KEEP)
    at, reason = min(candidates, key=lambda c: (c[0], _ORDER[c[1]]))
    what = f"This server ({server.gpu_label})" if server.gpu_label else "This server"
    if now >= at:
        why = _why(reason, server, now, now)
        return CullDecision(CullAction.CULL, reason, at, f"{what} was stopped: {why}.")
    if at - now <= settings.warn_before or reason is EndReason.RECLAIMED:
        why = _why(reason, server, at, now)
        when = f"in {_minutes(at - now)} (at {at.astimezone(UTC):%H:%M} UTC)"
        message = f"{what} will be stopped {when}: {why}."
        return CullDecision(CullAction.WARN, reason, at, message)
    return CullDecision(CullAction.KEEP, reason, at)


_ORDER = {
    EndReason.MAX_AGE: 0,
    EndReason.BUDGET: 1,
    EndReason.RECLAIMED: 2,
    EndReason.CULLED_GPU_IDLE: 3,
    EndReason.CULLED_IDLE: 4,
}
"""Which reason is named when two rules fall due at once."""
