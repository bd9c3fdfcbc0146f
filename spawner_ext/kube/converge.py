"""One namespaced object the hub owns, made as its manifest says: created when missing, replaced
when it differs. Shared by the team namespaces' ResourceQuotas and NetworkPolicies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from kubernetes_asyncio.client.rest import ApiException

from ..wire import install_of

Outcome = Literal["created", "replaced", "foreign"]


async def converge(
    api: Any, kind: str, manifest: dict[str, Any], matches: Callable[[Any], bool]
) -> tuple[Outcome, Any] | None:
    """Make the object of `manifest` (`kind` as in the client's method names: `resource_quota`,
    `network_policy`) as the manifest says. `matches(current)` tells whether the stored one
    already is. Returns ("created", None), ("replaced", the object as it was), ("foreign", the
    object) when another install made it (its `gpuhub.io/install` label names another: left
    alone; one without the label, made before installs were told apart, is this install's), or
    None when nothing was written: it already matched, or a concurrent writer won (the next sync
    looks again). Raises ApiException 404 when the namespace does not exist."""
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    try:
        current = await getattr(api, f"read_namespaced_{kind}")(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        try:
            await getattr(api, f"create_namespaced_{kind}")(namespace, manifest)
        except ApiException as create_exc:
            if create_exc.status == 409:  # a concurrent sync created it
                return None
            raise
        return "created", None
    owner = install_of(current.metadata.labels)
    if owner is not None and owner != install_of(manifest["metadata"].get("labels")):
        return "foreign", current
    if matches(current):
        return None
    manifest = {**manifest, "metadata": {**manifest["metadata"]}}
    manifest["metadata"]["resourceVersion"] = current.metadata.resource_version
    try:
        await getattr(api, f"replace_namespaced_{kind}")(name, namespace, manifest)
    except ApiException as exc:
        if exc.status == 409:  # changed meanwhile; the next sync looks again
            return None
        raise
    return "replaced", current
