"""Which notebook pods run now, for reconciliation: pods labelled with a ledger session, in every
namespace (team namespaces included), read from the API server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ..ledger.reconcile import RunningServer

SESSION_LABEL = "gpuhub.io/session"


def running_pods(pods: Iterable[Mapping[str, Any]]) -> list[RunningServer]:
    """Pure: pod manifests (as the API serves them) -> the Running ones as RunningServers."""
    found = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        try:
            session = int(labels.get(SESSION_LABEL, ""))
        except ValueError:
            session = None
        try:
            price = Decimal(notes.get("gpuhub.io/price-per-hour", "0"))
        except InvalidOperation:
            price = Decimal(0)
        start = status.get("startTime") or meta.get("creationTimestamp")
        team = labels.get("gpuhub.io/team")
        gpu_type = labels.get("gpuhub.io/gpu-type")
        found.append(
            RunningServer(
                session_id=session,
                user=notes.get("gpuhub.io/user") or notes.get("hub.jupyter.org/username", ""),
                server_name=notes.get("hub.jupyter.org/servername", ""),
                team=None if team in (None, "none") else team,
                profile=labels.get("gpuhub.io/profile", ""),
                gpu_type=None if gpu_type in (None, "none") else gpu_type,
                gpu_count=int(labels.get("gpuhub.io/gpu-count", "0") or 0),
                price_per_hour=price,
                currency=notes.get("gpuhub.io/currency", "USD"),
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

        pods = await self._api.list_pod_for_all_namespaces(label_selector=SESSION_LABEL)
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
