"""Reports -> since when GPUs idle and the waste, fed back their own output report by report."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from spawner_ext.notebook.sampler import Activity
from spawner_ext.policy.activity import (
    ActivityReport,
    ActivityState,
    IdleSpan,
    after_report,
)

T0 = datetime(2026, 12, 1, 23, 59, 0, tzinfo=UTC)
S = timedelta(seconds=1)
IDLE = ActivityReport(Activity.IDLE)
BUSY = ActivityReport(Activity.BUSY)
GAP = timedelta(minutes=5)


def feed(
    reports: list[tuple[int, ActivityReport]], gpus: int = 2
) -> tuple[ActivityState | None, list[IdleSpan]]:
    state: ActivityState | None = None
    spans: list[IdleSpan] = []
    for second, report in reports:
        state, added = after_report(state, report, T0 + second * S, gpus, GAP)
        spans += added
    return state, spans


def test_idle_reports_add_waste_split_at_midnight_and_remember_since_when() -> None:
    state, spans = feed([(0, IDLE), (30, IDLE), (90, IDLE)])
    assert state is not None
    assert state.gpu_idle_since == T0
    # 90 s of 2 GPUs: 60 s before midnight, 30 s after
    by_day: dict[date, int] = {}
    for span in spans:
        by_day[span.day] = by_day.get(span.day, 0) + span.gpu_seconds
    assert by_day == {date(2026, 12, 1): 120, date(2026, 12, 2): 60}
    assert state.idle_gpu_seconds == 180


def test_a_busy_report_or_a_busy_kernel_ends_the_idle_stretch() -> None:
    state, spans = feed([(0, IDLE), (10, BUSY), (20, IDLE), (30, IDLE)])
    assert state is not None and state.gpu_idle_since == T0 + 20 * S
    # waste is time between two idle reports: 20-30 only (0-10 ended busy: not known idle)
    assert sum(s.gpu_seconds for s in spans) == 2 * 10
    state, _ = feed([(0, IDLE), (10, ActivityReport(Activity.IDLE, kernel_busy=True))])
    assert state is not None and state.gpu_idle_since is None, "a busy kernel is activity"


def test_unknown_activity_is_never_idle_and_a_long_silence_counts_at_most_the_gap() -> None:
    state, spans = feed([(0, IDLE), (10, ActivityReport(Activity.UNKNOWN))])
    assert state is not None and state.gpu_idle_since is None and spans == []
    _, spans = feed([(0, IDLE), (3600, IDLE)], gpus=1)
    assert sum(s.gpu_seconds for s in spans) == 300, "an hour unreported: 5 minutes counted"


def test_a_repeated_or_older_report_changes_nothing() -> None:
    state, _ = feed([(0, IDLE), (30, IDLE)])
    assert state is not None
    again, spans = after_report(state, IDLE, state.reported_at, 2, GAP)
    assert again == state and spans == []
    older, spans = after_report(state, BUSY, state.reported_at - S, 2, GAP)
    assert older == state and spans == []
