"""The last hour of a server's GPU samples, for the GPU meter's chart in JupyterLab: a ring buffer
of the samples the extension takes anyway (it never reads NVML itself). Pure: times are handed
in."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .sampler import GPUSample

SPAN = timedelta(hours=1)


@dataclass(frozen=True)
class Point:
    at: datetime
    samples: tuple[GPUSample, ...]


class SampleHistory:
    """The samples of the last `span`, oldest first. Holds at most `span / interval + 1` points
    (`interval`: the shortest time between two samples), so its memory is bounded whatever the
    clock does; older points are dropped as new ones come, and on reading."""

    def __init__(self, interval: float, span: timedelta = SPAN) -> None:
        if interval <= 0:
            raise ValueError(f"the sampling interval must be positive, not {interval}")
        self.span = span
        self._points: deque[Point] = deque(maxlen=math.ceil(span.total_seconds() / interval) + 1)

    @property
    def capacity(self) -> int:
        return self._points.maxlen or 0

    def add(self, at: datetime, samples: Sequence[GPUSample]) -> None:
        """One round of samples; a round without GPUs is not kept (nothing to draw). A time
        before the newest point's (a clock set back) starts the history again."""
        if self._points and at < self._points[-1].at:
            self._points.clear()
        if samples:
            self._points.append(Point(at, tuple(samples)))
        self._trim(at)

    def points(self, now: datetime) -> list[Point]:
        """The points of the last `span` before `now`."""
        self._trim(now)
        return list(self._points)

    def _trim(self, now: datetime) -> None:
        while self._points and now - self._points[0].at > self.span:
            self._points.popleft()

    def as_json(self, now: datetime) -> dict[str, Any]:
        """Per GPU (by UUID, in the order first seen): its name, whether it is a MIG device, its
        memory, and its points as [unix seconds, utilization or null, memory used or null]
        (null where NVML gives no utilization, a MIG device; both null for a failed read)."""
        series: dict[str, dict[str, Any]] = {}
        for point in self.points(now):
            t = round(point.at.timestamp(), 3)
            for s in point.samples:
                entry = series.get(s.uuid)
                if entry is None:
                    entry = series[s.uuid] = {
                        "uuid": s.uuid,
                        "name": s.name,
                        "is_mig": s.is_mig,
                        "memory_total": s.memory_total,
                        "points": [],
                    }
                if s.error is None:
                    entry["name"], entry["memory_total"] = s.name, s.memory_total
                    entry["points"].append([t, s.utilization, s.memory_used])
                else:
                    entry["points"].append([t, None, None])
        return {"span_seconds": int(self.span.total_seconds()), "gpus": list(series.values())}
