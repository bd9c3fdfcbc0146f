"""Team namespaces and their ResourceQuota backstops, made once per hub process: concurrent
first spawns into a namespace share one creation, retried on API timeouts like KubeSpawner's own
requests, so a spawn storm neither races nor times out on it."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client.rest import ApiException
from kubespawner.objects import make_namespace

from ..catalog import Catalog
from .quotas import sync_quota, team_quota_manifests

_ready: dict[str, asyncio.Task[None]] = {}


def forget(namespace: str) -> None:
    """The namespace is gone (found so by the quota sync): make it again on the next spawn."""
    _ready.pop(namespace, None)


async def ensure_team_namespace(
    api: Any,
    namespace: str,
    team: str,
    catalog: Catalog,
    *,
    manage_quota: bool,
    request_timeout: float,
    retry_timeout: float,
) -> None:
    task = _ready.get(namespace)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        task = _ready[namespace] = asyncio.get_running_loop().create_task(
            _make(api, namespace, team, catalog, manage_quota, request_timeout, retry_timeout)
        )
    await asyncio.shield(task)


async def _make(
    api: Any,
    namespace: str,
    team: str,
    catalog: Catalog,
    manage_quota: bool,
    request_timeout: float,
    retry_timeout: float,
) -> None:
    manifest = make_namespace(
        namespace, labels={"gpuhub.io/team": team, "app.kubernetes.io/managed-by": "gpuhub"}
    )
    await exponential_backoff(
        partial(_attempt, api, manifest, request_timeout),
        f"could not create the team namespace {namespace}",
        timeout=retry_timeout,
    )
    quota = team_quota_manifests(catalog).get(namespace)
    if manage_quota and quota is not None:
        await asyncio.wait_for(sync_quota(api, quota), retry_timeout)


async def _attempt(api: Any, manifest: Any, seconds: float) -> bool:
    """One try: True when the namespace exists now, False to try again after a timeout."""
    try:
        await asyncio.wait_for(api.create_namespace(manifest), seconds)
    except TimeoutError:
        return False
    except ApiException as exc:
        if exc.status != 409:  # 409: it exists already
            raise
    return True
