"""The service's counters under a real Prometheus: a GPU server killed behind the hub's back, and
closed by reconciliation at its last sighting, never makes `gpuhub_gpu_seconds_total` go down,
and the counter ends at what the server really ran, measured by the test."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawner_ext.ledger.models import UsageSession
from spawner_ext.local.processes import process_start_time

from .conftest import Hub, needs_local_hub, prometheus, wait_for

ROOT = Path(__file__).parents[2]
TICK = 1
GRACE = 5
SERIES = '{team="vision", gpu_type="h100-80gb"}'


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub whose service ticks every second and closes a dead server the hub still lists
    after GRACE s; the hub's own poll comes only every 5 minutes, so reconciliation is what
    closes the session of a server killed behind its back."""
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("metrics")
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    text = text.replace("metering:\n", f"metering:\n  start_grace: {GRACE}s\n", 1)
    (workdir / "catalog.yaml").write_text(text)
    hub = Hub(workdir, "2xh100-80gb", "--config", str(workdir / "catalog.yaml"))
    hub.extra_config.write_text(hub.extra_config.read_text() + "c.Spawner.poll_interval = 300\n")
    try:
        hub.start()
        yield hub
    finally:
        hub.cleanup()


@pytest.mark.integration
def test_a_server_killed_and_closed_by_reconciliation_never_lowers_the_counter(
    hub: Hub, tmp_path: Path
) -> None:
    """Scraped every second through ada's server start, its SIGKILL and its close: the running
    gauge counts past the kill until reconciliation closes the session at its last sighting,
    the counter goes from 0 straight to the bill, never down (`resets() == 0`), and ends at the
    seconds between the process's start (/proc) and the kill (the test's clock), less at most
    one tick and some scheduling slack.

    Checked against broken code: with running sessions counted into the counter again (as
    before), `resets()` was 1 here; with that and the collector's high-water marks, the counter
    stayed at the running figure, above the bill."""
    began = time.time()
    with prometheus(hub, hub.token_for("admin"), tmp_path) as server:
        ada = hub.start_server("ada", {"profile": "h100-single"})
        pid = int(ada["state"]["pid"])
        process_start = process_start_time(pid)
        assert process_start is not None
        time.sleep(8)
        os.killpg(pid, signal.SIGKILL)
        killed = time.time()

        def closed() -> UsageSession | None:
            (session,) = hub.sessions("ada")
            return session if session.ended_at is not None else None

        session = wait_for("reconciliation to close ada's session", closed, 60, 0.5)
        closed_seen = time.time()
        assert session.end_reason == "node-lost", "closed by reconciliation, not by the hub"
        assert session.started_at is not None and session.ended_at is not None
        assert session.gpu_seconds is not None and session.cost is not None
        wait_for(
            "two scrapes after the close",
            lambda: (
                (server.query(f"timestamp(gpuhub_gpu_seconds_total{SERIES})") or 0)
                > closed_seen + 2
            ),
            30,
            0.5,
        )
        window = f"[{int(time.time() - began) + 5}s]"
        counter = server.query(f"gpuhub_gpu_seconds_total{SERIES}")
        resets = server.query(f"resets(gpuhub_gpu_seconds_total{SERIES}{window})")
        lowest = server.query(f"min_over_time(gpuhub_gpu_seconds_total{SERIES}{window})")
        running = server.query(f"max_over_time(gpuhub_running_gpu_seconds{SERIES}{window})")
        cost = server.query('gpuhub_cost_total{team="vision", currency="USD"}')
        cost_resets = server.query(f'resets(gpuhub_cost_total{{team="vision"}}{window})')

    ran = killed - process_start.timestamp()
    assert resets == 0 and cost_resets == 0, "a counter went down"
    assert lowest == 0, "the series was there, at 0, while the server ran"
    assert counter == session.gpu_seconds, "the ledger's bill"
    assert counter == int((session.ended_at - session.started_at).total_seconds())
    assert ran - TICK - 2 <= counter <= ran + 1, f"ran {ran:.1f} s until killed"
    assert cost == pytest.approx(float(session.cost))
    assert running is not None and running >= counter + 2, (
        "the running gauge counted the dead server until its close (the case that used to "
        "lower the counter)"
    )
