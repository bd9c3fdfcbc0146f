"""Where the gpuhub service sees servers run: local processes (the hub's listing of spawner states,
and the machine's processes) or Kubernetes pods (the API server). A Runtime lists them, says
where the hub's listing puts each server, ends a server the hub does not know, and keeps what the
runtime itself enforces (ResourceQuotas) in sync with the catalog."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..catalog import Catalog
from ..ledger.reconcile import RunningServer
from ..local.observer import end_process_group, orphans, running_from_states
from ..wire import ServerEnv, read_state
from .hubapi import HubServer

log = logging.getLogger("gpuhub.service")


class Runtime(Protocol):
    name: str

    async def running(self, listed: Sequence[HubServer]) -> list[RunningServer]:
        """The servers that run now; `listed` is what the hub listed just before."""
        ...

    def runtime_ref(self, server: HubServer) -> str | None:
        """Where the hub's spawner says `server` runs, or None while it does not know yet."""
        ...

    async def end(self, runtime_ref: str) -> None:
        """End a server the hub does not know (its process group, its pod)."""
        ...

    async def sync(self, catalog: Catalog) -> None:
        """Bring what the runtime enforces in line with the catalog (nothing, or quotas)."""
        ...

    async def capacity(self, catalog: Catalog) -> dict[str, tuple[int, int]]:
        """GPU type -> (GPUs the install's servers can get, of those held by others' pods), as
        far as the runtime knows; {} when the hub records it (local mode)."""
        ...


class LocalRuntime:
    name = "local"

    def __init__(self, processes: Callable[[], Iterable[tuple[int, ServerEnv]]]) -> None:
        """`processes`: this hub's live server processes (`live_servers` of its API URL)."""
        self._processes = processes

    async def running(self, listed: Sequence[HubServer]) -> list[RunningServer]:
        found = running_from_states((s.user, s.name, s.state) for s in listed)
        pids = {pid for s in listed if isinstance(pid := s.state.get("pid"), int)}
        return found + orphans(self._processes(), pids)

    def runtime_ref(self, server: HubServer) -> str | None:
        pid = server.state.get("pid")
        return f"local:{pid}" if isinstance(pid, int) and pid > 0 else None

    async def end(self, runtime_ref: str) -> None:
        end_process_group(runtime_ref)

    async def sync(self, catalog: Catalog) -> None:
        return None

    async def capacity(self, catalog: Catalog) -> dict[str, tuple[int, int]]:
        return {}  # the hub records its machine's GPUs (local/spawner.py)


class KubeRuntime:
    name = "kubernetes"

    def __init__(self, api: Any, install: str, *, manage_quotas: bool = True) -> None:
        self._api = api
        self.install = install
        self._manage_quotas = manage_quotas
        self._told: set[str] = set()

    async def running(self, listed: Sequence[HubServer]) -> list[RunningServer]:
        """This install's running pods (the ones it labelled, and unlabelled ones its hub
        lists); others' are logged once each and left alone."""
        from ..kube.observer import PodObserver

        refs = {ref for s in listed if (ref := self.runtime_ref(s))}
        pods = await PodObserver(self._api).running(self.install, refs)
        for ref in pods.foreign:
            if ref in refs:  # the hub lists it, yet another install labelled it
                self._tell(
                    ref,
                    f"gpuhub: the hub lists pod {ref}, but it is labelled with another install; "
                    f"is the hub's c.GPUSpawnerMixin.install the service's --install "
                    f"({self.install})? It is neither billed nor ended",
                    logging.ERROR,
                )
            else:
                self._tell(ref, f"gpuhub: pod {ref} is another install's; left alone")
        for ref in pods.unclaimed:
            self._tell(
                ref,
                f"gpuhub: pod {ref} carries no install label and this hub does not list it: "
                "left alone (not billed, not ended). A server from before installs were told "
                "apart that no hub lists any more holds its GPUs until deleted by hand "
                "(kubectl get pods -A -l 'gpuhub.io/profile,!gpuhub.io/install')",
                logging.WARNING,
            )
        return pods.ours

    def _tell(self, ref: str, message: str, level: int = logging.INFO) -> None:
        """Log `message` about a pod once per service process."""
        if ref not in self._told:
            self._told.add(ref)
            log.log(level, message)

    def runtime_ref(self, server: HubServer) -> str | None:
        ours = read_state(server.state).runtime_ref
        namespace, pod = server.state.get("namespace"), server.state.get("pod_name")
        if isinstance(namespace, str) and isinstance(pod, str):
            return f"{namespace}/{pod}"
        return ours

    async def end(self, runtime_ref: str) -> None:
        from ..kube.observer import PodObserver

        if not await PodObserver(self._api).stop(runtime_ref, self.install):
            log.warning(
                "gpuhub: pod %s is not this install's (or is gone); not deleted", runtime_ref
            )

    async def sync(self, catalog: Catalog) -> None:
        from ..kube.quotas import sync_quotas

        if not self._manage_quotas:
            return
        for change in await sync_quotas(self._api, catalog, self.install):
            log.info("gpuhub: ResourceQuota %s", change)

    async def capacity(self, catalog: Catalog) -> dict[str, tuple[int, int]]:
        """The matching nodes' GPUs (kube/capacity.py). Without permission to list nodes the
        wait-list counts quotas only, said once in the log."""
        from kubernetes_asyncio.client.rest import ApiException

        from ..kube.capacity import read_capacity

        try:
            return await read_capacity(self._api, catalog, self.install)
        except ApiException as exc:
            if exc.status != 403:
                raise
            self._tell(
                "nodes",
                "gpuhub: may not list nodes, so the wait-list cannot count free GPUs (only "
                "quotas); give the service's role get/list on nodes (helm-values/gpuhub)",
                logging.WARNING,
            )
            return {}


async def kube_api_client() -> Any:
    """A CoreV1Api from the in-cluster service account, or from KUBECONFIG outside a cluster."""
    import os

    from kubernetes_asyncio import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.CoreV1Api(client.ApiClient())
    api_client = await config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CoreV1Api(api_client)
