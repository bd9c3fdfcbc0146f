"""Kubernetes client model objects <-> plain manifest dicts (camelCase, as the API serves them)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
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


_PRIMITIVES = {"str", "int", "float", "bool", "object", "date", "datetime"}


def from_manifest(data: Any, kind: str) -> Any:
    """Build kubernetes_asyncio model objects of `kind` (e.g. "V1Pod") from a plain manifest,
    the inverse of to_manifest. Unknown keys are dropped, as the API server would reject them."""
    from kubernetes_asyncio.client import models

    if data is None:
        return None
    if kind.startswith("list["):
        return [from_manifest(item, kind[5:-1]) for item in data]
    if kind.startswith("dict("):
        inner = kind[5:-1].split(", ", 1)[1]
        return {key: from_manifest(value, inner) for key, value in data.items()}
    if kind in _PRIMITIVES:
        return data
    cls = getattr(models, kind)
    attributes = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    kwargs = {
        attributes[key]: from_manifest(value, cls.openapi_types[attributes[key]])
        for key, value in data.items()
        if key in attributes
    }
    return cls(**kwargs)


async def list_items(list_call: Callable[..., Awaitable[Any]], **params: Any) -> list[Any]:
    """The `items` of a kubernetes_asyncio list call (e.g. `api.list_pod_for_all_namespaces`)
    as the API server sent them, plain dicts: the client's own decoding into model objects, and
    `to_manifest` back, cost more CPU than the request (a second at 1,000 pods). Raises the
    client's ApiException on an error answer, as the decoded call would."""
    from kubernetes_asyncio.client.rest import ApiException

    response = await list_call(_preload_content=False, **params)
    body = await response.read()
    if response.status >= 400:
        raise ApiException(status=response.status, reason=response.reason)
    items: list[Any] = json.loads(body).get("items") or []
    return items
