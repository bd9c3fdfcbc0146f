"""Free GPU capacity per type from nodes and pods (kube/capacity.py): which nodes count, and
which pods' GPUs are someone else's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.kube.capacity import gpu_capacity, pod_request

ROOT = Path(__file__).parents[2]
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def catalog() -> Catalog:
    return load_catalog(ROOT / "hub_config" / "catalog.yaml")


def node(
    name: str, labels: dict[str, str], gpus: int, *, ready: str = "True", cordoned: bool = False
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64"},
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


def pod(
    node_name: str | None,
    gpus: int,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    *,
    in_limits: bool = False,
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if not in_limits:
        resources["requests"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "metadata": {"labels": labels or {}},
        "spec": {"nodeName": node_name, "containers": [{"resources": resources}]},
        "status": {"phase": phase},
    }


OURS = {"gpuhub.io/profile": "h100-single", "gpuhub.io/install": "hub-a"}
THEIRS = {"gpuhub.io/profile": "h100-single", "gpuhub.io/install": "hub-b"}


def test_matching_ready_schedulable_nodes_count_and_others_pods_are_used_elsewhere() -> None:
    nodes = [
        node("h1", H100, 8),
        node("h2", H100, 8),
        node("h3", H100, 8, ready="False"),  # not Ready: none of its GPUs can be had
        node("h4", H100, 8, cordoned=True),  # cordoned: likewise
        node("a1", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, 8),
    ]
    pods = [
        pod("h1", 2, OURS),  # ours: counted by the ledger's open sessions, not here
        pod("h1", 1, THEIRS),  # another install's notebook
        pod("h2", 4, {"app": "training"}, in_limits=True),  # a batch job, limits only
        pod("h2", 3, {"app": "done"}, phase="Succeeded"),  # finished: holds nothing
        pod("a1", 8, {"app": "training"}),  # another type's nodes
        pod(None, 1, {"app": "pending"}),  # not bound: the scheduler has not placed it
    ]
    found = gpu_capacity(catalog(), nodes, pods, "hub-a")
    assert found["h100-80gb"] == (16, 5)
    assert found["a100-40gb"] == (8, 8)


def test_no_nodes_of_a_type_is_zero_and_autoscaled_types_are_left_out() -> None:
    base = catalog()
    l4 = base.gpu_types["l4"].model_copy(update={"autoscaled": True})
    scaled = base.model_copy(update={"gpu_types": {**base.gpu_types, "l4": l4}})
    found = gpu_capacity(scaled, [], [], "hub-a")
    assert found["h100-80gb"] == (0, 0)
    assert "l4" not in found


def test_pod_request_sums_containers_and_prefers_requests() -> None:
    two = pod("h1", 2)
    two["spec"]["containers"].append({"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    assert pod_request(two, "nvidia.com/gpu") == 3
    assert pod_request({"spec": {}}, "nvidia.com/gpu") == 0
