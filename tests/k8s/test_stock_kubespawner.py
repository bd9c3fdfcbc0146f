"""Stock KubeSpawner on the same test bed, configured as a z2jh chart would (a plain
`singleuser.profileList`, no catalog, no quotas): the spawn and stop flows work unchanged.

One hub serves the module; it spawns into a namespace of its own, onto the session's kwok H100
nodes and the process kubelet's L4 node.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hub import K8sHub, delete_namespaces, running_hub
from testbed import H100, L4, ControlPlane, Json, ProcessKubelet

pytestmark = pytest.mark.k8s

TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def gpu_profile(name: str, slug: str, product: str) -> Json:
    return {
        "display_name": name,
        "slug": slug,
        "kubespawner_override": {
            "extra_resource_limits": {"nvidia.com/gpu": "1"},
            "node_selector": {"nvidia.com/gpu.product": product},
            "tolerations": TOLERATIONS,
        },
    }


# z2jh's singleuser.profileList, as it lands in c.KubeSpawner.profile_list
PROFILE_LIST: list[Json] = [
    {"display_name": "CPU only", "slug": "cpu", "default": True},
    gpu_profile("One H100", "h100", H100.product),
    gpu_profile("One L4", "l4", L4.product),
]


@pytest.fixture(scope="module")
def hub(
    control_plane: ControlPlane,
    h100_nodes: list[str],
    process_kubelet: ProcessKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[K8sHub]:
    namespace = f"stock-{secrets.token_hex(3)}"
    try:
        with running_hub(
            control_plane,
            tmp_path_factory.mktemp("stock-hub"),
            spawner="kubespawner",
            namespace=namespace,
            extra_config=f"c.KubeSpawner.profile_list = {PROFILE_LIST!r}",
        ) as started:
            started.create_users(["ada", "lin"])
            yield started
    finally:
        delete_namespaces(control_plane, [namespace])


def pod_path(model: dict[str, Any]) -> str:
    state = model["state"]
    return f"/api/v1/namespaces/{state['namespace']}/pods/{state['pod_name']}"


def wait_gone(hub: K8sHub, plane: ControlPlane, path: str) -> None:
    hub.wait(f"{path} to be gone", lambda: plane.api.gone(path), 90)


def test_a_gpu_profile_spawns_on_a_node_of_its_gpu_and_stops(
    hub: K8sHub, control_plane: ControlPlane, h100_nodes: list[str]
) -> None:
    response = hub.spawn("ada", {"profile": "h100"})
    assert response.status_code in (201, 202), response.text
    model = hub.wait_ready("ada")
    pod = control_plane.api.get(pod_path(model))
    assert pod["metadata"]["namespace"] == hub.namespace
    assert pod["spec"]["nodeName"] in h100_nodes
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "gpuhub.io/team" not in pod["metadata"]["labels"]  # nothing of ours on stock pods
    hub.stop_server("ada")
    wait_gone(hub, control_plane, pod_path(model))


def test_a_real_server_answers_through_the_proxy_and_stops(
    hub: K8sHub, control_plane: ControlPlane, process_kubelet: ProcessKubelet
) -> None:
    response = hub.spawn("lin", {"profile": "l4"})
    assert response.status_code in (201, 202), response.text
    model = hub.wait_ready("lin")
    pod = control_plane.api.get(pod_path(model))
    assert pod["spec"]["nodeName"] == process_kubelet.node
    status = hub.session.get(f"{hub.url}user/lin/api/status", timeout=30)
    assert status.status_code == 200, status.text
    assert "kernels" in status.json()
    hub.stop_server("lin")
    wait_gone(hub, control_plane, pod_path(model))


def test_an_unknown_profile_is_refused_and_nothing_is_created(
    hub: K8sHub, control_plane: ControlPlane
) -> None:
    response = hub.spawn("ada", {"profile": "h200"})
    assert response.status_code >= 400, response.text
    assert hub.server("ada") is None
    pods = control_plane.api.get(f"/api/v1/namespaces/{hub.namespace}/pods")["items"]
    assert [p["metadata"]["name"] for p in pods] == []
