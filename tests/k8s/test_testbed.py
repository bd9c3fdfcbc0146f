"""The test control plane behaves like a GPU cluster: scheduling by GPU product and count, GPU
quotas, namespace deletion, and pods that really run on the process kubelet."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from process_kubelet import Devices, container_argv, container_env, expand
from testbed import (
    A100,
    H100,
    L4,
    ApiError,
    ControlPlane,
    GpuNodeSpec,
    Json,
    ProcessKubelet,
    gpu_node_manifest,
    gpu_pod_manifest,
    wait_for,
)


def pods_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def create_pod(plane: ControlPlane, namespace: str, manifest: Json) -> Json:
    return plane.api.create(pods_path(namespace), manifest)


def wait_running(plane: ControlPlane, namespace: str, name: str, timeout: float = 60) -> Json:
    def running() -> Json | None:
        pod = plane.api.get(pods_path(namespace, name))
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    return wait_for(f"pod {namespace}/{name} Running", running, timeout)


def wait_gone(plane: ControlPlane, path: str, timeout: float = 60) -> None:
    wait_for(f"{path} to be deleted", lambda: plane.api.gone(path), timeout)


@pytest.mark.k8s
def test_control_plane_is_ready(control_plane: ControlPlane) -> None:
    assert control_plane.api.get("/readyz")["text"] == "ok"
    assert control_plane.api.get("/version")["gitVersion"].startswith("v1.")
    account = control_plane.api.get("/api/v1/namespaces/default/serviceaccounts/default")
    assert account["metadata"]["name"] == "default"
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert control_plane.kubeconfig.is_file()
    assert set(control_plane.logs) >= {"etcd", "kube-apiserver", "kube-scheduler", "kwok"}


@pytest.mark.k8s
async def test_kubeconfig_works_with_kubespawners_client(
    control_plane: ControlPlane, h100_nodes: list[str]
) -> None:
    """KubeSpawner talks to Kubernetes through kubernetes_asyncio; our kubeconfig suits it."""
    from kubernetes_asyncio import client, config

    api_client = await config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    async with api_client:
        nodes = await client.CoreV1Api(api_client).list_node()
    names = {node.metadata.name for node in nodes.items}
    assert set(h100_nodes) <= names


@pytest.mark.k8s
def test_gpu_nodes_offer_gpus_and_mig_slices(
    control_plane: ControlPlane, h100_nodes: list[str]
) -> None:
    node = control_plane.api.get(f"/api/v1/nodes/{h100_nodes[0]}")
    for resources in (node["status"]["capacity"], node["status"]["allocatable"]):
        assert resources["nvidia.com/gpu"] == "8"
        assert resources["nvidia.com/mig-1g.10gb"] == "7"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100.product
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]


@pytest.mark.k8s
def test_gpu_pod_lands_on_a_node_of_its_product_and_runs(
    control_plane: ControlPlane, namespace: str, h100_nodes: list[str], a100_nodes: list[str]
) -> None:
    for index in range(3):
        create_pod(control_plane, namespace, gpu_pod_manifest(f"nb-{index}", H100.product))
    for index in range(3):
        pod = wait_running(control_plane, namespace, f"nb-{index}")
        assert pod["spec"]["nodeName"] in h100_nodes
        assert pod["status"]["podIP"]
        assert pod["status"]["containerStatuses"][0]["ready"] is True
    create_pod(control_plane, namespace, gpu_pod_manifest("nb-a100", A100.product, gpus=4))
    assert wait_running(control_plane, namespace, "nb-a100")["spec"]["nodeName"] in a100_nodes


@pytest.mark.k8s
def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    control_plane: ControlPlane, namespace: str, h100_nodes: list[str]
) -> None:
    create_pod(control_plane, namespace, gpu_pod_manifest("too-big", H100.product, gpus=9))

    def unschedulable() -> Json | None:
        pod = control_plane.api.get(pods_path(namespace, "too-big"))
        for condition in pod.get("status", {}).get("conditions", []):
            if condition["type"] == "PodScheduled" and condition["reason"] == "Unschedulable":
                return pod
        return None

    pod = wait_for("the scheduler to give up on too-big", unschedulable)
    assert pod["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in json.dumps(pod["status"]["conditions"])

    def failed_scheduling() -> list[Json] | None:
        events = control_plane.api.get(
            f"/api/v1/namespaces/{namespace}/events",
            fieldSelector="involvedObject.name=too-big,reason=FailedScheduling",
        )["items"]
        return events or None

    events = wait_for("a FailedScheduling event", failed_scheduling)
    assert "Insufficient nvidia.com/gpu" in events[0]["message"]


@pytest.mark.k8s
def test_gpu_quota_rejects_a_pod_over_it(
    control_plane: ControlPlane, namespace: str, h100_nodes: list[str]
) -> None:
    control_plane.api.create(
        f"/api/v1/namespaces/{namespace}/resourcequotas",
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "gpus"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "2"}},
        },
    )
    # Admission trusts a quota only once the resource-quota controller has filled in its status.
    wait_for(
        "the quota controller to count usage",
        lambda: (
            control_plane.api.get(f"/api/v1/namespaces/{namespace}/resourcequotas/gpus")
            .get("status", {})
            .get("hard")
        ),
    )
    create_pod(control_plane, namespace, gpu_pod_manifest("fits", H100.product, gpus=2))
    with pytest.raises(ApiError) as rejected:
        create_pod(control_plane, namespace, gpu_pod_manifest("over", H100.product, gpus=1))
    assert rejected.value.status == 403
    assert rejected.value.body["reason"] == "Forbidden"
    message = rejected.value.body["message"]
    assert "exceeded quota: gpus" in message
    assert "requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=2" in message


def http_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        status: int = response.status
        return status


def process_pod(name: str, node: str, command: list[str], env: list[Json] | None = None) -> Json:
    manifest = gpu_pod_manifest(name, L4.product, command=command)
    manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    manifest["spec"]["containers"][0]["env"] = env or []
    return manifest


@pytest.mark.k8s
def test_process_kubelet_runs_pods_at_their_own_ips_and_stops_them_on_delete(
    control_plane: ControlPlane, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    env = [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    command = [sys.executable, "-m", "http.server", "8000", "--bind", "$(MY_IP)"]
    names = ["web-0", "web-1"]  # the same port: each pod has an address of its own
    for name in names:
        create_pod(control_plane, namespace, process_pod(name, process_kubelet.node, command, env))
    pods = [wait_running(control_plane, namespace, name) for name in names]
    ips = [pod["status"]["podIP"] for pod in pods]
    assert len(set(ips)) == 2
    for ip in ips:
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(process_kubelet.pod_cidr)
        assert wait_for(f"http://{ip}:8000/", functools.partial(http_get, f"http://{ip}:8000/"))
    pids = [
        int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
        for pod in pods
    ]

    control_plane.api.delete(pods_path(namespace, "web-0"))
    wait_gone(control_plane, pods_path(namespace, "web-0"), timeout=30)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    with pytest.raises(urllib.error.URLError):
        http_get(f"http://{ips[0]}:8000/")
    assert http_get(f"http://{ips[1]}:8000/") == 200
    log = process_kubelet.pod_log(namespace, "web-0").read_text()
    assert f"Serving HTTP on {ips[0]} port 8000" in log


@pytest.mark.k8s
def test_process_kubelet_reports_a_failed_process(
    control_plane: ControlPlane, namespace: str, process_kubelet: ProcessKubelet
) -> None:
    command = [sys.executable, "-c", "raise SystemExit(3)"]
    create_pod(control_plane, namespace, process_pod("fails", process_kubelet.node, command))

    def failed() -> Json | None:
        pod = control_plane.api.get(pods_path(namespace, "fails"))
        return pod if pod.get("status", {}).get("phase") == "Failed" else None

    pod = wait_for("pod fails to fail", failed)
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


@pytest.mark.k8s
def test_deleting_a_namespace_removes_its_pods(
    control_plane: ControlPlane, namespace: str, h100_nodes: list[str]
) -> None:
    for index in range(2):
        create_pod(control_plane, namespace, gpu_pod_manifest(f"nb-{index}", H100.product))
    for index in range(2):
        wait_running(control_plane, namespace, f"nb-{index}")
    control_plane.api.delete(f"/api/v1/namespaces/{namespace}")
    wait_gone(control_plane, f"/api/v1/namespaces/{namespace}", timeout=90)
    for index in range(2):
        wait_gone(control_plane, pods_path(namespace, f"nb-{index}"), timeout=5)


@pytest.mark.k8s
def test_process_kubelets_get_distinct_nodes_and_pod_ranges(
    control_plane: ControlPlane, process_kubelet: ProcessKubelet
) -> None:
    second = control_plane.start_process_kubelet()
    try:
        assert second.node != process_kubelet.node
        assert second.pod_cidr != process_kubelet.pod_cidr
    finally:
        control_plane.stop_process_kubelet(second)
    wait_gone(control_plane, f"/api/v1/nodes/{second.node}")


# --- pure parts of the process kubelet ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("--bind=$(MY_IP)", "--bind=127.101.0.2"),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(MY_IP)", "$(MY_IP)"),
        ("no references", "no references"),
    ],
)
def test_expand_follows_kubernetes_variable_references(value: str, expected: str) -> None:
    assert expand(value, {"MY_IP": "127.101.0.2"}) == expected


POD: Json = {
    "metadata": {"name": "jupyter-alice", "namespace": "team-ml", "labels": {"team": "ml"}},
    "spec": {"nodeName": "gpu-proc-0", "containers": [{"name": "notebook"}]},
}


def test_container_env_resolves_the_downward_api_and_puts_wildcards_on_the_pod_ip() -> None:
    container = {
        "name": "notebook",
        "env": [
            {"name": "JUPYTERHUB_SERVICE_URL", "value": "http://0.0.0.0:8888/user/alice/"},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}},
            {"name": "URL", "value": "http://$(IP):8888"},
        ],
    }
    refs = {("secretKeyRef", "hub", "token"): "s3cret"}
    assert container_env(POD, container, "127.101.0.2", refs) == {
        "POD_IP": "127.101.0.2",
        "HOSTNAME": "jupyter-alice",
        "JUPYTERHUB_SERVICE_URL": "http://127.101.0.2:8888/user/alice/",
        "TEAM": "ml",
        "NODE": "gpu-proc-0",
        "IP": "127.101.0.2",
        "TOKEN": "s3cret",
        "URL": "http://127.101.0.2:8888",
    }


@pytest.mark.parametrize(
    ("command", "args", "env", "expected"),
    [
        (["jupyterhub-singleuser"], [], {}, ["jupyterhub-singleuser", "--ip=127.101.0.2"]),
        (
            ["jupyterhub-singleuser"],
            [],
            {"JUPYTERHUB_SERVICE_URL": "http://127.101.0.2:8888/"},
            ["jupyterhub-singleuser"],
        ),
        (["jupyter"], ["lab", "--ip=0.0.0.0"], {}, ["jupyter", "lab", "--ip=127.101.0.2"]),
        (
            ["python", "-m", "http.server"],
            ["--bind", "$(POD_IP)"],
            {"POD_IP": "127.101.0.2"},
            ["python", "-m", "http.server", "--bind", "127.101.0.2"],
        ),
        ([], [], {}, []),
    ],
)
def test_container_argv(
    command: list[str], args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    container = {"name": "notebook", "command": command, "args": args}
    assert container_argv(container, env, "127.101.0.2") == expected


def test_gpu_node_manifest_carries_gpus_labels_and_taint() -> None:
    node = gpu_node_manifest("gpu-kwok-0", H100, {"kwok.x-k8s.io/node": "fake"})
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "7"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-kwok-0"
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]


def test_process_kubelet_devices_give_gpus_and_mig_slices_of_their_own(tmp_path: Path) -> None:
    spec = GpuNodeSpec(product="NVIDIA-A100-SXM4-80GB", gpus=1)  # and 7 MIG 1g.10gb slices
    devices = Devices("n", gpu_node_manifest("n", spec, {}), tmp_path)
    if not devices.env:
        pytest.skip("no gcc: the process kubelet gives pods no GPUs")
    config = devices.config.read_text()
    assert "uuid=GPU-n-0\t" in config
    assert config.count("\tmig_mode=1") == 1, "one parent GPU in MIG mode"
    assert config.count("mig\tparent=1\t") == 7
    assert "name=NVIDIA A100 SXM4 80GB MIG 1g.10gb\tmemory_total=10737418240" in config

    def limits(resource: str) -> Json:
        return {"resources": {"limits": {resource: "1"}}}

    mig, gpu = "nvidia.com/mig-1g.10gb", "nvidia.com/gpu"
    assert devices.allocate("a", limits(mig))["NVIDIA_VISIBLE_DEVICES"] == "MIG-n-1g.10gb-0"
    assert devices.allocate("b", limits(mig))["NVIDIA_VISIBLE_DEVICES"] == "MIG-n-1g.10gb-1"
    assert devices.allocate("c", limits(gpu))["NVIDIA_VISIBLE_DEVICES"] == "GPU-n-0"
    assert devices.allocate("d", limits(gpu)) == {}, "no GPU is left"
    devices.release("a")
    assert devices.allocate("e", limits(mig))["NVIDIA_VISIBLE_DEVICES"] == "MIG-n-1g.10gb-2"
