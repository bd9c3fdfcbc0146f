"""The gpuhub service with a real hub and real servers: it runs as the hub's managed service and
reports its ticks; its restart logs no usage-page reader out; a ledger restored from an older
backup while servers run is made true again in one tick; a budget stop whose first attempt fails
is asked again and billed until the server is really gone."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.catalog.store import CatalogStore
from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger
from spawner_ext.local.processes import live_servers, process_start_time
from spawner_ext.service.app import GPUHubService
from spawner_ext.service.hubapi import HubAPI, HubAPIError
from spawner_ext.service.runtimes import LocalRuntime
from tests.faultdriver import service_pid
from tests.sqlite_backup import sqlite_backup

from .conftest import Hub, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
TICK = 2


def catalog_text(teaching_stop: str = "") -> str:
    """The example catalog ticking every TICK s, the teaching team's budget 3.6 GPU-seconds a
    month (and, with `teaching_stop`, its running servers stopped that long after it is used)."""
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    stop = f"\n      stop_running_over_budget_after: {teaching_stop}" if teaching_stop else ""
    return text.replace("monthly_gpu_hours: 300", f"monthly_gpu_hours: 0.001{stop}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("service")
    (workdir / "catalog.yaml").write_text(catalog_text())
    hub = Hub(workdir, "4xh100-80gb,1xl4", "--config", str(workdir / "catalog.yaml"))
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


def hub_api_url(hub: Hub) -> str:
    """The API URL the hub's servers and services are given (the hub's internal port)."""
    return f"http://127.0.0.1:{(hub.state_dir / 'hub-port').read_text().strip()}/hub/api"


def ledger_path(hub: Hub) -> Path:
    return hub.state_dir / "gpuhub-ledger.sqlite"


def sessions(hub: Hub, user: str | None = None) -> list[UsageSession]:
    ledger = Ledger.open(f"sqlite:///{ledger_path(hub)}")
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession).order_by(UsageSession.id)
            if user is not None:
                query = query.where(UsageSession.user == user)
            return list(db.scalars(query))
    finally:
        ledger.engine.dispose()


def status(hub: Hub) -> dict[str, Any]:
    response = requests.get(f"{hub.url}services/gpu-usage/api/v1/status", timeout=10)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


@pytest.mark.integration
def test_the_service_runs_under_the_hub_and_reports_its_ticks(hub: Hub) -> None:
    first = wait_for("a tick", lambda: (s := status(hub))["ticks"] and s, 60)
    assert first["runtime"] == "local" and first["failing"] is False
    assert (first["failing_since"], first["failed_ticks"]) == (None, 0)
    assert "last_error" not in first, "the public status has counts and times, no messages"
    wait_for("more ticks", lambda: status(hub)["ticks"] > first["ticks"], 30)
    services = hub.api("GET", "/services").json()
    assert "gpu-usage" in services
    model = hub.api("GET", "/services/gpu-usage").json()
    assert model["command"][-4:-2] == ["--db-url", f"sqlite:///{ledger_path(hub)}"], model


@pytest.mark.integration
def test_a_ledger_restored_from_an_older_backup_is_true_again_after_one_tick(
    hub: Hub, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite"
    sqlite_backup(ledger_path(hub), backup)  # taken before either server starts
    ada = hub.start_server("ada", {"profile": "h100-single"})
    grace = hub.start_server("grace", {"profile": "h100-single"})
    started_at = {
        user: process_start_time(int(model["state"]["pid"]))
        for user, model in (("ada", ada), ("grace", grace))
    }
    sqlite_backup(backup, ledger_path(hub))
    for user, model in (("ada", ada), ("grace", grace)):
        # the restored ledger has no session of theirs, unless a tick adopted it just now
        found = [s for s in sessions(hub, user) if s.ended_at is None]
        assert all(s.runtime_ref == f"local:{model['state']['pid']}" for s in found), found
    # The next new session reuses ada's id for someone else: an id must not be trusted alone.
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    time.sleep(3 * TICK)  # a tick, and a few more that must change nothing
    for user, model in (("ada", ada), ("grace", grace)):
        mine = [s for s in sessions(hub, user) if s.ended_at is None]
        assert len(mine) == 1, f"{user}: one open session, not {mine}"
        assert mine[0].runtime_ref == f"local:{model['state']['pid']}"
    lins = [s for s in sessions(hub, "lin") if s.ended_at is None]
    assert len(lins) == 1
    for user in ("ada", "grace", "lin"):
        hub.stop_server(user)
    ended = time.time()
    for user in ("ada", "grace"):
        (session,) = sessions(hub, user)
        assert session.ended_at is not None and session.end_reason == "stopped"
        assert session.started_at == started_at[user], "billed from the server's own start"
        true_seconds = ended - started_at[user].timestamp()
        assert 0 < (session.gpu_seconds or 0) <= true_seconds + 1, "never more than it ran"


class FailingOnce(HubAPI):
    """The hub's REST API, except that the first stop request fails."""

    failed = False

    async def stop_server(self, user: str, server_name: str) -> None:
        if not self.failed:
            self.failed = True
            raise HubAPIError(f"DELETE /users/{user}/server: 503 the hub is busy (test)")
        await super().stop_server(user, server_name)


