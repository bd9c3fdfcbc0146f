"""SIGKILL of the hub in the middle of a spawn, and a server that dies while the hub is down:
after a restart and reconciliation no time is lost or billed twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.up import find_program

from .conftest import Hub, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
TICK = 2  # seconds between reconciliations in this test's catalog


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


def sessions(hub: Hub, user: str) -> list[UsageSession]:
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession).where(UsageSession.user == user)
            return list(db.scalars(query.order_by(UsageSession.id)))
    finally:
        ledger.engine.dispose()


@pytest.mark.integration
def test_a_hub_killed_mid_spawn_keeps_one_session_for_the_server(hub: Hub) -> None:
    response = hub.spawn("ada", {"profile": "h100-single"})
    assert response.status_code == 202, response.text  # still starting
    started = wait_for(
        "the session to start billing",
        lambda: [s for s in sessions(hub, "ada") if s.started_at is not None],
        30,
        0.2,
    )
    assert hub.user("ada")["servers"][""]["ready"] is False
    hub.crash()  # SIGKILL while the server is still coming up
    hub.start()
    wait_for("ada's server", lambda: hub.user("ada")["servers"].get("", {}).get("ready"), 60)
    time.sleep(3 * TICK)  # reconciliation runs on the restarted hub
    (only,) = sessions(hub, "ada")
    assert only.id == started[0].id
    assert only.ended_at is None
    assert only.started_at == started[0].started_at
    assert only.last_seen_at is not None
    assert only.last_seen_at > only.started_at, "reconciliation sees it running"


@pytest.mark.integration
def test_a_server_that_dies_while_the_hub_is_down_is_billed_until_last_seen(hub: Hub) -> None:
    model = hub.user("ada")["servers"][""]
    pid = int(model["state"]["pid"])
    time.sleep(2 * TICK)
    before = sessions(hub, "ada")[-1]
    assert before.last_seen_at is not None
    hub.crash()
    os.killpg(pid, signal.SIGKILL)  # the server dies while nobody watches
    died = time.time()
    time.sleep(3 * TICK)  # downtime that must not be billed
    hub.start()
    closed = wait_for(
        "the session to be closed",
        lambda: [s for s in sessions(hub, "ada") if s.id == before.id and s.ended_at],
        60,
        0.5,
    )[0]
    assert closed.end_reason in ("reconciled", "stopped", "node-lost")
    assert closed.ended_at is not None
    assert closed.ended_at.timestamp() <= died, "the hub's downtime is not billed"
    assert closed.ended_at >= before.last_seen_at, "nothing seen running is lost"
    assert closed.gpu_seconds == int((closed.ended_at - closed.started_at).total_seconds())
    assert hub.user("ada")["servers"] == {}
