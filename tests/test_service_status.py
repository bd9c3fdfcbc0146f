"""The service's status: the public one (api/v1/status, no login) has counts and times only, never
an error message (a database's or the hub's can name hosts and users); admins read the last
error at api/v1/status/detail. A tick that fails, then one that succeeds, with a fake clock; the
succeeding tick's step timings, against the test's own timing of it (broken once: the last step
left unmarked, and the test failed)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spawner_ext.catalog.store import CatalogStore
from spawner_ext.ledger.engine import upgrade
from spawner_ext.service.app import TICK_STEPS, GPUHubService
from spawner_ext.service.hubapi import HubAPIError, HubServer
from spawner_ext.service.metrics import exposition, metrics_registry
from spawner_ext.service.runtimes import LocalRuntime

CATALOG = Path(__file__).parents[1] / "hub_config" / "catalog.yaml"
SECRET = "connection to server at db-7.corp.internal failed: password for user ada-admin"


class Hub:
    """The hub's API as the service sees it, failing while `down`."""

    def __init__(self) -> None:
        self.down = True

    async def running_servers(self) -> list[HubServer]:
        if self.down:
            raise HubAPIError(f"GET users: {SECRET}\nsecond line")
        return []

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_a_failing_tick_is_counted_in_public_and_explained_to_admins(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    hub, clock = Hub(), Clock()
    service = GPUHubService(
        CatalogStore(CATALOG),
        url,
        hub,  # type: ignore[arg-type]
        LocalRuntime(list),
        clock=clock,
    )
    try:
        started = clock.now
        assert not await service.tick_safely()
        clock.now += timedelta(seconds=30)
        assert not await service.tick_safely()
        public: dict[str, Any] = service.status.as_json()
        assert public["failing"] is True
        assert public["failing_since"] == started.isoformat(), "the first failed tick"
        assert (public["failed_ticks"], public["ticks"], public["last_tick_at"]) == (2, 0, None)
        assert public["tick_seconds"] == {}, "no step timings from a failed tick"
        assert "db-7" not in json.dumps(public) and "ada-admin" not in json.dumps(public)
        assert service.status.detail_json()["last_error"] == f"HubAPIError: GET users: {SECRET}"
        metrics = exposition(metrics_registry(service)).decode()
        assert "gpuhub_service_tick_failing 1.0" in metrics

        hub.down = False
        clock.now += timedelta(seconds=30)
        before = time.monotonic()
        assert await service.tick_safely()
        wall = time.monotonic() - before
        public = service.status.as_json()
        steps = public["tick_seconds"]
        assert list(steps) == [*TICK_STEPS, "total"], "every step timed, in order"
        assert all(seconds >= 0 for seconds in steps.values())
        assert sum(steps[s] for s in TICK_STEPS) == pytest.approx(steps["total"])
        assert 0 < steps["total"] <= wall, "within the tick as the test timed it"
        metrics = exposition(metrics_registry(service)).decode()
        assert 'gpuhub_service_tick_seconds{step="total"}' in metrics
        assert (public["failing"], public["failing_since"]) == (False, None)
        assert (public["failed_ticks"], public["ticks"]) == (2, 1), "failures stay counted"
        assert public["last_tick_at"] == clock.now.isoformat()
        assert service.status.detail_json()["last_error"] is None
    finally:
        service.close()
