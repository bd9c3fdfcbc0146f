"""What a server's activity reports add up to: since when its GPUs have been idle, and the idle
GPU-seconds wasted (for the reports). Pure: the previous state, one report, its time.

A report says what the GPUs did at one moment (busy, idle, unknown) and whether a kernel was
busy. GPUs count as idle only while every report says idle with no kernel busy; the time between
two such reports is waste, at most `max_gap` of it (a notebook that stopped reporting for an
hour is not known to have idled all that time)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ..notebook.sampler import Activity


@dataclass(frozen=True)
class ActivityReport:
    gpu_activity: Activity
    kernel_busy: bool = False


@dataclass(frozen=True)
class ActivityState:
    """What the service keeps per session (ledger table server_activity)."""

    reported_at: datetime
    gpu_activity: Activity
    kernel_busy: bool
    gpu_idle_since: datetime | None
    idle_gpu_seconds: int = 0
    kept_at: datetime | None = None

    @property
    def idle(self) -> bool:
        return self.gpu_activity is Activity.IDLE and not self.kernel_busy


@dataclass(frozen=True)
class IdleSpan:
    """Idle GPU-seconds to record for one UTC day."""

    day: date
    gpu_seconds: int


def after_report(
    previous: ActivityState | None,
    report: ActivityReport,
    at: datetime,
    gpu_count: int,
    max_gap: timedelta,
) -> tuple[ActivityState, list[IdleSpan]]:
    """The state after `report` arrived at `at`, and the waste to add (split at midnights).
    A report older than the last one changes nothing."""
    if previous is not None and at <= previous.reported_at:
        return previous, []
    idle_now = report.gpu_activity is Activity.IDLE and not report.kernel_busy
    spans: list[IdleSpan] = []
    since: datetime | None = None
    if idle_now:
        since = at
        if previous is not None and previous.idle:
            since = previous.gpu_idle_since or previous.reported_at
            start = max(previous.reported_at, at - max_gap)
            spans = _by_day(start, at, gpu_count)
    state = ActivityState(
        reported_at=at,
        gpu_activity=report.gpu_activity,
        kernel_busy=report.kernel_busy,
        gpu_idle_since=since,
        idle_gpu_seconds=(previous.idle_gpu_seconds if previous else 0)
        + sum(s.gpu_seconds for s in spans),
        kept_at=previous.kept_at if previous else None,
    )
    return state, spans


def _by_day(start: datetime, end: datetime, gpu_count: int) -> list[IdleSpan]:
    """Whole GPU-seconds of [start, end) per UTC day."""
    spans = []
    cursor = start.astimezone(UTC)
    end = end.astimezone(UTC)
    while cursor < end:
        midnight = datetime.combine(cursor.date() + timedelta(days=1), datetime.min.time(), UTC)
        piece_end = min(end, midnight)
        seconds = int((piece_end - cursor).total_seconds()) * gpu_count
        if seconds:
            spans.append(IdleSpan(cursor.date(), seconds))
        cursor = piece_end
    return spans
