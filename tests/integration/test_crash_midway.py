"""SIGKILL of the hub in the middle of a spawn, and a server that dies while the hub is down:
after a restart and reconciliation no time is lost or billed twice. The server's life is
measured by the test (a watcher scanning /proc, and the moment the test kills it), not read
from the ledger or from what billing reads. With every close billing its seconds twice (broken on
purpose in the hub, 2026-12-05) the second test failed: 60 GPU-seconds for a 32.5 s life."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawner_ext.up import find_program
from tests.faultdriver import ProcessWatcher

from .conftest import Hub, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
TICK = 2  # seconds between reconciliations in this test's catalog
SLACK = 2  # seconds: the watcher's scans, whole-second billing, a loaded machine's latency


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("crash")
    catalog = workdir / "catalog.yaml"
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    catalog.write_text(text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s"))
    hub = Hub(workdir, "2xh100-80gb", "--config", str(catalog))
    singleuser = find_program("jupyterhub-singleuser")
    # Servers take a few seconds to come up, so the hub can be killed while one is starting.
    hub.extra_config.write_text(
        hub.extra_config.read_text()
        + "\nc.GPULocalSpawner.cmd = ['/bin/sh', '-c', 'sleep 4; exec \"$0\" \"$@\"', "
        + repr(singleuser)
        + "]\n"
        # Answer the spawn request at once (202) instead of waiting up to 10 s for the server.
        + "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}\n"
    )
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


@pytest.mark.integration
def test_a_hub_killed_mid_spawn_keeps_one_session_for_the_server(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    response = hub.spawn("ada", {"profile": "h100-single"})
    assert response.status_code == 202, response.text  # still starting
    started = wait_for(
        "the session to start billing",
        lambda: [s for s in hub.sessions("ada") if s.started_at is not None],
        30,
        0.2,
    )
    assert hub.user("ada")["servers"][""]["ready"] is False
    (pid,) = wait_for("ada's server process", watcher.alive, 30, 0.1)
    hub.crash()  # SIGKILL while the server is still coming up
    hub.start()
    restarted = time.time()
    wait_for("ada's server", lambda: hub.user("ada")["servers"].get("", {}).get("ready"), 60)
    assert hub.user("ada")["servers"][""]["state"]["pid"] == pid, "the same process"
    time.sleep(3 * TICK)  # reconciliation runs on the restarted hub
    (only,) = hub.sessions("ada")
    assert only.id == started[0].id
    assert only.ended_at is None
    life = watcher.life_of(pid)
    assert life is not None and only.started_at is not None
    assert abs(only.started_at.timestamp() - life.started) <= SLACK, "billed from its start"
    assert only.last_seen_at is not None
    assert only.last_seen_at.timestamp() > restarted, "reconciliation sees it running"


@pytest.mark.integration
def test_a_server_that_dies_while_the_hub_is_down_is_billed_until_last_seen(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    model = hub.user("ada")["servers"][""]
    pid = int(model["state"]["pid"])
    time.sleep(2 * TICK)
    before = hub.sessions("ada")[-1]
    hub.crash()
    os.killpg(pid, signal.SIGKILL)  # the server dies while nobody watches
    died = time.time()
    time.sleep(3 * TICK)  # downtime that must not be billed
    hub.start()
    closed = wait_for(
        "the session to be closed",
        lambda: [s for s in hub.sessions("ada") if s.id == before.id and s.ended_at],
        60,
        0.5,
    )[0]
    assert closed.end_reason in ("reconciled", "stopped", "node-lost")
    assert closed.ended_at is not None
    assert closed.ended_at.timestamp() <= died, "the hub's downtime is not billed"
    assert closed.ended_at.timestamp() >= died - TICK - SLACK, "at most a tick is lost"
    life = watcher.life_of(pid)
    assert life is not None
    lived = died - life.started  # from when /proc first showed it until the test killed it
    assert closed.gpu_seconds is not None
    assert lived - TICK - SLACK <= closed.gpu_seconds <= lived + SLACK, (closed.gpu_seconds, lived)
    assert hub.user("ada")["servers"] == {}
