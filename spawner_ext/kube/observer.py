"""Which notebook pods run now, for reconciliation: pods labelled with a ledger session, in every
namespace (team namespaces included), read from the API server. A pod that lost its session label
is still listed (and adopted by reconciliation)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..ledger.reconcile import RunningServer
from ..wire import PROFILE_LABEL, read_pod


def running_pods(pods: Iterable[Mapping[str, Any]]) -> list[RunningServer]:
    """Pure: pod manifests (as the API serves them) -> the Running ones as RunningServers.
    A pod whose labels do not describe a server (edited by hand, another version) is skipped."""
    found = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        record = read_pod(meta.get("labels"), meta.get("annotations"))
        if record.summary is None:
            continue
        start = status.get("startTime") or meta.get("creationTimestamp")
        found.append(
            RunningServer.of(
                record.summary,
                user=record.user,
                server_name=record.server_name,
                session=record.session,
                started_at=_time(start),
                runtime_ref=f"{meta.get('namespace')}/{meta.get('name')}",
            )
        )
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

    async def running(self) -> list[RunningServer]:
        from .serialize import to_manifest

        pods = await self._api.list_pod_for_all_namespaces(label_selector=PROFILE_LABEL)
        return running_pods(to_manifest(pod) for pod in pods.items)

    async def stop(self, runtime_ref: str) -> None:
        """Delete a server's pod (JupyterHub notices on its next poll)."""
        from kubernetes_asyncio.client.rest import ApiException

        namespace, name = runtime_ref.split("/", 1)
        try:
            await self._api.delete_namespaced_pod(name, namespace, grace_period_seconds=30)
        except ApiException as exc:
            if exc.status != 404:
                raise
