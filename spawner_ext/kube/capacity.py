"""How many GPUs of each catalog type a cluster has for an install's servers, for the wait-list:
the allocatable GPUs of the Ready, schedulable nodes that match the type's node selector, and
of those what pods other than the install's own notebook pods request (the install's own are
its open sessions in the ledger). Pure `gpu_capacity`; `read_capacity` lists nodes and pods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..catalog import Catalog
from ..wire import PROFILE_LABEL, install_of

DONE_PHASES = frozenset({"Succeeded", "Failed"})


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _ready(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _quantity(value: Any) -> int:
    """A GPU count as Kubernetes writes an extended resource quantity ("8")."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def pod_request(pod: Mapping[str, Any], resource: str) -> int:
    """The units of `resource` a pod asks for (extended resources: requests, else limits,
    summed over its containers; init containers run before and are not held with them)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        asked = (resources.get("requests") or {}).get(resource)
        if asked is None:
            asked = (resources.get("limits") or {}).get(resource)
        total += _quantity(asked)
    return total


def gpu_capacity(
    catalog: Catalog,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    install: str,
) -> dict[str, tuple[int, int]]:
    """GPU type -> (allocatable GPUs of its nodes, GPUs of those nodes that pods other than
    `install`'s notebook pods hold). Autoscaled types are left out (their nodes come when
    asked for). A node matching two types' selectors counts for both, as the scheduler would
    place either there."""
    nodes = list(nodes)
    live_pods = [p for p in pods if (p.get("status") or {}).get("phase") not in DONE_PHASES]
    found: dict[str, tuple[int, int]] = {}
    for key, kind in catalog.gpu_types.items():
        if kind.autoscaled:
            continue
        names = set()
        total = 0
        for node in nodes:
            meta = node.get("metadata") or {}
            if not _ready(node) or not _matches(meta.get("labels") or {}, kind.node_selector):
                continue
            names.add(meta.get("name"))
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            total += _quantity(allocatable.get(kind.resource))
        elsewhere = 0
        for pod in live_pods:
            if (pod.get("spec") or {}).get("nodeName") not in names:
                continue
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if PROFILE_LABEL in labels and install_of(labels) == install:
                continue
            elsewhere += pod_request(pod, kind.resource)
        found[key] = (total, min(elsewhere, total))
    return found


async def read_capacity(api: Any, catalog: Catalog, install: str) -> dict[str, tuple[int, int]]:
    """`gpu_capacity` of the cluster now (needs permission to list nodes and pods)."""
    from .serialize import list_items

    if not any(not kind.autoscaled for kind in catalog.gpu_types.values()):
        return {}
    nodes = await list_items(api.list_node)
    pods = await list_items(
        api.list_pod_for_all_namespaces,
        field_selector="status.phase!=Succeeded,status.phase!=Failed",
    )
    return gpu_capacity(catalog, nodes, pods, install)
