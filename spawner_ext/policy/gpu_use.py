"""How much of its GPUs a session used: one report's samples reduced to a few figures, those
figures added into the session's aggregate (bounded: a fixed histogram, sums and peaks), and
percentiles read back. Pure: no I/O; the ledger keeps the aggregates (ledger/activity.py).

A report speaks for the time since the report before it, at most `max_gap` of it (a server that
stopped reporting for an hour is not known to have done anything in that hour). Whole seconds
are counted between the reports' whole-second timestamps, so the sum over a session is exact to
a second however the reports fall. The first report of a session, and one older than the last,
count no time (but their memory still counts towards the peak)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from math import floor

from ..notebook.sampler import GPUSample

BUCKETS = 20
BUCKET_PERCENT = 5
"""The utilisation histogram: 20 buckets of 5 % ([0, 5), [5, 10) ... [95, 100])."""
MIB = 1 << 20
IN_USE_MIB = 1024
"""A GPU holding more memory than this (MiB) is in use, even while no kernel runs on it."""


@dataclass(frozen=True)
class GPUUseSample:
    """What one report says about the server's GPUs, whatever time it speaks for."""

    utilization: int | None
    """The busiest GPU's utilisation (percent); None when no GPU's utilisation is known."""
    busy_gpus: int
    """GPUs above the utilisation threshold."""
    gpus_in_use: int
    """GPUs busy, running a compute process, or holding more than IN_USE_MIB."""
    utilization_unknown: bool
    """Some GPU gave no utilisation: a MIG device (NVML has none for it) or a failed read."""
    memory_used_mib: int
    """The most memory in use on any one of the GPUs."""
    memory_total_mib: int
    """The largest memory of any one of the GPUs."""


def sample_use(samples: Sequence[GPUSample], threshold_percent: int) -> GPUUseSample | None:
    """One report's samples reduced; None for a report without GPUs (nothing to add). A GPU is
    busy above `threshold_percent` (the culling `gpu_utilization_percent`); memory comes in
    bytes (NVML) and leaves in MiB."""
    if not samples:
        return None
    known = [s.utilization for s in samples if s.error is None and s.utilization is not None]
    read = [s for s in samples if s.error is None]
    return GPUUseSample(
        utilization=max(known) if known else None,
        busy_gpus=sum(u > threshold_percent for u in known),
        gpus_in_use=sum(
            (s.utilization or 0) > threshold_percent
            or s.processes > 0
            or s.memory_used // MIB > IN_USE_MIB
            for s in read
        ),
        utilization_unknown=len(known) < len(samples),
        memory_used_mib=max((s.memory_used // MIB for s in read), default=0),
        memory_total_mib=max((s.memory_total // MIB for s in read), default=0),
    )


def report_seconds(previous: datetime | None, at: datetime, max_gap: timedelta) -> int:
    """The whole seconds a report at `at` speaks for, after one at `previous`: the difference
    of their whole-second timestamps, at most `max_gap`; 0 for the first report and for one
    not newer than `previous`."""
    if previous is None or at <= previous:
        return 0
    seconds = floor(at.timestamp()) - floor(previous.timestamp())
    return max(0, min(seconds, int(max_gap.total_seconds())))


def bucket_of(utilization: int) -> int:
    """The histogram bucket of a utilisation (percent; 100 falls in the last bucket)."""
    return min(max(utilization, 0) // BUCKET_PERCENT, BUCKETS - 1)


def _zeros() -> tuple[int, ...]:
    return (0,) * BUCKETS


@dataclass(frozen=True)
class GPUUse:
    """A session's GPU use, summed over its reports (or one report's share of it)."""

    reports: int = 0
    observed_seconds: int = 0
    """Seconds the reports speak for (see the module docstring)."""
    busy_seconds: int = 0
    """Of those, seconds in which any GPU was above the threshold."""
    busy_gpu_seconds: int = 0
    """GPU-seconds above the threshold (a second of two busy GPUs counts 2)."""
    utilization_seconds: tuple[int, ...] = field(default_factory=_zeros)
    """Seconds per utilisation bucket of the busiest GPU, where its utilisation was known."""
    utilization_unknown: bool = False
    """Some report had a GPU without utilisation (MIG, or a failed read)."""
    peak_memory_mib: int = 0
    """The most memory any one GPU of the session had in use at a report."""
    memory_total_mib: int = 0
    """The memory of one of the session's GPUs (the largest)."""
    peak_gpus_in_use: int = 0
    """The most GPUs in use at once."""

    @property
    def measured_seconds(self) -> int:
        """Seconds whose utilisation is known (the histogram's total)."""
        return sum(self.utilization_seconds)

    @property
    def busy_percent(self) -> int | None:
        """Percent of the observed time any GPU was busy, rounded up; None before any time
        was observed with a known utilisation."""
        if not self.measured_seconds or not self.observed_seconds:
            return None
        return -(-100 * self.busy_seconds // self.observed_seconds)

    def percentile(self, fraction: float) -> int | None:
        """The utilisation (percent) the busiest GPU stayed at or below for `fraction` of the
        measured time, read from the histogram: the upper edge of the bucket it falls in (so
        never below the truth, at most 5 points above it). None before any measured time."""
        total = self.measured_seconds
        if not total:
            return None
        reached = 0
        for n, seconds in enumerate(self.utilization_seconds):
            reached += seconds
            if reached >= fraction * total:
                return min((n + 1) * BUCKET_PERCENT, 100)
        return 100

    @property
    def p50(self) -> int | None:
        return self.percentile(0.50)

    @property
    def p95(self) -> int | None:
        return self.percentile(0.95)


def report_use(sample: GPUUseSample, seconds: int) -> GPUUse:
    """One report as an aggregate of its own: `sample` over `seconds`."""
    histogram = list(_zeros())
    if sample.utilization is not None:
        histogram[bucket_of(sample.utilization)] = seconds
    return GPUUse(
        reports=1,
        observed_seconds=seconds,
        busy_seconds=seconds if sample.busy_gpus else 0,
        busy_gpu_seconds=seconds * sample.busy_gpus,
        utilization_seconds=tuple(histogram),
        utilization_unknown=sample.utilization_unknown,
        peak_memory_mib=sample.memory_used_mib,
        memory_total_mib=sample.memory_total_mib,
        peak_gpus_in_use=sample.gpus_in_use,
    )


def merge(a: GPUUse, b: GPUUse) -> GPUUse:
    """Two aggregates as one: times add up, peaks take the larger, unknown stays unknown. In
    any order, and grouped any way (the ledger merges per day and the days per session)."""
    return GPUUse(
        reports=a.reports + b.reports,
        observed_seconds=a.observed_seconds + b.observed_seconds,
        busy_seconds=a.busy_seconds + b.busy_seconds,
        busy_gpu_seconds=a.busy_gpu_seconds + b.busy_gpu_seconds,
        utilization_seconds=tuple(
            x + y for x, y in zip(a.utilization_seconds, b.utilization_seconds, strict=True)
        ),
        utilization_unknown=a.utilization_unknown or b.utilization_unknown,
        peak_memory_mib=max(a.peak_memory_mib, b.peak_memory_mib),
        memory_total_mib=max(a.memory_total_mib, b.memory_total_mib),
        peak_gpus_in_use=max(a.peak_gpus_in_use, b.peak_gpus_in_use),
    )


def merge_all(uses: Iterable[GPUUse]) -> GPUUse:
    total = GPUUse()
    for use in uses:
        total = merge(total, use)
    return total