@pytest.mark.integration
def test_a_budget_stop_whose_first_attempt_fails_is_retried_and_billed_until_gone(
    hub: Hub, tmp_path: Path
) -> None:
    """A second service (in this process, with a catalog that stops the teaching team's servers
    1 s after its budget is used) enforces the budget. The hub's own service (whose catalog
    stops none) is paused (SIGSTOP) meanwhile: its budget stage would withdraw the other's stop
    request (a team not stopping has its stops withdrawn), and one service per install is the
    rule in production."""
    (tmp_path / "catalog.yaml").write_text(catalog_text(teaching_stop="1s"))
    hub.start_server("tutor", {"profile": "l4-single"})
    time.sleep(4)  # 3.6 GPU-seconds: the budget is used
    store = CatalogStore(tmp_path / "catalog.yaml")

    async def enforce() -> None:
        api = FailingOnce(f"{hub.url}hub/api", hub.token)
        runtime = LocalRuntime(lambda: live_servers(hub_api_url(hub)))
        service = GPUHubService(store, f"sqlite:///{ledger_path(hub)}", api, runtime)
        try:
            await ticks(service, api)
        finally:
            service.close()

    async def ticks(service: GPUHubService, api: FailingOnce) -> None:
        for _ in range(10):  # until the grace is over and the stop is asked (and fails)
            await service.tick_safely()
            if api.failed:
                break
            await asyncio.sleep(0.5)
        assert api.failed
        (open_session,) = [s for s in sessions(hub, "tutor") if s.ended_at is None]
        assert open_session.stop_reason == "budget", "asked to stop, still billed"
        assert hub.user("tutor")["servers"].get("", {}).get("ready"), "still running"
        await asyncio.sleep(TICK)
        await service.tick_safely()  # asked again: this time the hub stops it

    own = service_pid(hub.state_dir)
    assert own is not None, "the hub's own service runs"
    os.kill(own, signal.SIGSTOP)
    try:
        asyncio.run(enforce())
        wait_for("tutor's server to stop", lambda: hub.user("tutor")["servers"] == {}, 60)
    finally:
        os.kill(own, signal.SIGCONT)
    gone = time.time()
    session = sessions(hub, "tutor")[-1]
    assert session.end_reason == "budget"
    assert session.ended_at is not None and session.started_at is not None
    assert abs(session.ended_at.timestamp() - gone) <= TICK + 1, "billed until really gone"
    assert status(hub)["budget_stops"] == 0, "the hub's own service had nothing to stop"


@pytest.mark.integration
def test_a_server_that_died_before_its_stop_is_billed_until_it_was_last_seen(hub: Hub) -> None:
    """The server process is killed behind the hub's back and the user stops it before the hub's
    own poll notices: the stop must not bill the time it was already dead, whichever of the
    service's tick and the hub's stop records the end first (the hub's record corrects an end
    reconciliation wrote only for a server it saw running as the stop began;
    tests/spawners/test_stop_billing.py has the spawner's side)."""
    import os
    import signal

    lin = hub.start_server("lin", {"profile": "h100-single", "team": "nlp"})
    pid = int(lin["state"]["pid"])
    first_seen = sessions(hub, "lin")[-1].last_seen_at
    wait_for(
        "a tick to see lin's server",
        lambda: sessions(hub, "lin")[-1].last_seen_at != first_seen,
        30,
    )
    time.sleep(TICK + 0.5)
    os.killpg(pid, signal.SIGKILL)
    killed = time.time()
    time.sleep(3 * TICK)  # the service closes it at its last-seen time
    hub.stop_server("lin")
    session = sessions(hub, "lin")[-1]
    assert session.ended_at is not None and session.team == "nlp"
    assert session.ended_at.timestamp() <= killed + 0.5, "not billed while it was dead"
    assert session.ended_at.timestamp() >= killed - TICK - 2, "billed until last seen"


@pytest.mark.integration
def test_a_usage_page_reader_stays_logged_in_when_the_service_restarts(hub: Hub) -> None:
    """The service's cookie secret is kept in the state directory: a restarted service still
    knows the login of a reader who logged in (through the hub's OAuth) before."""
    import os
    import signal
    from datetime import UTC, datetime

    from tests.faultdriver import service_pid, service_ticked_since

    session, response = hub.login("ada")
    assert response.status_code == 200, response.text
    page = session.get(f"{hub.url}services/gpu-usage/", timeout=60)
    assert page.status_code == 200 and page.url == f"{hub.url}services/gpu-usage/", page.url
    allocations = f"{hub.url}services/gpu-usage/api/v1/allocations"
    assert session.get(allocations, timeout=30).status_code == 200
    secret = hub.state_dir / "gpuhub-service-cookie-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    pid = wait_for("the gpuhub service", lambda: service_pid(hub.state_dir), 60)
    moment = datetime.now(UTC).isoformat()
    os.kill(pid, signal.SIGTERM)
    wait_for("a new service to tick", lambda: service_ticked_since(hub.url, moment), 120, 0.5)
    assert service_pid(hub.state_dir) != pid
    again = session.get(allocations, timeout=30)
    assert again.status_code == 200, f"logged out by the restart: {again.text}"
