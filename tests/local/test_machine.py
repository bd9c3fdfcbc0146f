"""A restarted local hub rebuilds its GPU holdings from every live server process before it
hands out a GPU, including servers whose state JupyterHub never recorded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spawner_ext.catalog import load_catalog
from spawner_ext.local.allocator import NoFreeGPUs
from spawner_ext.local.inventory import parse_simulation
from spawner_ext.local.machine import LocalMachine
from spawner_ext.local.processes import live_servers
from spawner_ext.wire import ServerEnv, server_env

CATALOG = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")
SPEC = "2xh100-80gb"
LOG = logging.getLogger("test")


def test_holdings_of_live_servers_are_restored_before_any_claim() -> None:
    uuids = [d.uuid for d in parse_simulation(SPEC, CATALOG)]
    live = [(4242, ServerEnv("ada/", 7, (uuids[0],)))]
    machine = LocalMachine(CATALOG, SPEC, LOG, processes=lambda: live)
    allocator = machine.allocator(CATALOG)
    assert [d.uuid for d in allocator.holdings()["ada/"]] == [uuids[0]]
    assert [d.uuid for d in allocator.claim("lin/", "h100-80gb", 1)] == [uuids[1]]
    with pytest.raises(NoFreeGPUs):
        allocator.claim("grace/", "h100-80gb", 1)


def test_a_live_server_holding_an_unknown_device_is_reported_not_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = [(4242, ServerEnv("ada/", 7, ("GPU-sim-gone",)))]
    with caplog.at_level(logging.ERROR):
        machine = LocalMachine(CATALOG, SPEC, LOG, processes=lambda: live)
    assert machine.rebuilt == {}
    assert "GPU-sim-gone" in caplog.text


def test_live_server_processes_are_found_by_their_environment() -> None:
    uuids = tuple(d.uuid for d in parse_simulation(SPEC, CATALOG))
    hub = "http://127.0.0.1:1/hub/api"
    env = {**os.environ, **server_env(None, "ada/train", "3", uuids[:1]), "JUPYTERHUB_API_URL": hub}
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], env=env, start_new_session=True
    )
    try:
        found = dict(live_servers(hub))
        assert found[child.pid] == ServerEnv("ada/train", "3", uuids[:1], hub_api_url=hub)
        assert child.pid not in dict(live_servers("http://127.0.0.1:2/hub/api")), "another hub's"
    finally:
        child.kill()
        child.wait()
    assert child.pid not in dict(live_servers())
