"""Spawn progress in a person's words: Kubernetes scheduling events about GPUs, translated. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..policy.request import SpawnPlan


def explain(event: Mapping[str, Any], plan: SpawnPlan | None, start_timeout: int) -> str | None:
    """A plain message for a progress event, or None to keep KubeSpawner's own."""
    raw = event.get("raw_event") or {}
    if raw.get("reason") != "FailedScheduling" or plan is None or plan.gpu_type is None:
        return None
    text = str(raw.get("message") or "")
    resource = plan.gpu_type.resource
    if f"Insufficient {resource}" in text or "didn't match Pod's node affinity/selector" in text:
        name = plan.gpu_type.display_name
        count = plan.gpu_count
        want = f"a free {name}" if count == 1 else f"{count} free {name} GPUs on one node"
        return (
            f"Waiting for {want}: all are in use right now. Your server is queued and starts as "
            f"soon as one frees up; it gives up after {start_timeout} seconds."
        )
    return None
