"""ResourceQuota backstops for team namespaces: the API server itself refuses pods over a team's
GPU quota, even if the hub's admission were bypassed. Builders are pure; `sync_quotas` applies
(called by the hub when it makes a namespace and by the gpuhub service every tick)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kubernetes_asyncio.client.rest import ApiException

from ..catalog import Catalog
from ..policy.request import namespace_of
from ..wire import team_object_labels
from .converge import converge

QUOTA_NAME = "gpuhub-gpus"


def team_quota_manifests(catalog: Catalog, install: str) -> dict[str, dict[str, Any]]:
    """Namespace -> ResourceQuota manifest, for every team that has its own namespace. GPU types
    sharing a resource (two models both `nvidia.com/gpu`) share one limit: the sum. With
    `borrowing` on, a team's limit is its own quota plus its `borrow_limit`: the backstop
    allows what admission may grant; admission (the ledger, under the GPU type's lock) keeps
    the cohort within what its teams lend."""
    out: dict[str, dict[str, Any]] = {}
    for key, team in catalog.teams.items():
        namespace = namespace_of(catalog, key, install)
        if namespace is None:
            continue
        hard: Counter[str] = Counter()
        for gpu_type, count in team.quota.gpus.items():
            hard[f"requests.{catalog.gpu_types[gpu_type].resource}"] += count
        if catalog.borrowing is not None:
            for gpu_type, count in team.quota.borrow_limit.items():
                hard[f"requests.{catalog.gpu_types[gpu_type].resource}"] += count
        out[namespace] = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {
                "name": QUOTA_NAME,
                "namespace": namespace,
                "labels": team_object_labels(key, install),
            },
            "spec": {"hard": {name: str(n) for name, n in sorted(hard.items())}},
        }
    return out


async def sync_quota(api: Any, manifest: dict[str, Any]) -> str | None:
    """Create or update one namespace's quota to match `manifest`; what changed, or None.
    Raises ApiException 404 when the namespace does not exist."""
    hard = manifest["spec"]["hard"]
    done = await converge(
        api, "resource_quota", manifest, lambda current: dict(current.spec.hard or {}) == hard
    )
    if done is None:
        return None
    outcome, previous = done
    namespace = manifest["metadata"]["namespace"]
    if outcome == "created":
        return f"{namespace}: created {hard}"
    if outcome == "foreign":
        return f"{namespace}: the ResourceQuota is another install's; left alone"
    return f"{namespace}: {dict(previous.spec.hard or {})} -> {hard}"


async def sync_quotas(api: Any, catalog: Catalog, install: str) -> list[str]:
    """Every team namespace's quota, as the catalog says; what changed. Namespaces that do not
    exist (yet, or any more) are skipped: the hub makes them on the next spawn into them."""
    changed = []
    for manifest in team_quota_manifests(catalog, install).values():
        try:
            change = await sync_quota(api, manifest)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise
        if change:
            changed.append(change)
    return changed
