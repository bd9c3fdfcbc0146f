"""On a real GPU (marked `gpu`; skipped where NVML finds none): the extension's sampler reads
every GPU and MIG device as `nvidia-smi` lists them, and the GPU meter's data path (a report
cycle of the real extension, its ring buffer and what JupyterLab is served) carries them, with
the service's answer from a real HTTP receiver in this process."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pynvml
import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from spawner_ext.notebook.extension import GPUReporter, ReporterSettings
from spawner_ext.notebook.sampler import Sampler
from spawner_ext.notebook.visible import Visible

pytestmark = pytest.mark.gpu

MIB = 2**20


@pytest.fixture(scope="module")
def gpus() -> Iterator[list[str]]:
    """The UUIDs of this machine's GPUs, by NVML; skips without any."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML finds no GPU here ({exc})")
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            pytest.skip("NVML finds no GPU here")
        uuids = [
            _text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(count)
        ]
        yield uuids
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def mig_devices() -> list[str]:
    """The UUIDs of the MIG devices of GPUs in MIG mode (none where MIG is off)."""
    found = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError:
            continue  # a GPU without MIG
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            continue
        for n in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, n)
            except pynvml.NVMLError:
                continue
            found.append(_text(pynvml.nvmlDeviceGetUUID(mig)))
    return found


def smi_gpus() -> dict[str, tuple[str, int]]:
    """nvidia-smi's own list: UUID -> (name, total memory in MiB)."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not installed: nothing to compare with")
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line]
    return {uuid: (name, int(total)) for uuid, name, total in rows}


def test_the_sampler_reads_every_gpu_as_nvidia_smi_lists_it(gpus: list[str]) -> None:
    samples = Sampler(Visible(every=True)).sample()
    listed = smi_gpus()
    assert [s.uuid for s in samples] == gpus
    for s in samples:
        assert s.error is None, s
        name, total_mib = listed[s.uuid]
        assert (s.name, s.memory_total // MIB) == (name, total_mib)
        assert 0 <= s.memory_used <= s.memory_total
        assert s.utilization is None or 0 <= s.utilization <= 100
        assert not s.is_mig


def test_mig_devices_show_memory_and_no_utilization(gpus: list[str]) -> None:
    migs = mig_devices()
    if not migs:
        pytest.skip("no GPU here has MIG enabled")
    samples = Sampler(Visible(selectors=tuple(migs))).sample()
    for s in samples:
        assert s.error is None, s
        assert s.is_mig and s.utilization is None, "NVML gives no utilization for a MIG device"
        assert s.memory_total > 0 and 0 <= s.memory_used <= s.memory_total
        assert "MIG" in s.name, s.name


class Answer(web.RequestHandler):
    """The service's answer, with the session part the meter shows."""

    def post(self) -> None:
        self.write({"running": True, "warning": None, "budget": None, "session": SESSION})


SESSION = {"profile": "h100-single", "price_per_hour": 4.1, "cost": 0.5, "deadlines": []}


class NoKernels:
    def list_kernels(self) -> list[Any]:
        return []


async def test_the_meters_data_path_carries_the_real_gpus(gpus: list[str]) -> None:
    sock, port = bind_unused_port()
    server = HTTPServer(web.Application([(r".*", Answer)]))
    server.add_sockets([sock])
    settings = ReporterSettings(
        service_url=f"http://127.0.0.1:{port}/services/gpu-usage/",
        token="test",
        server_name="",
        interval=10,
        visible=Visible(every=True),
    )
    clock = [datetime(2026, 12, 10, 12, 0, tzinfo=UTC)]
    reporter = GPUReporter(settings, {}, NoKernels(), _log(), clock=lambda: clock[0])
    try:
        for _ in range(3):
            assert await reporter.report_once(), reporter.state
            clock[0] += timedelta(seconds=10)
    finally:
        server.stop()
        reporter.client.close()
        reporter.sampler.close()
    status = reporter.state.as_json()
    assert [g["uuid"] for g in status["gpus"]] == gpus
    assert status["session"] == SESSION
    history = reporter.history.as_json(datetime(2026, 12, 10, 12, 0, 30, tzinfo=UTC))
    assert [g["uuid"] for g in history["gpus"]] == gpus
    for series in history["gpus"]:
        assert [p[0] for p in series["points"]] == [1796904000.0, 1796904010.0, 1796904020.0]
        assert all(p[2] is not None and p[2] <= series["memory_total"] for p in series["points"])


def _log() -> Any:
    import logging

    return logging.getLogger("tests.meter")
