"""Samples of exactly the GPUs a server holds, read through NVML (pynvml), and what they say
about GPU activity.

`Sampler.sample` is the only I/O, through the NVML object it is given (the pynvml module unless
a test passes another); `gpu_activity` is pure."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from .visible import Visible


@dataclass(frozen=True)
class GPUSample:
    """One GPU (or MIG device) at one moment."""

    uuid: str
    name: str
    is_mig: bool
    utilization: int | None
    """Percent of the last sample period a kernel ran; None where NVML cannot tell (MIG
    devices, a GPU in MIG mode) or the query failed."""
    memory_used: int
    memory_total: int
    processes: int
    """Compute processes on it."""
    error: str | None = None
    """Why the device could not be read (e.g. 'GPU is lost'); the other fields are then 0."""


class NVMLUnavailable(RuntimeError):
    """NVML cannot be used at all (no library, no driver); the message says which."""


class Activity(enum.StrEnum):
    """What a server's GPUs are doing, as far as NVML tells."""

    BUSY = "busy"
    """A GPU is above the utilization threshold."""
    IDLE = "idle"
    """Every GPU is at or below the threshold (a MIG device: has no compute process)."""
    UNKNOWN = "unknown"
    """Some GPU cannot be judged: a MIG device with processes on it, or a failed read."""
    NONE = "none"
    """The server holds no GPU."""


def gpu_activity(samples: Sequence[GPUSample], threshold_percent: int) -> Activity:
    """BUSY if any GPU is above `threshold_percent`; IDLE only if every GPU is known idle.
    NVML gives no utilization for MIG devices: one with no compute process is idle (nothing
    runs there), one with processes is UNKNOWN, never idle."""
    if not samples:
        return Activity.NONE
    states = []
    for s in samples:
        if s.error is not None:
            states.append(Activity.UNKNOWN)
        elif s.utilization is not None:
            states.append(Activity.BUSY if s.utilization > threshold_percent else Activity.IDLE)
        else:  # MIG: processes are all NVML tells
            states.append(Activity.IDLE if s.processes == 0 else Activity.UNKNOWN)
    if Activity.BUSY in states:
        return Activity.BUSY
    if Activity.UNKNOWN in states:
        return Activity.UNKNOWN
    return Activity.IDLE


class Sampler:
    """Reads the server's GPUs. NVML is initialised on first use and again after a failure;
    `sample` raises NVMLUnavailable while the library or driver is missing."""

    def __init__(self, visible: Visible, nvml: Any = pynvml) -> None:
        self.visible = visible
        self.nvml = nvml
        self._initialised = False

    def _init(self) -> None:
        if self._initialised:
            return
        try:
            self.nvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NVMLUnavailable(f"NVML cannot be initialised: {exc}") from None
        self._initialised = True

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(pynvml.NVMLError):
                self.nvml.nvmlShutdown()

    def _handles(self) -> list[tuple[str, Any]]:
        """(selector, handle or the NVMLError finding it) for each visible device."""
        nvml = self.nvml
        selectors: Sequence[str] = self.visible.selectors
        if self.visible.every:
            selectors = [str(i) for i in range(nvml.nvmlDeviceGetCount())]
        found: list[tuple[str, Any]] = []
        for selector in selectors:
            try:
                if selector.isdigit():
                    handle = nvml.nvmlDeviceGetHandleByIndex(int(selector))
                else:
                    handle = nvml.nvmlDeviceGetHandleByUUID(selector)
            except pynvml.NVMLError as exc:
                handle = exc
            found.append((selector, handle))
        return found

    def sample(self) -> list[GPUSample]:
        if not self.visible.selectors and not self.visible.every:
            return []
        self._init()
        try:
            handles = self._handles()
        except pynvml.NVMLError as exc:  # the count itself failed: start again next time
            self.close()
            raise NVMLUnavailable(f"NVML does not answer: {exc}") from None
        return [self._read(selector, handle) for selector, handle in handles]

    def _read(self, selector: str, handle: Any) -> GPUSample:
        if isinstance(handle, pynvml.NVMLError):
            return _failed(selector, handle)
        nvml = self.nvml
        try:
            uuid = nvml.nvmlDeviceGetUUID(handle)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            processes = len(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            is_mig = bool(_value(nvml.nvmlDeviceIsMigDeviceHandle(handle)))
        except pynvml.NVMLError as exc:
            return _failed(selector, exc)
        utilization: int | None = None
        if not is_mig:
            try:
                utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError_NotSupported:
                utilization = None  # a GPU in MIG mode
            except pynvml.NVMLError as exc:
                return _failed(selector, exc)
        return GPUSample(
            uuid=_text(uuid),
            name=_text(name),
            is_mig=is_mig,
            utilization=utilization,
            memory_used=int(memory.used),
            memory_total=int(memory.total),
            processes=processes,
        )


def _failed(selector: str, error: Exception) -> GPUSample:
    return GPUSample(selector, "", selector.startswith("MIG-"), None, 0, 0, 0, error=str(error))


def _value(answer: Any) -> int:
    """pynvml returns some integers as ctypes values."""
    return int(getattr(answer, "value", answer))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
