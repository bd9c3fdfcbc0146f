"""What a SpawnPlan adds to a notebook pod: GPU limits, placement, identifying labels and
annotations, and the environment. Pure functions over plain manifest dicts; no API calls.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog.frozen import thaw
from ..policy.request import SpawnPlan
from ..wire import pod_annotations, pod_labels, read_pod

GPU_RESOURCE_PREFIX = "nvidia.com/"


@dataclass(frozen=True)
class PodPlacement:
    """The parts of a pod manifest that come from the plan, not from KubeSpawner settings."""

    limits: Mapping[str, str]
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    env: Mapping[str, str]


def placement(
    plan: SpawnPlan, install: str, server_name: str = "", session: str | None = None
) -> PodPlacement:
    """The GPU placement of a plan, and the labels and annotations that name the server, its
    install and its ledger session. A CPU-only plan hides the node's GPUs from the container."""
    gpu_type = plan.gpu_type
    if gpu_type is None:
        limits: dict[str, str] = {}
        selector: dict[str, str] = {}
        tolerations: tuple[Mapping[str, Any], ...] = ()
        env = {"NVIDIA_VISIBLE_DEVICES": "void"}
    else:
        limits = {gpu_type.resource: str(plan.gpu_count)}
        selector = dict(gpu_type.node_selector)
        tolerations = tuple(
            t.model_dump(by_alias=True, exclude_none=True) for t in gpu_type.tolerations
        )
        env = {}
    return PodPlacement(
        limits=limits,
        node_selector=selector,
        tolerations=tolerations,
        labels=pod_labels(plan.summary, session, install),
        annotations=pod_annotations(plan.summary, plan.user, server_name),
        env=env,
    )


def apply_placement(pod: Mapping[str, Any], where: PodPlacement) -> dict[str, Any]:
    """A copy of a pod manifest (plain dict, camelCase as the API serves it) with the placement
    applied to its first container (the notebook). GPU resources the plan does not ask for are
    removed, so no override can slip GPUs past quotas."""
    out: dict[str, Any] = copy.deepcopy(thaw(pod))
    meta = out.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **where.labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), **where.annotations}
    spec = out.setdefault("spec", {})
    if where.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **where.node_selector}
    tolerations = list(spec.get("tolerations") or [])
    tolerations += [dict(t) for t in where.tolerations if dict(t) not in tolerations]
    if tolerations:
        spec["tolerations"] = tolerations
    container = spec["containers"][0]
    resources = container.setdefault("resources", {})
    for kind in ("limits", "requests"):
        current = {
            k: v
            for k, v in (resources.get(kind) or {}).items()
            if not k.startswith(GPU_RESOURCE_PREFIX)
        }
        resources[kind] = {**current, **where.limits} if kind == "limits" else current
        if not resources[kind]:
            del resources[kind]
    env = [e for e in container.get("env") or [] if e.get("name") not in where.env]
    env += [{"name": k, "value": v} for k, v in where.env.items()]
    if env:
        container["env"] = env
    return out


def made_by_this_spawn(existing: Mapping[str, Any], session: str | None, install: str) -> bool:
    """Whether a pod found under the server's name (a create answered 409) is the one this
    spawn's own earlier create made: it carries this spawn's ledger session and install, and
    nobody is deleting it. Without a session (a CPU server started while the ledger was
    down) nothing tells the pods apart: False."""
    if session is None:
        return False
    meta = existing.get("metadata") or {}
    record = read_pod(meta.get("labels"), meta.get("annotations"))
    return (
        record.session == session
        and record.install == install
        and not meta.get("deletionTimestamp")
    )
