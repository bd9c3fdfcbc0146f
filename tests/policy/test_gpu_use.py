"""A session's GPU use, report by report: samples reduced, the time each report speaks for,
aggregates merged, percentiles read; checked against figures worked out here by hand or from
the per-second truth."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from spawner_ext.notebook.sampler import GPUSample
from spawner_ext.policy.gpu_use import (
    BUCKETS,
    GPUUse,
    GPUUseSample,
    bucket_of,
    merge,
    merge_all,
    report_seconds,
    report_use,
    sample_use,
)

T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
GAP = timedelta(minutes=5)
GIB = 1 << 30


def gpu(
    utilization: int | None,
    used_gib: float = 0,
    total_gib: int = 80,
    processes: int = 0,
    error: str | None = None,
) -> GPUSample:
    return GPUSample(
        uuid="GPU-x",
        name="NVIDIA H100 80GB HBM3",
        is_mig=utilization is None,
        utilization=utilization,
        memory_used=int(used_gib * GIB),
        memory_total=total_gib * GIB,
        processes=processes,
        error=error,
    )


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], None),
        (
            [gpu(40, used_gib=6, processes=1)],
            GPUUseSample(40, 1, 1, False, 6144, 81920),
        ),
        (  # two GPUs, one busy, the other only holding 2 GiB: both in use
            [gpu(90, used_gib=30), gpu(0, used_gib=2)],
            GPUUseSample(90, 1, 2, False, 30720, 81920),
        ),
        (  # at the threshold is idle; a few MiB of context is not in use
            [gpu(5, used_gib=0.25), gpu(0)],
            GPUUseSample(5, 0, 0, False, 256, 81920),
        ),
        (  # a MIG slice: no utilisation, in use by its process
            [gpu(None, used_gib=4, total_gib=10, processes=1)],
            GPUUseSample(None, 0, 1, True, 4096, 10240),
        ),
        (  # a failed read counts as unknown and adds no memory
            [gpu(20, used_gib=1), gpu(0, used_gib=0, total_gib=0, error="GPU is lost")],
            GPUUseSample(20, 1, 1, True, 1024, 81920),
        ),
    ],
)
def test_a_reports_samples_reduced(samples: list[GPUSample], expected: GPUUseSample | None) -> None:
    assert sample_use(samples, threshold_percent=5) == expected


@pytest.mark.parametrize(
    ("previous", "at", "seconds"),
    [
        (None, T0, 0),  # the first report speaks for no time
        (T0, T0, 0),  # the same report twice
        (T0, T0 - timedelta(seconds=3), 0),  # an older report arriving late
        (T0, T0 + timedelta(seconds=10), 10),
        (T0 + timedelta(seconds=0.9), T0 + timedelta(seconds=10.2), 10),  # whole seconds
        (T0, T0 + timedelta(hours=1), 300),  # an hour without reports: at most max_gap
    ],
)
def test_the_time_a_report_speaks_for(
    previous: datetime | None, at: datetime, seconds: int
) -> None:
    assert report_seconds(previous, at, GAP) == seconds


def test_report_seconds_add_up_to_the_span_of_the_reports_to_a_second() -> None:
    """Reports at irregular sub-second times: the counted seconds add up to the span between
    the first and the last report, within one second, with no drift.

    broken once: report_seconds as int((at - previous).total_seconds()) lost ~0.5 s a report
    and this failed by ~50 s."""
    rng = random.Random(7)
    times = [T0 + timedelta(seconds=0.37)]
    for _ in range(100):
        times.append(times[-1] + timedelta(seconds=rng.uniform(8, 12)))
    counted = sum(report_seconds(a, b, GAP) for a, b in pairwise(times))
    span = (times[-1] - times[0]).total_seconds()
    assert abs(counted - span) < 1


def test_reports_fed_into_an_aggregate_give_the_hand_worked_figures() -> None:
    """One GPU, threshold 5 %: reports at 0, 10, 20, 30 and 3630 s (an hour's silence)."""
    reports = [
        (0, [gpu(0, used_gib=1)]),
        (10, [gpu(80, used_gib=6, processes=1)]),  # 10 s at 80 %
        (20, [gpu(3, used_gib=6, processes=1)]),  # 10 s at 3 %
        (30, [gpu(100, used_gib=7.5, processes=1)]),  # 10 s at 100 %
        (3630, [gpu(50, used_gib=2, processes=1)]),  # 300 s (the cap) at 50 %
    ]
    use = GPUUse()
    previous = None
    for second, samples in reports:
        at = T0 + timedelta(seconds=second)
        sample = sample_use(samples, 5)
        assert sample is not None
        use = merge(use, report_use(sample, report_seconds(previous, at, GAP)))
        previous = at
    assert use.reports == 5
    assert use.observed_seconds == 10 + 10 + 10 + 300
    assert use.busy_seconds == 10 + 10 + 300
    assert use.busy_gpu_seconds == 320
    assert use.peak_memory_mib == 7680
    assert use.memory_total_mib == 81920
    assert use.peak_gpus_in_use == 1
    assert not use.utilization_unknown
    assert use.measured_seconds == 330
    assert use.busy_percent == 97  # 320 / 330 = 96.97 %, rounded up
    expected = [0] * BUCKETS
    expected[0] += 10  # 3 %
    expected[10] += 300  # 50 %
    expected[16] += 10  # 80 %
    expected[19] += 10  # 100 %
    assert list(use.utilization_seconds) == expected
    assert use.p50 == 55  # 50 % falls in [50, 55)
    assert use.p95 == 85  # 310 s (94 %) at or below 55 %; 320 s (97 %) at or below 85 %
    assert use.percentile(0.99) == 100


def test_percentiles_bound_the_per_second_truth_from_above_by_at_most_one_bucket() -> None:
    """Random per-second utilisations: the histogram's percentile is never below the true one
    and at most a bucket (5 points) above it.

    broken once: percentile returning the bucket's lower edge fell below the truth."""
    rng = random.Random(11)
    for _ in range(50):
        seconds = [rng.choice([0, 0, 2, 7, 33, 64, 99, 100]) for _ in range(rng.randint(1, 200))]
        use = merge_all(report_use(GPUUseSample(u, int(u > 5), 1, False, 0, 0), 1) for u in seconds)
        for fraction in (0.5, 0.95):
            # the smallest utilisation the GPU stayed at or below for `fraction` of the time
            truth = min(
                v for v in seconds if sum(x <= v for x in seconds) >= fraction * len(seconds)
            )
            read = use.percentile(fraction)
            assert read is not None
            assert truth <= read <= truth + 5 or (truth == 100 and read == 100)


def test_merge_is_order_free() -> None:
    """The ledger adds reports per day in arrival order and the days per session: any order
    and grouping give one aggregate."""
    rng = random.Random(3)
    parts = [
        report_use(
            GPUUseSample(
                rng.choice([None, 0, 40, 100]),
                rng.randint(0, 2),
                rng.randint(0, 4),
                rng.random() < 0.2,
                rng.randint(0, 80000),
                rng.choice([10240, 81920]),
            ),
            rng.randint(0, 30),
        )
        for _ in range(40)
    ]
    whole = merge_all(parts)
    shuffled = parts[:]
    rng.shuffle(shuffled)
    assert merge_all(shuffled) == whole
    assert merge(merge_all(parts[:17]), merge_all(parts[17:])) == whole


def test_a_mig_session_has_memory_and_no_utilisation() -> None:
    sample = sample_use([gpu(None, used_gib=3, total_gib=10, processes=1)], 5)
    assert sample is not None
    use = merge_all([report_use(sample, 0), report_use(sample, 10), report_use(sample, 10)])
    assert use.utilization_unknown
    assert use.observed_seconds == 20 and use.measured_seconds == 0
    assert use.busy_percent is None and use.p50 is None and use.p95 is None
    assert use.peak_memory_mib == 3072


def test_buckets() -> None:
    assert [bucket_of(u) for u in (0, 4, 5, 94, 95, 99, 100)] == [0, 0, 1, 18, 19, 19, 19]
