"""CPU cost of the notebook extension's sampling: one report cycle (NVML samples of the server's
GPUs through unmodified pynvml, here the fake NVML; the activity decision; the POST to the
gpuhub service, here a stub in another process) run many times in a process of its own, timed
with that process's CPU clock. Printed: CPU milliseconds per cycle and the share of one core at
the default interval (10 s) and at 1 s, for 1 and 8 GPUs. Target: < 0.5 % of a core.

Run: .venv/bin/python -m benchmarks.sampler_overhead
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from spawner_ext.fakenvml import FakeGPU, FakeNVML, FakeProcess, build, environment, write_config
from spawner_ext.up import free_port

CYCLES = 2000
TARGET_PERCENT = 0.5

STUB = """
import sys
from tornado import ioloop, web
class Answer(web.RequestHandler):
    def post(self):
        self.write({"warning": None, "gpu_utilization_percent": 5, "running": True})
web.Application([(r".*", Answer)]).listen(int(sys.argv[1]), "127.0.0.1")
print("ready", flush=True)
ioloop.IOLoop.current().start()
"""

MEASURE = """
import asyncio, json, logging, os, sys, time
from spawner_ext.notebook.extension import GPUReporter, ReporterSettings

class NoKernels:
    def list_kernels(self):
        return []

async def main(cycles):
    settings = ReporterSettings.from_env(os.environ)
    reporter = GPUReporter(settings, {}, NoKernels(), logging.getLogger("bench"))
    for _ in range(50):  # warm up: NVML init, HTTP connection
        await reporter.report_once()
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        ok = await reporter.report_once()
        assert ok, reporter.state
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    print(json.dumps({"cpu": cpu, "wall": wall, "gpus": len(reporter.state.samples)}))

asyncio.run(main(int(sys.argv[1])))
"""


def measure(gpus: int, port: int, library: Path, workdir: Path) -> dict[str, float]:
    config = workdir / f"fake-nvml-{gpus}.conf"
    devices = tuple(
        FakeGPU(
            f"GPU-bench-{n}",
            "NVIDIA H100 80GB HBM3",
            80 * 2**30,
            utilization=40,
            processes=(FakeProcess(1000 + n, 2**30),),
        )
        for n in range(gpus)
    )
    write_config(config, FakeNVML(gpus=devices))
    env = {
        **os.environ,
        **environment(library, config, os.environ),
        "GPUHUB_SIMULATED_DEVICES": ",".join(d.uuid for d in devices),
        "GPUHUB_SERVICE_URL": f"http://127.0.0.1:{port}/services/gpu-usage/",
        "JUPYTERHUB_API_TOKEN": "bench",
    }
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(CYCLES)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    library = build()
    port = free_port()
    stub = subprocess.Popen(
        [sys.executable, "-c", STUB, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert stub.stdout is not None and stub.stdout.readline().strip() == "ready"
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for gpus in (1, 8):
                found = measure(gpus, port, library, Path(tmp))
                assert found["gpus"] == gpus
                per_cycle = found["cpu"] / CYCLES
                rows.append((gpus, per_cycle, found["wall"] / CYCLES))
    finally:
        stub.terminate()
        stub.wait(10)
        if stub.stdout is not None:
            stub.stdout.close()
    load = os.getloadavg()[0]
    print(
        f"Sampler overhead, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load {load:.2f}"
    )
    print(f"{CYCLES} report cycles per row (fake NVML, stub service); target < {TARGET_PERCENT} %")
    print()
    header = ["GPUs", "CPU ms per cycle", "wall ms per cycle", "CPU s per hour at 10 s"]
    header += ["% of a core at 10 s", "% at 1 s"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    for gpus, cpu, wall in rows:
        hourly = cpu * 360
        print(
            f"| {gpus} | {cpu * 1000:.3f} | {wall * 1000:.3f} | {hourly:.2f} | "
            f"{hourly / 3600 * 100:.4f} | {cpu * 100:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
