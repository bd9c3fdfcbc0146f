"""The culling decision as a table: one server's activity, the settings in force and an
injected `now` -> keep, warn or cull, with the reason and the message a person reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spawner_ext.catalog import load_catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.policy.culling import (
    CullAction,
    CullSettings,
    ServerActivity,
    decide_cull,
    settings_for,
)

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SETTINGS = CullSettings(
    idle_timeout=60 * MIN,
    gpu_idle_timeout=60 * MIN,
    max_age=timedelta(days=3),
    warn_before=10 * MIN,
    gpu_utilization_percent=5,
)
GPU = ServerActivity(started=T0, last_activity=T0, gpu_count=1, gpu_label="1x H100")

KEEP, WARN, CULL = CullAction.KEEP, CullAction.WARN, CullAction.CULL


@pytest.mark.parametrize(
    ("name", "server", "minutes", "action", "reason"),
    [
        ("fresh", GPU, 5, KEEP, EndReason.CULLED_IDLE),
        # a tab left open: Jupyter activity goes on, the GPU idles since 9:00
        (
            "tab open, GPU idle, warned",
            replace(GPU, last_activity=T0 + 49 * MIN, gpu_idle_since=T0),
            50,
            WARN,
            EndReason.CULLED_GPU_IDLE,
        ),
        (
            "tab open, GPU idle, culled",
            replace(GPU, last_activity=T0 + 59 * MIN, gpu_idle_since=T0),
            60,
            CULL,
            EndReason.CULLED_GPU_IDLE,
        ),
        # a silent training run: no Jupyter activity at all, GPU busy
        (
            "silent training kept",
            replace(GPU, last_activity=T0, gpu_busy=True),
            600,
            KEEP,
            EndReason.MAX_AGE,  # the only rule left: the next stop it faces
        ),
        (
            "busy GPU still stops at max_age",
            replace(GPU, last_activity=T0, gpu_busy=True),
            3 * 24 * 60,
            CULL,
            EndReason.MAX_AGE,
        ),
        (
            "busy GPU warned before max_age",
            replace(GPU, last_activity=T0, gpu_busy=True),
            3 * 24 * 60 - 5,
            WARN,
            EndReason.MAX_AGE,
        ),
        # nothing happens at all and no GPU report (no extension): the plain idle timeout
        ("no reports, idle", GPU, 60, CULL, EndReason.CULLED_IDLE),
        ("no reports, warned", GPU, 51, WARN, EndReason.CULLED_IDLE),
        # GPU activity unknown (MIG device with processes): never GPU-idle, only plain idle
        (
            "unknown GPU, active user",
            replace(GPU, last_activity=T0 + 100 * MIN),
            120,
            KEEP,
            EndReason.CULLED_IDLE,
        ),
        # Keep clicked at 9:55 restarts both clocks
        (
            "kept",
            replace(GPU, gpu_idle_since=T0, kept_at=T0 + 55 * MIN),
            60,
            KEEP,
            EndReason.CULLED_GPU_IDLE,  # both fall due at 10:55; the GPU rule is named
        ),
        (
            "kept, then idle again",
            replace(GPU, gpu_idle_since=T0, kept_at=T0 + 55 * MIN),
            115,
            CULL,
            EndReason.CULLED_GPU_IDLE,
        ),
        # the budget's stop stage, named in the warning before it stops
        (
            "budget stop ahead",
            replace(GPU, last_activity=T0 + 5 * MIN, budget_stop_at=T0 + 15 * MIN),
            8,
            WARN,
            EndReason.BUDGET,
        ),
        (
            "the budget stops a busy GPU too (money, not idleness)",
            replace(GPU, gpu_busy=True, budget_stop_at=T0 + 15 * MIN),
            15,
            CULL,
            EndReason.BUDGET,
        ),
        # a CPU server has no GPU rule
        (
            "cpu server",
            ServerActivity(started=T0, last_activity=T0, gpu_idle_since=T0),
            59,
            WARN,
            EndReason.CULLED_IDLE,
        ),
    ],
)
def test_decisions(
    name: str,
    server: ServerActivity,
    minutes: int,
    action: CullAction,
    reason: EndReason | None,
) -> None:
    decision = decide_cull(server, SETTINGS, T0 + minutes * MIN)
    assert (decision.action, decision.reason) == (action, reason), name


def test_the_warning_says_what_when_and_why() -> None:
    server = replace(GPU, last_activity=T0 + 49 * MIN, gpu_idle_since=T0)
    decision = decide_cull(server, SETTINGS, T0 + 50 * MIN)
    assert decision.message == (
        "This server (1x H100) will be stopped in 10 minutes (at 10:00 UTC): its GPU has been "
        "idle for 50 minutes."
    )
    assert decision.cull_at == T0 + 60 * MIN
    culled = decide_cull(server, SETTINGS, T0 + 61 * MIN)
    assert (
        culled.message == "This server (1x H100) was stopped: its GPU has been idle for 61 minutes."
    )


def test_no_rule_no_cull() -> None:
    settings = CullSettings(None, None, None, 10 * MIN, 5)
    assert decide_cull(GPU, settings, T0 + timedelta(days=30)).action is KEEP


def test_each_decision_until_the_cull_is_the_same_when_asked_again() -> None:
    """The decision depends only on its inputs: asked each minute, it keeps, then warns
    from 10 minutes before, then culls, and never goes back."""
    server = replace(GPU, last_activity=T0 + 30 * MIN, gpu_idle_since=T0)
    actions = [decide_cull(server, SETTINGS, T0 + m * MIN).action for m in range(0, 70)]
    assert actions == [KEEP] * 50 + [WARN] * 10 + [CULL] * 10


def test_settings_come_from_the_profile_then_the_catalog() -> None:
    catalog = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")
    gpu = settings_for(catalog, "h100-single", 1)
    assert gpu.gpu_idle_timeout is not None and gpu.warn_before == 10 * MIN
    cpu = settings_for(catalog, "cpu-small", 0)
    assert cpu.gpu_idle_timeout is None, "no GPU, no GPU rule"
    gone = settings_for(catalog, "no-such-profile", 1)
    assert gone.idle_timeout == catalog.culling.idle_timeout
