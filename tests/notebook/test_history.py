"""The GPU meter's ring buffer: the last hour of the samples the extension takes, bounded in
memory, per GPU for the chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from spawner_ext.notebook.history import SampleHistory
from spawner_ext.notebook.sampler import GPUSample

T0 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
GIB = 2**30


def gpu(utilization: int | None = 40, used: int = GIB, uuid: str = "GPU-1") -> GPUSample:
    return GPUSample(uuid, "NVIDIA H100 80GB HBM3", False, utilization, used, 80 * GIB, 1)


def test_it_keeps_exactly_the_last_hour_every_ten_seconds() -> None:
    """broken once: `_trim` with `>=` (the point exactly an hour old dropped), and the
    capacity without its + 1: each failed."""
    history = SampleHistory(interval=10)
    for n in range(721):  # two hours, every 10 s
        history.add(T0 + timedelta(seconds=10 * n), [gpu(n % 100)])
    now = T0 + timedelta(seconds=7200)
    points = history.points(now)
    # independently: the samples at 3600..7200 s, every 10 s, both ends included
    assert [p.at for p in points] == [T0 + timedelta(seconds=s) for s in range(3600, 7201, 10)]
    assert len(points) == 361 == history.capacity
    assert history.points(now + timedelta(minutes=30))[0].at == T0 + timedelta(seconds=5400)
    assert history.points(now + timedelta(hours=2)) == [], "a server that stopped sampling"


def test_memory_is_bounded_whatever_the_clock_does() -> None:
    """Samples faster than the interval (a test's clock, a burst) never grow it past its
    capacity; a clock set back starts it again."""
    history = SampleHistory(interval=10)
    for n in range(5000):
        history.add(T0 + timedelta(milliseconds=n), [gpu()])
    assert len(history.points(T0 + timedelta(seconds=5))) == 361
    history.add(T0 - timedelta(days=1), [gpu(7)])
    assert [p.samples[0].utilization for p in history.points(T0 - timedelta(days=1))] == [7]
    with pytest.raises(ValueError, match="must be positive"):
        SampleHistory(interval=0)


def test_the_chart_gets_one_series_per_gpu_with_gaps_for_mig_and_failed_reads() -> None:
    history = SampleHistory(interval=10)
    mig = GPUSample("MIG-2", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", True, None, 3 * GIB, 10 * GIB, 1)
    lost = GPUSample("GPU-1", "", False, None, 0, 0, 0, error="GPU is lost")
    history.add(T0, [gpu(55, 2 * GIB), mig])
    history.add(T0 + timedelta(seconds=10), [lost, mig])
    history.add(T0 + timedelta(seconds=20), [])  # no GPU this round: nothing kept
    body = history.as_json(T0 + timedelta(seconds=20))
    t0 = T0.timestamp()
    assert body == {
        "span_seconds": 3600,
        "gpus": [
            {
                "uuid": "GPU-1",
                "name": "NVIDIA H100 80GB HBM3",
                "is_mig": False,
                "memory_total": 80 * GIB,
                "points": [[t0, 55, 2 * GIB], [t0 + 10, None, None]],
            },
            {
                "uuid": "MIG-2",
                "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb",
                "is_mig": True,
                "memory_total": 10 * GIB,
                "points": [[t0, None, 3 * GIB], [t0 + 10, None, 3 * GIB]],
            },
        ],
    }
