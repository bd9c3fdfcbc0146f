"""Kubernetes client model objects <-> plain manifest dicts (camelCase, as the API serves them)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any


def to_manifest(obj: Any) -> Any:
    """A plain-data copy of a kubernetes_asyncio model (or of plain data), leaving out unset
    fields. Needs no event loop, unlike ApiClient.sanitize_for_serialization."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, list | tuple):
        return [to_manifest(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_manifest(v) for k, v in obj.items()}
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    types: dict[str, str] = obj.openapi_types
    names: dict[str, str] = obj.attribute_map
    return {
        names[attr]: to_manifest(value)
        for attr in types
        if (value := getattr(obj, attr)) is not None
    }
