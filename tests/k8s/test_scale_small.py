"""benchmarks/scale.py at CI size (30 GPU servers, 60 users in the hub's database; the 1,000-server
run is the benchmark's, recorded in docs/benchmarks.md): a storm of GPUKubeSpawner spawns and a
restart of the hub with them all running. Asserted, each counted independently of the others:
every spawn admitted and running (pods, from the API server), no team over its quota and no node
over-committed, and after the restart every server still running, ready in the hub and billed in
the ledger (an open, started session each). No timing is asserted.

Broken once: GPUKubeSpawner's start no longer marked its session started (metering_started
skipped), and the test failed: 30 of 31 billed (reconciliation had marked the storm's sessions
started from their pods, a tick late; the server spawned after the restart was not yet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed import H100, ControlPlane

from benchmarks.scale import run_side

pytestmark = pytest.mark.k8s

SERVERS = 30


@pytest.fixture
def nodes(control_plane: ControlPlane) -> Iterator[list[str]]:
    added = control_plane.add_kwok_gpu_nodes(5, H100)  # 40 H100s: the 30, the 8 first, 1 more
    yield added
    for node in added:
        control_plane.api.delete(f"/api/v1/nodes/{node}")


def test_a_storm_and_a_hub_restart_keep_every_server_running_and_billed(
    control_plane: ControlPlane, nodes: list[str], tmp_path: Path
) -> None:
    side = run_side(control_plane, tmp_path, SERVERS, 2 * SERVERS, ours=True, measure=False)
    assert (side.admitted, side.failed) == (SERVERS, 0), side
    assert (side.over_quota, side.overcommitted) == (0, 0), side
    survivors = (side.after_running, side.after_ready, side.after_billed)
    assert survivors == (SERVERS + 1,) * 3, f"running, ready, billed: {survivors}"
