"""Team namespaces, their ResourceQuota backstops and NetworkPolicies, made once per hub:
concurrent first spawns into a namespace share one creation, retried on API timeouts like
KubeSpawner's own requests, so a spawn storm neither races nor times out on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from jupyterhub.utils import exponential_backoff
from kubernetes_asyncio.client.rest import ApiException
from kubespawner.objects import make_namespace

from ..catalog import Catalog
from ..wire import install_of, team_object_labels
from .netpol import HubPeers, sync_network_policy, team_network_policy
from .quotas import sync_quota, team_quota_manifests

REMEMBER_SECONDS = 60.0
"""How long a made namespace is taken as existing without asking (one is deleted by hand now
and then; the next spawn after this makes it again)."""


class ForeignNamespace(Exception):
    """The team's namespace was made by another install: this one never uses it."""

    def __init__(self, namespace: str, owner: str, install: str) -> None:
        super().__init__(
            f"The namespace {namespace} belongs to the gpuhub install '{owner}', not to this "
            f"hub's ('{install}'). Several hubs on one cluster need their own team namespaces: "
            "put {install} in the catalog's kubernetes.namespace_template "
            "(e.g. gpuhub-{install}-{team})."
        )
        self.namespace = namespace


class TeamNamespaces:
    """The team namespaces one hub has made, and the creations under way (one per namespace,
    shared by the spawns that need it). Kept in the hub's HubContext."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ready: dict[str, tuple[asyncio.Task[None], float]] = {}

    async def ensure(
        self,
        api: Any,
        namespace: str,
        team: str,
        catalog: Catalog,
        *,
        install: str,
        manage_quota: bool,
        isolate: tuple[Any, HubPeers] | None,
        request_timeout: float,
        retry_timeout: float,
    ) -> None:
        """Make `namespace` (and its quota, and its NetworkPolicy when `isolate` gives the
        NetworkingV1Api and the hub's peers) once; later calls wait for the same making.
        Raises ForeignNamespace when another install made it."""
        found = self._ready.get(namespace)
        now = self._clock()
        if found is not None:
            task, made = found
            failed = task.done() and (task.cancelled() or task.exception() is not None)
            if failed or (task.done() and now - made > REMEMBER_SECONDS):
                found = None
        if found is None:
            task = asyncio.get_running_loop().create_task(
                _make(
                    api,
                    namespace,
                    team,
                    catalog,
                    install,
                    manage_quota,
                    isolate,
                    request_timeout,
                    retry_timeout,
                )
            )
            self._ready[namespace] = (task, now)
        else:
            task = found[0]
        await asyncio.shield(task)


async def _make(
    api: Any,
    namespace: str,
    team: str,
    catalog: Catalog,
    install: str,
    manage_quota: bool,
    isolate: tuple[Any, HubPeers] | None,
    request_timeout: float,
    retry_timeout: float,
) -> None:
    manifest = make_namespace(namespace, labels=team_object_labels(team, install))
    await exponential_backoff(
        partial(_attempt, api, manifest, request_timeout),
        f"could not create the team namespace {namespace}",
        timeout=retry_timeout,
    )
    owner = install_of((await api.read_namespace(namespace)).metadata.labels)
    if owner is not None and owner != install:
        raise ForeignNamespace(namespace, owner, install)
    quota = team_quota_manifests(catalog, install).get(namespace)
    if manage_quota and quota is not None:
        await asyncio.wait_for(sync_quota(api, quota), retry_timeout)
    if isolate is not None:
        networking, peers = isolate
        policy = team_network_policy(namespace, team, peers)
        await asyncio.wait_for(sync_network_policy(networking, policy), retry_timeout)


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
