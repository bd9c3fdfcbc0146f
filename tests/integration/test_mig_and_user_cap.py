"""A MIG-slice profile and the per-user cap, the way a user meets them: `gpuhub up` with simulated
MIG devices (two 1g.10gb slices of a simulated A100, and an L4) and the example catalog, spawned
through the hub's REST API. Team `teaching` (tutor) may hold one GPU per user.

The tests share one hub and run in file order: tutor's slice runs, then a second server is refused
by the cap, then admitted once the first stops."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.faultdriver import ProcessWatcher

from .conftest import Hub, environ_of, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
SLICES = ["MIG-sim-00000000-a100-1g10gb", "MIG-sim-00000001-a100-1g10gb"]
CAP_MESSAGE = "you may hold 1 GPUs at once in team 'teaching' and hold 1; stop a server first"
SLACK = 2  # seconds: the watcher's scans, whole-second billing, the hub's look at a stopped server


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("mig")
    catalog = workdir / "catalog.yaml"
    catalog.write_text((ROOT / "hub_config" / "catalog.yaml").read_text())
    hub = Hub(workdir, "1xl4,2xa100-1g10gb", "--config", str(catalog))
    hub.extra_config.write_text(
        hub.extra_config.read_text()
        + "c.JupyterHub.allow_named_servers = True\n"
        + 'c.Spawner.environment = {"GPUHUB_SAMPLE_SECONDS": "1"}\n'
    )
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


def servers_running(watcher: ProcessWatcher) -> dict[str, int]:
    """Server key (user/name) -> pid of every server process alive now."""
    return {environ_of(pid)["GPUHUB_SERVER"]: pid for pid in watcher.alive()}


def gpu_status(hub: Hub, user: str, server: str = "") -> dict[str, Any]:
    """What the server's extension reports of its GPUs, read through the proxy."""
    path = f"user/{user}/{server}/gpuhub/status" if server else f"user/{user}/gpuhub/status"
    response = requests.get(
        f"{hub.url}{path}",
        headers={"Authorization": f"token {hub.token_for(user)}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.integration
def test_a_mig_slice_profile_gets_one_slice_billed_at_the_slice_price(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    model = hub.start_server("tutor", {"profile": "mig-slice"})
    assert model["state"]["gpuhub_devices"] == [SLICES[0]]
    pid = servers_running(watcher)["tutor/"]
    assert model["state"]["pid"] == pid
    env = environ_of(pid)
    assert env["GPUHUB_SIMULATED_DEVICES"] == SLICES[0]
    assert env["GPUHUB_PROFILE"] == "mig-slice"
    assert env["GPUHUB_TEAM"] == "teaching"
    # The server samples its own device through the fake NVML: one MIG device, 10 GB.
    status = wait_for("the server's first GPU sample", lambda: gpu_status(hub, "tutor")["gpus"], 60)
    assert [(g["uuid"], g["is_mig"], g["error"]) for g in status] == [(SLICES[0], True, None)]
    assert status[0]["memory_total"] == 10 * 1024**3
    (row,) = [s for s in hub.sessions("tutor") if s.ended_at is None]
    assert (row.profile, row.gpu_type, row.gpu_count) == ("mig-slice", "a100-1g10gb", 1)
    assert row.price_per_hour == Decimal("0.30")
    assert row.runtime_ref == f"local:{pid}"


@pytest.mark.integration
def test_the_per_user_cap_refuses_a_second_gpu_server_and_nothing_starts(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    before = {s.id for s in hub.sessions("tutor")}
    # The team may hold 14 slices and holds 1, and a slice is free: only the cap refuses.
    response = hub.spawn("tutor", {"profile": "mig-slice"}, server="second")
    assert 400 <= response.status_code < 500, response.text
    assert CAP_MESSAGE in response.json()["message"]
    assert "second" not in hub.user("tutor")["servers"]
    assert set(servers_running(watcher)) == {"tutor/"}, "no second server process"
    refused = [s for s in hub.sessions("tutor") if s.id not in before]
    assert [s for s in refused if s.ended_at is None] == [], "no open session for it"
    assert all(s.started_at is None and not s.gpu_seconds for s in refused)
    # Another GPU type counts against the same cap.
    response = hub.spawn("tutor", {"profile": "l4-single"}, server="second")
    assert 400 <= response.status_code < 500, response.text
    assert CAP_MESSAGE in response.json()["message"]
    assert set(servers_running(watcher)) == {"tutor/"}


@pytest.mark.integration
def test_a_second_slice_is_admitted_once_the_first_stops(hub: Hub, watcher: ProcessWatcher) -> None:
    pid = servers_running(watcher)["tutor/"]
    hub.stop_server("tutor")
    wait_for("tutor's first server to end", lambda: not servers_running(watcher), 30)
    # Billed for the life the test watched, at the slice's price.
    life = watcher.life_of(pid)
    (first,) = [s for s in hub.sessions("tutor") if s.runtime_ref == f"local:{pid}"]
    assert life is not None and first.gpu_seconds is not None and first.cost is not None
    assert abs(first.gpu_seconds - life.seconds) <= SLACK, (first.gpu_seconds, life.seconds)
    assert first.cost == (Decimal("0.30") * first.gpu_seconds / 3600).quantize(first.cost)
    model = hub.start_server("tutor", {"profile": "mig-slice"}, server="second")
    assert model["state"]["gpuhub_devices"] in ([SLICES[0]], [SLICES[1]])
    assert set(servers_running(watcher)) == {"tutor/second"}
    hub.stop_server("tutor", server="second")
    wait_for("tutor's second server to end", lambda: not servers_running(watcher), 30)
    assert [s.id for s in hub.sessions("tutor") if s.ended_at is None] == []
