"""Spawn progress in a person's words: Kubernetes scheduling events about GPUs, translated. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..policy.request import SpawnPlan


def explain(event: Mapping[str, Any], plan: SpawnPlan | None, start_timeout: int) -> str | None:
    """A plain message for a progress event, or None to keep KubeSpawner's own."""
    raw = event.get("raw_event") or {}
    reason = raw.get("reason")
    if reason not in ("FailedScheduling", "TriggeredScaleUp") or plan is None:
        return None
    if plan.gpu_type is None:
        return None
    text = str(raw.get("message") or "")
    resource = plan.gpu_type.resource
    if raw.get("reason") == "TriggeredScaleUp" and plan.gpu_type.autoscaled:
        return (
            f"The cluster autoscaler is adding a node with {plan.gpu_type.display_name} GPUs "
            f"for your server ({text}); it gives up after {start_timeout} seconds."
        )
    if f"Insufficient {resource}" in text or "didn't match Pod's node affinity/selector" in text:
        name = plan.gpu_type.display_name
        count = plan.gpu_count
        want = f"a free {name}" if count == 1 else f"{count} free {name} GPUs on one node"
        if plan.gpu_type.autoscaled:
            return (
                f"Waiting for {want}: none is free, so the cluster autoscaler is asked for a "
                f"new node ({text}). Your server starts when it is ready; it gives up after "
                f"{start_timeout} seconds."
            )
        return (
            f"Waiting for {want}: all are in use right now. Your server is queued and starts as "
            f"soon as one frees up; it gives up after {start_timeout} seconds."
        )
    return None
