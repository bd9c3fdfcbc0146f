"""A team namespace's NetworkPolicy and ResourceQuota against a real API server: created, left
alone when they are as the hub has them (the stored object read back matches the manifest),
replaced when they differ."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client, config
from testbed import ControlPlane

from spawner_ext.kube.netpol import POLICY_NAME, HubPeers, sync_network_policy, team_network_policy
from spawner_ext.kube.quotas import QUOTA_NAME, sync_quota

pytestmark = pytest.mark.k8s

PEERS = HubPeers(
    namespace="jhub",
    hub_ports=(8081, 10101),
    notebook_port=8888,
    pod_component="singleuser-server",
    install="jhub",
)


async def test_sync_creates_keeps_and_puts_back_the_policy(
    control_plane: ControlPlane, namespace: str
) -> None:
    manifest = team_network_policy(namespace, "vision", PEERS)
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{POLICY_NAME}"
    api_client = await config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    async with api_client:
        api = client.NetworkingV1Api(api_client)
        assert await sync_network_policy(api, manifest) == (
            f"{namespace}: created NetworkPolicy {POLICY_NAME}"
        )
        stored = control_plane.api.get(path)
        assert stored["spec"] == manifest["spec"]
        # Synced again, its own result: nothing to do (the served spec compares equal).
        assert await sync_network_policy(api, manifest) is None
        version = control_plane.api.get(path)["metadata"]["resourceVersion"]
        assert version == stored["metadata"]["resourceVersion"]
        # Opened by hand: put back.
        control_plane.api.merge_patch(path, {"spec": {"ingress": [{}]}})
        assert control_plane.api.get(path)["spec"]["ingress"] == [{}]
        assert "put back" in (await sync_network_policy(api, manifest) or "")
        assert control_plane.api.get(path)["spec"] == manifest["spec"]


async def test_sync_creates_keeps_and_updates_the_quota(
    control_plane: ControlPlane, namespace: str
) -> None:
    def quota(gpus: str) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": QUOTA_NAME, "namespace": namespace},
            "spec": {"hard": {"requests.nvidia.com/gpu": gpus}},
        }

    path = f"/api/v1/namespaces/{namespace}/resourcequotas/{QUOTA_NAME}"
    api_client = await config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    async with api_client:
        api = client.CoreV1Api(api_client)
        created = await sync_quota(api, quota("2"))
        assert created == f"{namespace}: created {{'requests.nvidia.com/gpu': '2'}}"
        version = control_plane.api.get(path)["metadata"]["resourceVersion"]
        assert await sync_quota(api, quota("2")) is None
        assert control_plane.api.get(path)["metadata"]["resourceVersion"] == version
        changed = await sync_quota(api, quota("3"))
        assert changed == (
            f"{namespace}: {{'requests.nvidia.com/gpu': '2'}} -> {{'requests.nvidia.com/gpu': '3'}}"
        )
        assert control_plane.api.get(path)["spec"]["hard"] == {"requests.nvidia.com/gpu": "3"}
