"""CPU cost of the notebook extension's sampling: one report cycle (NVML samples of the server's
GPUs through unmodified pynvml, here the fake NVML; the activity decision; the POST to the
gpuhub service, here a stub in another process) run many times in a process of its own, timed
with that process's CPU clock. Printed: CPU milliseconds per cycle and the share of one core at
the default interval (10 s) and at 1 s, for 1 and 8 GPUs. Target: < 0.5 % of a core.

Then the GPU meter's cost (`--no-meter` skips it):
- per open JupyterLab page, notebook side: the page's requests per minute (the status poll it
  shares with the culling warning; the history while the panel is open) and the server's CPU per
  request: the extension's own status and history bodies (a full hour of samples) served by
  tornado in a process of its own, whose CPU clock is read before and after (jupyter_server's
  authentication is not in it);
- the service's cost of serving 1,000 open meters: the meter asks the service nothing (its
  figures ride on the answer to the reports each server sends anyway, every 10 s); what it adds
  to each answer is `session_body` and a read of the team's budget state at most every 10 s per
  team, both timed here on a SQLite ledger with 1,000 running sessions in 10 teams.
Targets: < 0.5 % of a core per page, < 5 % of a core for the service at 1,000 meters.

Run: .venv/bin/python -m benchmarks.sampler_overhead
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert

from spawner_ext.catalog import load_catalog
from spawner_ext.clock import utcnow
from spawner_ext.fakenvml import FakeGPU, FakeNVML, FakeProcess, build, environment, write_config
from spawner_ext.ledger.budgets import team_budget_state
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.models import SessionGPUUse, UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.policy.identity import Identity
from spawner_ext.service.activity_api import HINT_READ_EVERY, SessionHints, session_body
from spawner_ext.up import free_port

CYCLES = 2000
TARGET_PERCENT = 0.5
REQUESTS = 500
"""Meter requests per row (status, history)."""
SERVICE_CALLS = 2000
SERVICE_TARGET_PERCENT = 5.0
METERS = 1000
TEAMS = 10
POLL_SECONDS = 15
"""The page's status poll (labextension/src/index.ts POLL_MS), and the panel's history poll."""
REPORT_SECONDS = 10
HINT_SECONDS = int(HINT_READ_EVERY.total_seconds())  # a session's hint, at most once a minute
ROOT = Path(__file__).parents[1]

PAGE_SERVER = """
import json, logging, sys, time
from datetime import UTC, datetime, timedelta
from tornado import ioloop, web
from spawner_ext.notebook.extension import GPUReporter, ReporterSettings
from spawner_ext.notebook.sampler import Activity, GPUSample
from spawner_ext.notebook.visible import Visible

gpus = int(sys.argv[2])
settings = ReporterSettings("http://127.0.0.1:9/", "t", "", 10.0, Visible())
now = datetime.now(UTC)
reporter = GPUReporter(settings, {}, None, logging.getLogger("bench"), clock=lambda: now)
samples = [
    GPUSample(f"GPU-{n}", "NVIDIA H100 80GB HBM3", False, 40 + n, 2**34, 80 * 2**30, 1)
    for n in range(gpus)
]
for k in range(361):  # a full hour, every 10 s
    reporter.history.add(now - timedelta(seconds=3600 - 10 * k), samples)
reporter.state.samples, reporter.state.activity = tuple(samples), Activity.BUSY
reporter.state.session = json.loads(sys.argv[3])

class Status(web.RequestHandler):  # as the extension's handlers build their bodies
    def get(self):
        self.finish(json.dumps({"enabled": True, **reporter.state.as_json()}))

class History(web.RequestHandler):
    def get(self):
        body = {"enabled": True, **reporter.history.as_json(reporter.clock())}
        self.finish(json.dumps(body, separators=(",", ":")))

class CPU(web.RequestHandler):
    def get(self):
        self.finish({"cpu": time.process_time()})

web.Application([("/status", Status), ("/history", History), ("/cpu", CPU)]).listen(
    int(sys.argv[1]), "127.0.0.1"
)
print("ready", flush=True)
ioloop.IOLoop.current().start()
"""

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


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


def page_costs(gpus: int, session: dict[str, object]) -> dict[str, tuple[float, int]]:
    """Path -> (server CPU seconds per request, body bytes), for a page of a server with
    `gpus` GPUs and a full hour of history."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", PAGE_SERVER, str(port), str(gpus), json.dumps(session)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    found = {}
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        base = f"http://127.0.0.1:{port}"
        for path in ("/status", "/history"):
            size = len(_get(base + path))
            for _ in range(20):
                _get(base + path)  # warm up
            before = json.loads(_get(base + "/cpu"))["cpu"]
            for _ in range(REQUESTS):
                _get(base + path)
            after = json.loads(_get(base + "/cpu"))["cpu"]
            found[path] = ((after - before) / REQUESTS, size)
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    return found


