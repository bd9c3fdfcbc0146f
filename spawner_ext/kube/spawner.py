"""GPUKubeSpawner: KubeSpawner with the catalog's profiles, team quotas and GPU placement.

Profiles are not applied by setting attributes one by one on the long-lived spawner and leaving
them (KubeSpawner #546, #691; JupyterHub #3592). Every spawn starts from the configured settings:
settings a previous spawn overrode are restored first, then this spawn's frozen plan is applied.
GPU limits, placement, labels and annotations never go through spawner attributes at all: they are
added to the pod manifest from the plan by pure functions (placement.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientError
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from tornado import web
from traitlets import Bool, Int, List, default

from ..catalog import Catalog
from ..catalog.frozen import thaw
from ..end_reason import EndReason
from ..ledger.store import Ledger
from ..policy.request import SpawnRefused
from ..spawners.mixin import GPUSpawnerMixin, refusal
from ..wire import install_labels
from .capacity import read_capacity
from .namespaces import ForeignNamespace, TeamNamespaces
from .netpol import HubPeers
from .placement import apply_placement, made_by_this_spawn, placement
from .progress import explain
from .serialize import from_manifest, to_manifest


class GPUKubeSpawner(GPUSpawnerMixin, KubeSpawner):  # type: ignore[misc]
    """Spawns notebook pods holding exactly the GPUs of the chosen catalog profile."""

    manage_resource_quotas = Bool(
        True,
        config=True,
        help="Keep a ResourceQuota on requests.<gpu resource> in each team namespace in sync "
        "with the catalog (when the hub makes the namespace, and every reconciliation tick of "
        "the gpuhub service), so the API server refuses pods over quota even if the hub's "
        "admission were bypassed.",
    )

    manage_network_policies = Bool(
        True,
        config=True,
        help="Keep a NetworkPolicy (gpuhub-singleuser) in each team namespace, isolating its "
        "notebook pods as z2jh's singleuser.networkPolicy isolates the ones in the hub's "
        "namespace: connections in only from the hub's and the proxy's pods (labelled "
        "hub.jupyter.org/network-access-singleuser, as z2jh labels them) in the hub's namespace; "
        "out only to the hub (hub_ports), the proxy, DNS and non-private addresses. Needs a "
        "network plugin that enforces NetworkPolicies.",
    )

    hub_ports = List(
        Int(),
        [8081],
        config=True,
        help="Ports of the hub's pod that notebook pods in team namespaces may connect to "
        "(the hub API; the z2jh configuration adds the gpuhub service's port).",
    )

    _configured: dict[str, Any] | None = None

    @default("activity_url")
    def _no_activity_url(self) -> str:
        # The service's registered url (127.0.0.1 on the hub's pod) is not reachable from
        # notebook pods: set activity_url to an address they reach (e.g. the hub Service).
        return ""

    async def load_user_options(self) -> None:
        """Called by KubeSpawner first thing in start(): validate, then apply the plan."""
        plan = await self.plan_spawn()
        overrides = dict(thaw(plan.overrides))
        if plan.namespace:
            overrides["namespace"] = plan.namespace
        self._start_from_configured(overrides)
        self._apply_overrides(overrides)
        self.dns_name = self.dns_name_template.format(namespace=self.namespace, name=self.pod_name)
        if plan.namespace and not self.enable_user_namespaces:
            await self._ensure_namespace(plan.namespace, plan.team or "")

    async def _ensure_namespace(self, namespace: str, team: str) -> None:
        """Make the team's namespace (once per hub); one another install made refuses the
        spawn with what to change."""
        namespaces = self.context.part(TeamNamespaces, TeamNamespaces)
        try:
            await namespaces.ensure(
                self.api,
                namespace,
                team,
                self.catalog_version().catalog,
                install=self.install,
                manage_quota=self.manage_resource_quotas,
                isolate=self._isolation(),
                request_timeout=self.k8s_api_request_timeout,
                retry_timeout=self.k8s_api_request_retry_timeout,
            )
        except ForeignNamespace as exc:
            self.log.error("gpuhub: %s", exc)
            raise refusal(SpawnRefused(str(exc), reason="namespace")) from None

    def _isolation(self) -> tuple[Any, HubPeers] | None:
        """What a team namespace's NetworkPolicy needs, or None when they are not managed."""
        if not self.manage_network_policies:
            return None
        peers = HubPeers(
            # The configured namespace: the hub's (this spawn put the team's in its place).
            namespace=str((self._configured or {}).get("namespace", self.namespace)),
            hub_ports=tuple(self.hub_ports),
            notebook_port=self.port,
            pod_component=self.component_label,
            install=self.install,
        )
        return shared_client("NetworkingV1Api"), peers

    def _start_from_configured(self, overrides: dict[str, Any]) -> None:
        """Put back every setting an earlier spawn overrode, and give the settings this spawn
        overrides private copies (KubeSpawner merges dict overrides into the value in place,
        which would otherwise change the configured value itself)."""
        configured = self._configured = self._configured or {}
        for name in overrides:
            if name not in configured and self.has_trait(name):
                configured[name] = copy.deepcopy(getattr(self, name))
        for name, value in configured.items():
            setattr(self, name, copy.deepcopy(value))

    async def get_pod_manifest(self) -> Any:
        pod = await super().get_pod_manifest()
        if self.plan is None:
            return pod
        where = placement(self.plan, self.install, self.name, self.usage_session)
        manifest = apply_placement(to_manifest(pod), where)
        return from_manifest(manifest, "V1Pod")

    def get_pvc_manifest(self) -> Any:
        """KubeSpawner's PVC, labelled with the install that made it (a PVC of the same name
        is reused: team namespaces are per install, see ForeignNamespace)."""
        pvc = super().get_pvc_manifest()
        pvc.metadata.labels = {**(pvc.metadata.labels or {}), **install_labels(self.install)}
        return pvc

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        async for event in super().progress():
            message = explain(event, self.plan, self.start_timeout)
            yield {**event, "message": message} if message else event

    # --- metering: billing runs from pod Running (start returns) until the pod is gone ------

    def start(self) -> Any:
        self._scale_up_timeout()
        self._start_future = asyncio.ensure_future(self._metered_start())
        return self._start_future

    _configured_start_timeout: int | None = None

    def _scale_up_timeout(self) -> None:
        """A GPU type with a cluster autoscaler behind it (catalog `autoscaled`) may pend until a
        node comes: its spawns get `scale_up_timeout` as their start_timeout when that is longer.
        Set here, before start() returns, because JupyterHub reads start_timeout then."""
        if self._configured_start_timeout is None:
            self._configured_start_timeout = int(self.start_timeout)  # type: ignore[has-type]
        self.start_timeout = self._configured_start_timeout
        try:
            plan = self.resolve(self.user_options)
        except web.HTTPError:
            return  # refused again, with its message, in start itself
        kind = plan.gpu_type
        if kind is not None and kind.autoscaled and kind.scale_up_timeout is not None:
            self.start_timeout = max(self.start_timeout, int(kind.scale_up_timeout.total_seconds()))

    _starting = False
    """True while this spawner's own start runs (KubeSpawner's `_start`)."""

    async def _metered_start(self) -> Any:
        self._starting, self._create_timed_out, self._create = True, False, None
        try:
            result = await self._start()
        except BaseException:
            self._abandon_create()
            await self.metering_ended(EndReason.FAILED)
            raise
        finally:
            self._starting = False
        await self.metering_started(f"{self.namespace}/{self.pod_name}")
        return result

    _create_timed_out = False
    """True once a pod create of this start ended without an answer: that pod may exist all
    the same."""
    _create: asyncio.Task[Any] | None = None
    """This start's pod create that has not answered yet (its try's timeout passed)."""

    async def _make_create_pod_request(self, pod: Any, request_timeout: int) -> bool:
        """KubeSpawner's pod create (one try of its retry loop), without abandoning a create
        the API server is still working on, and keeping the pod this spawn's own earlier try
        made.

        Under a storm of creates the API server, or the hub's own busy event loop, answers
        later than `request_timeout`. KubeSpawner then cancels the request and tries again.
        Both cost a GPU server more than time. The API server's ResourceQuota admission counts
        a create against the team's quota before the pod is stored; a create whose client went
        away (cancelled after its admission) or that meets a pod of the name (409) stays counted
        without a pod until Kubernetes recounts, minutes later. Meanwhile the namespace's quota
        refuses pods the ledger admitted (403 "exceeded quota": 94 and 208 lost spawns in two
        1,000-server storms, benchmarks/scale.py).

        So a try whose timeout passes leaves its request running, and the next try waits for
        that request's answer instead of sending another. A create whose answer is lost (the
        connection broke) may have made the pod: the next try looks before it creates. A pod
        of this spawn's session and install (`made_by_this_spawn`) is the one asked for; any
        other pod of the name goes KubeSpawner's way (deleted, then created again; see
        `stop`)."""
        name = pod.metadata.name
        if self._create is None:
            if self._create_timed_out:
                read, found = await self._pod_of_the_name(name, request_timeout)
                if not read:
                    return False  # not known whether it exists: the next try looks again
                if found is not None:
                    return await self._keep_or_replace(found, name)
            # KubeSpawner's words, so that logs read the same with either spawner
            self.log.info(f"Attempting to create pod {name}, with timeout {request_timeout}")
            self._create = asyncio.ensure_future(
                self.api.create_namespaced_pod(self.namespace, pod)
            )
        else:
            self.log.info(
                "gpuhub: %s waits for the answer to its create of pod %s", self._log_name, name
            )
        create = self._create
        done, _ = await asyncio.wait([create], timeout=request_timeout)
        if not done:
            return False  # still in the API server's hands: the next try waits for it
        self._create = None
        return await self._created(create, name, request_timeout)

    async def _created(self, create: asyncio.Task[Any], name: str, request_timeout: int) -> bool:
        """What a create that answered means for the try: True when the pod is made."""
        from kubernetes_asyncio.client.rest import ApiException

        exc = create.exception()
        if exc is None:
            return True
        if isinstance(exc, ApiException):
            if exc.status != 409:
                self.log.error("gpuhub: creating pod %s failed: %s", name, exc)
                raise exc
        elif isinstance(exc, OSError | TimeoutError | ClientError):
            # no answer: the API server may have made the pod all the same
            self.log.warning("gpuhub: creating pod %s got no answer: %r", name, exc)
            self._create_timed_out = True
            return False
        else:
            raise exc
        read, found = await self._pod_of_the_name(name, request_timeout)
        if not read or found is None:
            self._create_timed_out = True
            return False  # unread, or gone meanwhile: the next try looks again
        return await self._keep_or_replace(found, name)

    def _abandon_create(self) -> None:
        """The start failed or was cancelled: a create still waiting for its answer is given up
        (the pod it may make is the hub's to delete with the failed server, or the service's
        to find as a stray)."""
        create, self._create = self._create, None
        if create is not None and not create.done():
            create.cancel()

    async def _keep_or_replace(self, found: dict[str, Any], name: str) -> bool:
        """A pod of the server's name exists: True when it is this spawn's own; otherwise it is
        deleted (KubeSpawner's way) and False, to create it again."""
        if made_by_this_spawn(found, self.usage_session, self.install):
            self.log.info(
                "gpuhub: %s keeps pod %s, which its own earlier create made",
                self._log_name,
                name,
            )
            return True
        self.log.info("gpuhub: %s found another pod named %s; replacing it", self._log_name, name)
        await self.stop(True)
        return False

    async def _pod_of_the_name(
        self, name: str, request_timeout: int
    ) -> tuple[bool, dict[str, Any] | None]:
        """(whether it could be read, the pod named `name` in this spawn's namespace or None
        when there is none). The pod reflector's copy when it is this spawn's pod, else the API
        server's answer (the reflector may lag behind a create)."""
        from kubernetes_asyncio.client.rest import ApiException

        reflected = self.pod_reflector.pods.get(f"{self.namespace}/{name}")
        if reflected is not None and made_by_this_spawn(
            reflected, self.usage_session, self.install
        ):
            return True, dict(reflected)
        try:
            response = await asyncio.wait_for(
                self.api.read_namespaced_pod(name, self.namespace, _preload_content=False),
                request_timeout,
            )
            if response.status != 200:  # unpreloaded, an error answer raises nothing
                response.release()
                return response.status == 404, None
            found: dict[str, Any] = json.loads(await response.read())
        except (TimeoutError, ApiException, ValueError):
            return False, None
        return True, found

    async def stop(self, now: bool = False) -> None:
        if now and self._starting:
            # Our own create's retry inside start (JupyterHub never stops with now=True):
            # creating the pod found another pod of its name (409; a pod this spawn's own
            # earlier create made is kept instead, see _make_create_pod_request); it deletes
            # that pod and creates it again. The admitted session goes on, unstarted: billing
            # starts when the pod that start returns runs. Closing it here left the server
            # running unbilled and outside its team's quota (seen in benchmarks/scale.py's
            # storms).
            self.log.info("gpuhub: %s replaces a pod of its name; billing waits", self._log_name)
            await KubeSpawner.stop(self, now=now)
            return
        await super().stop(now=now)

    async def refresh_capacity(self, catalog: Catalog) -> bool:
        """The matching nodes' free GPUs now (kube/capacity.py), into the ledger: asked when
        admission found none free on the gpuhub service's last count, which may be a tick old
        (a workload or a filler pod just went, a node just came)."""
        from kubernetes_asyncio.client.rest import ApiException

        try:
            found = await read_capacity(self.api, catalog, self.install)
        except (ApiException, OSError) as exc:
            self.log.warning("gpuhub: could not count the cluster's free GPUs: %s", exc)
            return False

        def record(ledger: Ledger) -> None:
            for gpu_type, (total, elsewhere) in found.items():
                ledger.set_capacity(gpu_type, total, elsewhere)

        await self.context.lane.call("count of the cluster's free GPUs", record)
        return bool(found)

    def gone_reason(self) -> EndReason:
        gone = f"{self.namespace}/{self.pod_name}" not in self.pod_reflector.pods
        return EndReason.NODE_LOST if gone else EndReason.STOPPED
