"""How layers of `kubespawner_override` combine (a profile's, then each chosen option's): as
KubeSpawner merges dict settings. Pure; used by the spawn request and by `gpuhub migrate`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_overrides(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; mappings merge recursively (as KubeSpawner merges dict settings)."""
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = value
    return out
