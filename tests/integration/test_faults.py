"""Money is counted once, whatever crashes: across more than 100 spawn/stop cycles of real
servers, the hub and the gpuhub service are SIGKILLed at seeded random moments. Afterwards every
server process that ran has exactly its lifetime billed (to within one reconcile tick), in
sessions that do not overlap, and nothing else is billed.

The truth comes from the machine, not from the hub: a watcher thread reads /proc every 0.1 s and
records each server process's start (from the kernel) and when it was last seen alive."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.local.processes import process_start_time
from tests.faultdriver import (
    Lifetime,
    check_billing,
    report,
    run_cycles,
    service_pid,
    service_ticked_since,
)

from .conftest import Hub, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
TICK = 3  # seconds between reconciliations in this test's catalog
START_GRACE = 20  # seconds; orphans (servers the killed hub never recorded) end after this
SEED = 20261201
WORKERS = {
    "ada": {"profile": "h100-single"},
    "grace": {"profile": "h100-single"},
    "lin": {"profile": "h100-single", "team": "vision"},
}
CYCLES_PER_WORKER = 34  # 102 spawn/stop cycles in all
SLACK = 2.0  # seconds: the watcher's poll, whole-second billing, a loaded machine's latency
LEAN_SERVER = {  # jupyter_server with JupyterHub's extension only: the same server, started faster
    "ServerApp": {
        "jpserver_extensions": {
            "jupyterlab": False,
            "jupyter_lsp": False,
            "notebook_shim": False,
            "jupyter_server_terminals": False,
        }
    }
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("faults")
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    text = text.replace("metering:\n", f"metering:\n  start_grace: {START_GRACE}s\n", 1)
    (workdir / "catalog.yaml").write_text(text)
    (workdir / "jupyter").mkdir()
    (workdir / "jupyter" / "jupyter_server_config.json").write_text(json.dumps(LEAN_SERVER))
    hub = Hub(workdir, "6xh100-80gb", "--config", str(workdir / "catalog.yaml"))
    hub.extra_config.write_text(
        hub.extra_config.read_text()
        + "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}\n"
        + f"c.Spawner.environment = {{'JUPYTER_CONFIG_DIR': {str(workdir / 'jupyter')!r}}}\n"
        + "c.Spawner.default_url = '/api'\n"
    )
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


class Watcher(threading.Thread):
    """Records every server process of one hub (session leaders carrying GPUHUB_SERVER)."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(daemon=True)
        port = (hub.state_dir / "hub-port").read_text().strip()
        self.marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{port}/hub/api".encode()
        self.seen: dict[int, Lifetime] = {}
        self.problems: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    self._look(int(entry.name), entry, now)
            time.sleep(0.1)

    def _look(self, pid: int, entry: Path, now: float) -> None:
        known = self.seen.get(pid)
        if known is not None:
            if _alive(pid):
                started = process_start_time(pid)
                if started and abs(started.timestamp() - known.started) > 1:
                    self.problems.append(f"pid {pid} was reused by another server")
                known.last_seen = now
            return
        with contextlib.suppress(OSError):
            env = (entry / "environ").read_bytes()
            if self.marker not in env or b"GPUHUB_SERVER=" not in env:
                return
            if os.getpgid(pid) != pid or not _alive(pid):
                return  # a kernel or other child of a server
            started = process_start_time(pid)
            if started is not None:
                self.seen[pid] = Lifetime(f"local:{pid}", started.timestamp(), now)

    def alive(self) -> list[int]:
        return [pid for pid in self.seen if _alive(pid)]

    def stop(self) -> list[Lifetime]:
        wait_for("every server to end", lambda: not self.alive(), START_GRACE + 90, 0.5)
        time.sleep(0.5)
        self.done.set()
        self.join()
        assert self.problems == []
        return list(self.seen.values())


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def ready(hub: Hub) -> bool:
    with contextlib.suppress(requests.RequestException):
        return hub.api("GET", "/").status_code == 200
    return False


def sessions_since(hub: Hub, since: datetime) -> list[UsageSession]:
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession).where(UsageSession.requested_at >= since)
            return list(db.scalars(query.order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()


@pytest.mark.integration
@pytest.mark.faults
def test_hub_and_service_sigkills_at_random_moments_bill_every_server_exactly_once(
    hub: Hub,
) -> None:
    def kill_hub() -> float:
        killed = time.monotonic()
        hub.crash()
        hub.start()
        wait_for("the hub to serve again", lambda: ready(hub), 120, 0.1)
        return time.monotonic() - killed

    def kill_service() -> float:
        pid = wait_for("the gpuhub service", lambda: service_pid(hub.state_dir), 120, 0.2)
        killed, moment = time.monotonic(), datetime.now(UTC).isoformat()
        os.kill(pid, signal.SIGKILL)
        wait_for("a new service to tick", lambda: service_ticked_since(hub.url, moment), 120, 0.2)
        return time.monotonic() - killed

    since = datetime.now(UTC)
    watcher = Watcher(hub)
    watcher.start()
    outcome = run_cycles(
        hub,
        WORKERS,
        CYCLES_PER_WORKER,
        {"hub": kill_hub, "service": kill_service},
        random.Random(SEED),
    )
    lifetimes = watcher.stop()
    time.sleep(3 * TICK)  # the last closes are written, by the hub or by reconciliation
    figures = check_billing(sessions_since(hub, since), lifetimes, TICK + SLACK)
    assert all(len(times) >= 2 for times in outcome.kills.values()), outcome.kills
    print(report("local mode", outcome, figures, TICK))
