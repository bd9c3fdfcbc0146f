"""Which notebook pods run now, for reconciliation: pods labelled with a gpuhub profile, in every
namespace (team namespaces included), read from the API server, and of those the install's own.
A pod that lost its session label is still listed (and adopted by reconciliation)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..ledger.reconcile import RunningServer
from ..wire import PROFILE_LABEL, install_of, read_pod


@dataclass(frozen=True)
class Pods:
    """The running notebook pods an install sees, split by whose they are."""

    ours: list[RunningServer]
    foreign: list[str]
    """`namespace/pod` of pods another install made (never billed, stopped or deleted)."""
    unclaimed: list[str]
    """Pods from before installs were told apart that the hub does not list: not ours to
    bill or delete (another install's hub may list them)."""


def pods_of_install(
    pods: Iterable[Mapping[str, Any]], install: str, listed: Collection[str]
) -> Pods:
    """Pure: of the running notebook pods, this install's: those labelled with it, and those
    labelled with no install (made before installs were told apart) that its hub lists at
    `namespace/pod` (`listed`)."""
    ours: list[RunningServer] = []
    foreign: list[str] = []
    unclaimed: list[str] = []
    for server, owner in _running(pods):
        if owner == install or (owner is None and server.runtime_ref in listed):
            ours.append(server)
        elif owner is None:
            unclaimed.append(server.runtime_ref)
        else:
            foreign.append(server.runtime_ref)
    return Pods(ours, foreign, unclaimed)


def running_pods(pods: Iterable[Mapping[str, Any]]) -> list[RunningServer]:
    """Pure: pod manifests (as the API serves them) -> the Running ones as RunningServers,
    whatever install made them."""
    return [server for server, _owner in _running(pods)]


def _running(pods: Iterable[Mapping[str, Any]]) -> list[tuple[RunningServer, str | None]]:
    """The Running pods as RunningServers, with the install each names (None: none). A pod
    whose labels do not describe a server (edited by hand, another version) is skipped."""
    found = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        record = read_pod(meta.get("labels"), meta.get("annotations"))
        if record.summary is None:
            continue
        start = status.get("startTime") or meta.get("creationTimestamp")
        server = RunningServer.of(
            record.summary,
            user=record.user,
            server_name=record.server_name,
            session=record.session,
            started_at=_time(start),
            runtime_ref=f"{meta.get('namespace')}/{meta.get('name')}",
        )
        found.append((server, record.install))
    return found


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return datetime.now(UTC)


class PodObserver:
    """Observer over the Kubernetes API (needs permission to list pods in all namespaces)."""

    def __init__(self, api: Any) -> None:
        self._api = api

    async def running(self, install: str, listed: Collection[str]) -> Pods:
        """The running notebook pods, split by install (`listed`: `namespace/pod` of the
        servers the install's hub lists)."""
        from .serialize import list_items

        pods = await list_items(self._api.list_pod_for_all_namespaces, label_selector=PROFILE_LABEL)
        return pods_of_install(pods, install, listed)

    async def stop(self, runtime_ref: str, install: str) -> bool:
        """Delete a server's pod (JupyterHub notices on its next poll), if it is `install`'s:
        a pod labelled with another install, or with none, is left alone. False when it was
        not deleted."""
        from kubernetes_asyncio.client.rest import ApiException

        namespace, name = runtime_ref.split("/", 1)
        try:
            pod = await self._api.read_namespaced_pod(name, namespace)
            if install_of(pod.metadata.labels) != install:
                return False
            await self._api.delete_namespaced_pod(name, namespace, grace_period_seconds=30)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True
