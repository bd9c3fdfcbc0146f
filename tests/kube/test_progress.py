"""Scheduling events about GPUs become messages a person understands."""

from __future__ import annotations

from pathlib import Path

from spawner_ext.catalog import load_catalog
from spawner_ext.kube.progress import explain
from spawner_ext.policy.identity import Identity
from spawner_ext.policy.request import resolve_spawn

CATALOG = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")
ADA = Identity("ada", frozenset({"vision"}))


def event(message: str, reason: str = "FailedScheduling") -> dict[str, object]:
    return {"progress": 50, "message": "raw", "raw_event": {"reason": reason, "message": message}}


def test_no_free_gpu() -> None:
    plan = resolve_spawn(CATALOG, ADA, {"profile": "h100-single"})
    text = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: ..."
    assert explain(event(text), plan, 300) == (
        "Waiting for a free NVIDIA H100 80GB: all are in use right now. Your server is queued "
        "and starts as soon as one frees up; it gives up after 300 seconds."
    )


def test_other_events_unchanged() -> None:
    plan = resolve_spawn(CATALOG, ADA, {"profile": "h100-single"})
    assert explain(event("Pulling image", "Pulling"), plan, 300) is None
    assert explain(event("0/4 nodes: Insufficient memory"), plan, 300) is None
    cpu = resolve_spawn(CATALOG, ADA, {"profile": "cpu-small"})
    assert explain(event("Insufficient nvidia.com/gpu"), cpu, 300) is None


def test_an_autoscaled_type_says_a_node_is_coming() -> None:
    l4 = CATALOG.gpu_types["l4"].model_copy(update={"autoscaled": True})
    scaled = CATALOG.model_copy(update={"gpu_types": {**CATALOG.gpu_types, "l4": l4}})
    plan = resolve_spawn(scaled, ADA, {"profile": "l4-single"})
    pending = explain(event("0/4 nodes are available: 4 Insufficient nvidia.com/gpu."), plan, 900)
    assert pending is not None and "cluster autoscaler is asked for a new node" in pending
    scale_up = explain(
        event("pod triggered scale-up: [l4-pool 1->2]", "TriggeredScaleUp"), plan, 900
    )
    assert scale_up is not None and "adding a node with NVIDIA L4 24GB GPUs" in scale_up
    assert "900 seconds" in scale_up
