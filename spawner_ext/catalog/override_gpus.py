"""The GPUs a KubeSpawner override asks for (`extra_resource_limits`, node labels that name the
GPU, GPU tolerations): read, removed, and named as a GPU type. Pure; for `gpuhub migrate`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slugify import slugify

from .loader import GPU_LIMIT_SETTINGS

PRODUCT = "nvidia.com/gpu.product"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
INSTANCE_TYPES = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
GPU_LABELS = (PRODUCT, GKE_ACCELERATOR, *INSTANCE_TYPES)
"""Node labels that say which GPU a node has; they move from the profile to its GPU type."""
INSTANCE_GPUS = {
    "g4dn": "NVIDIA T4",
    "g5": "NVIDIA A10G",
    "g6": "NVIDIA L4",
    "g6e": "NVIDIA L40S",
    "p3": "NVIDIA V100",
    "p4d": "NVIDIA A100 40GB",
    "p4de": "NVIDIA A100 80GB",
    "p5": "NVIDIA H100 80GB",
}
"""The GPU of well-known AWS instance families (the part of the instance type before the dot)."""
TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})


@dataclass(frozen=True)
class GPUsAsked:
    """The GPUs an override asks for, and the GPU labels and tolerations that place them."""

    resources: tuple[tuple[str, Any], ...]
    selector: tuple[tuple[str, str], ...]
    tolerations: tuple[Mapping[str, Any], ...] = field(compare=False)


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_gpu_resource(name: Any) -> bool:
    return isinstance(name, str) and name.startswith("nvidia.com/")


def _is_gpu_toleration(toleration: Any) -> bool:
    if not isinstance(toleration, Mapping) or not set(toleration) <= TOLERATION_KEYS:
        return False
    key = toleration.get("key")
    return isinstance(key, str) and ("nvidia.com/" in key or "gpu" in key.lower())


def gpus_asked(override: Mapping[str, Any]) -> GPUsAsked | None:
    """What GPUs `override` asks for, or None. A count of 0 asks for none."""
    resources: dict[str, Any] = {}
    for setting in reversed(GPU_LIMIT_SETTINGS):  # limits win over guarantees
        for name, value in as_mapping(override.get(setting)).items():
            if _is_gpu_resource(name) and str(value).strip() not in ("0", "None"):
                resources[name] = value
    if not resources:
        return None
    selector = as_mapping(override.get("node_selector"))
    tolerations = override.get("tolerations")
    return GPUsAsked(
        tuple(sorted((k, str(v)) for k, v in resources.items())),
        tuple(sorted((k, str(v)) for k, v in selector.items() if k in GPU_LABELS)),
        tuple(
            t
            for t in (tolerations if isinstance(tolerations, list) else [])
            if _is_gpu_toleration(t)
        ),
    )


def without_gpus(override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` without GPU resources, GPU node labels and GPU tolerations."""
    out = dict(override)
    for setting in GPU_LIMIT_SETTINGS:
        if isinstance(out.get(setting), Mapping):
            rest = {k: v for k, v in out[setting].items() if not _is_gpu_resource(k)}
            _set_or_drop(out, setting, rest)
    if isinstance(out.get("node_selector"), Mapping):
        rest = {k: v for k, v in out["node_selector"].items() if k not in GPU_LABELS}
        _set_or_drop(out, "node_selector", rest)
    if isinstance(out.get("tolerations"), list):
        kept = [t for t in out["tolerations"] if not _is_gpu_toleration(t)]
        _set_or_drop(out, "tolerations", kept)
    return out


def _set_or_drop(out: dict[str, Any], key: str, value: Any) -> None:
    if value:
        out[key] = value
    else:
        out.pop(key, None)


def _words(label: str) -> str:
    """`nvidia-tesla-t4` -> `NVIDIA Tesla T4`."""
    out = []
    for word in re.split(r"[-_ ]+", label):
        if word.lower() == "nvidia":
            out.append("NVIDIA")
        elif any(c.isdigit() for c in word):
            out.append(word.upper())
        else:
            out.append(word[:1].upper() + word[1:])
    return " ".join(out)


def gpu_type_name(resource: str, selector: Mapping[str, str]) -> tuple[str, str, str | None] | None:
    """(key, display name, a note on the name) of the GPU a request asks for; None when
    nothing tells."""
    product = selector.get(PRODUCT)
    accelerator = selector.get(GKE_ACCELERATOR)
    instance = next((selector[k] for k in INSTANCE_TYPES if k in selector), None)
    if product:
        key, name, note = slugify(product.removeprefix("NVIDIA-")), product.replace("-", " "), None
    elif accelerator:
        key, name, note = slugify(accelerator.removeprefix("nvidia-")), _words(accelerator), None
    elif instance:
        gpu = INSTANCE_GPUS.get(instance.split(".")[0])
        key, name = slugify(instance), f"{gpu or 'GPU'} ({instance})"
        note = None if gpu else f"the GPU of {instance} nodes is not known to gpuhub migrate"
    else:
        key, name, note = "", "", None
    if resource.startswith("nvidia.com/mig-"):
        profile = resource.removeprefix("nvidia.com/mig-")
        key = slugify(f"{key}-mig-{profile}")
        name = f"{name} MIG {profile} slice".strip()
        return key, name, note
    if not key:
        return None
    if resource != "nvidia.com/gpu":
        key = slugify(f"{key}-{resource.split('/', 1)[1]}")
        name = f"{name} ({resource})"
    return key, name, note
