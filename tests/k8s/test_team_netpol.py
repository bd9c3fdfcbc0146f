"""A team namespace's NetworkPolicy against a real API server: created, left alone when it is as
the hub has it (the stored policy read back equals the manifest), put back when changed by hand."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client, config
from testbed import ControlPlane

from spawner_ext.kube.netpol import POLICY_NAME, HubPeers, sync_network_policy, team_network_policy

pytestmark = pytest.mark.k8s

PEERS = HubPeers(
    namespace="jhub", hub_ports=(8081, 10101), notebook_port=8888, pod_component="singleuser-server"
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