def service_costs(workdir: Path) -> tuple[float, float, float, dict[str, object]]:
    """(CPU s per session_body, CPU s per team budget read, CPU s per right-sizing hint worked
    out afresh, one session body) on a SQLite ledger with METERS running sessions in TEAMS
    teams, each with an hour of measured GPU use."""
    catalog = load_catalog(ROOT / "hub_config" / "catalog.yaml")
    url = f"sqlite:///{workdir / 'meter-ledger.sqlite'}"
    upgrade(url)
    ledger = Ledger.open(url)
    now = utcnow()
    teams = [f"team{n}" for n in range(TEAMS)]
    rows = [
        {
            "user": f"u{n:05d}",
            "team": teams[n % TEAMS],
            "server_name": "",
            "profile": "h100-single",
            "gpu_type": "h100-80gb",
            "gpu_count": 1,
            "price_per_hour": Decimal("4.10"),
            "currency": "USD",
            "requested_at": now - timedelta(hours=2),
            "started_at": now - timedelta(hours=2),
            "last_seen_at": now,
            "catalog_version": "bench",
        }
        for n in range(METERS)
    ]
    with ledger.engine.begin() as db:
        db.execute(insert(UsageSession), rows)
    sessions = ledger.open_sessions()
    assert len(sessions) == METERS
    for s in sessions:  # charged to a team the catalog knows, with a budget and a stop stage
        s.team = "vision"
    state = team_budget_state(ledger, "team0")
    body = session_body(sessions[0], catalog, state, None, now)
    start = time.process_time()
    for n in range(SERVICE_CALLS):
        session_body(sessions[n % METERS], catalog, state, None, now)
    per_body = (time.process_time() - start) / SERVICE_CALLS
    reads = SERVICE_CALLS // 10
    start = time.process_time()
    for n in range(reads):
        team_budget_state(ledger, teams[n % TEAMS])
    per_read = (time.process_time() - start) / reads
    with ledger.engine.begin() as db:  # an hour measured, 5 % busy, 6 GiB at most, per session
        db.execute(
            insert(SessionGPUUse),
            [
                {
                    "session_id": s.id,
                    "day": now.date(),
                    "reports": 360,
                    "observed_seconds": 3600,
                    "busy_seconds": 180,
                    "busy_gpu_seconds": 180,
                    "utilization_unknown": False,
                    "peak_memory_mib": 6144,
                    "memory_total_mib": 81559,
                    "peak_gpus_in_use": 1,
                    **{f"util_{5 * n:02d}": 3420 if n == 0 else 0 for n in range(20)},
                    "util_95": 180,
                }
                for s in sessions
            ],
        )
    who = Identity("u00000", frozenset({"vision"}))
    hints_calls = SERVICE_CALLS // 4
    start = time.process_time()
    for n in range(hints_calls):  # a fresh cache each time: the read and the rule, every call
        SessionHints().hint(ledger, catalog, sessions[n % METERS], who, now)
    per_hint = (time.process_time() - start) / hints_calls
    ledger.engine.dispose()
    return per_body, per_read, per_hint, body


def meter(workdir: Path) -> None:
    per_body, per_read, per_hint, session = service_costs(workdir)
    print()
    print(f"GPU meter, per open JupyterLab page (a full hour of history; {REQUESTS} requests)")
    print(f"Target < {TARGET_PERCENT} % of a core")
    print()
    print("| GPUs | request | per minute | server CPU ms per request | body bytes | % of a core |")
    print("|---|---|---|---|---|---|")
    per_minute = 60 / POLL_SECONDS
    for gpus in (1, 8):
        costs = page_costs(gpus, session)
        total = 0.0
        for path, label in (("/status", "status (always)"), ("/history", "history (panel open)")):
            cpu, size = costs[path]
            share = cpu * per_minute / 60 * 100
            total += share
            print(
                f"| {gpus} | {label} | {per_minute:.0f} | {cpu * 1000:.3f} | {size} | {share:.4f} |"
            )
        print(f"| {gpus} | both, panel open | {2 * per_minute:.0f} | | | {total:.4f} |")
    reports = METERS / REPORT_SECONDS
    reads = TEAMS / REPORT_SECONDS
    hints = METERS / HINT_SECONDS
    service = (reports * per_body + reads * per_read + hints * per_hint) * 100
    print()
    print(
        f"Service, {METERS} open meters on {METERS} servers in {TEAMS} teams (SQLite ledger); "
        f"target < {SERVICE_TARGET_PERCENT} % of a core"
    )
    print()
    print("| work | per second | CPU ms each | % of a core |")
    print("|---|---|---|---|")
    print("| meter requests to the service | 0 | | 0 |")
    print(
        f"| session_body in each report's answer | {reports:.0f} | {per_body * 1000:.3f} | "
        f"{reports * per_body * 100:.3f} |"
    )
    print(
        f"| team budget reads (one per team per {REPORT_SECONDS} s) | {reads:.0f} | "
        f"{per_read * 1000:.3f} | {reads * per_read * 100:.3f} |"
    )
    print(
        f"| right-sizing hints (one per server per {HINT_SECONDS} s: a GPU-use read and the rule) "
        f"| {hints:.1f} | {per_hint * 1000:.3f} | {hints * per_hint * 100:.3f} |"
    )
    print(f"| total | | | {service:.3f} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-meter", action="store_true", help="skip the GPU meter's figures")
    args = parser.parse_args(argv)
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
    if not args.no_meter:
        with tempfile.TemporaryDirectory() as tmp:
            meter(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
