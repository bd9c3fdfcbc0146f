"""GPUKubeSpawner's settings across spawns of one long-lived spawner (no API calls are made:
the catalog has no team namespaces, and only the manifest is built)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.config import kube_config
from tornado import web

from spawner_ext.kube.spawner import GPUKubeSpawner

ROOT = Path(__file__).parents[2]
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


@pytest.fixture
async def spawner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GPUKubeSpawner:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    # kubernetes_asyncio reads $KUBECONFIG once, at import; point it at a cluster that is never
    # contacted (building manifests makes no API calls).
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    catalog = (ROOT / "hub_config" / "catalog.yaml").read_text()
    (tmp_path / "catalog.yaml").write_text(
        catalog.replace("namespace_template: gpuhub-{team}", "namespace_template: null")
    )
    user = SimpleNamespace(
        name="ada", groups=[], admin=False, id=1, url="/user/ada/", escaped_name="ada"
    )
    hub = SimpleNamespace(
        public_host="", url="http://hub/", base_url="/hub/", api_url="http://hub/hub/api"
    )
    return GPUKubeSpawner(
        user=user,
        hub=hub,
        catalog_path=str(tmp_path / "catalog.yaml"),
        extra_labels={"configured": "yes"},
        cpu_limit=1,
        ledger_url="",  # metering is tested in tests/ledger and on the Kubernetes test bed
    )


async def spawn_settings(spawner: GPUKubeSpawner, options: dict[str, str]) -> dict[str, Any]:
    spawner.user_options = options
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    container = pod.spec.containers[0]
    return {
        "image": spawner.image,
        "cpu_limit": spawner.cpu_limit,
        "extra_labels": dict(spawner.extra_labels),
        "limits": dict(container.resources.limits or {}),
        "node_selector": pod.spec.node_selector,
        "env": {e.name: e.value for e in container.env},
    }


async def test_gpu_settings_do_not_leak_into_the_next_spawn(spawner: GPUKubeSpawner) -> None:
    gpu = await spawn_settings(
        spawner, {"profile": "h100-single", "image": "pytorch", "team": "vision"}
    )
    assert gpu["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["cpu_limit"] == 16
    assert gpu["image"].startswith("quay.io/jupyter/pytorch-notebook")
    assert gpu["node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu["env"]

    cpu = await spawn_settings(spawner, {"profile": "cpu-small", "team": "vision"})
    assert "nvidia.com/gpu" not in cpu["limits"]
    assert cpu["cpu_limit"] == 2
    assert cpu["image"].startswith("quay.io/jupyter/scipy-notebook")
    assert cpu["node_selector"] is None
    assert cpu["env"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert cpu["extra_labels"] == {"configured": "yes"}


async def test_refused_spawn_changes_nothing(spawner: GPUKubeSpawner) -> None:
    await spawn_settings(spawner, {"profile": "h100-single", "team": "vision"})
    spawner.user_options = {"profile": "h100-single", "gpu_count": "8"}
    with pytest.raises(web.HTTPError) as info:
        await spawner.load_user_options()
    assert info.value.status_code == 400
    assert "GPU type and count come from the profile" in str(info.value)
    cpu = await spawn_settings(spawner, {"profile": "cpu-small"})
    assert cpu["cpu_limit"] == 2
    assert "nvidia.com/gpu" not in cpu["limits"]


async def test_dict_overrides_merge_into_a_copy(spawner: GPUKubeSpawner) -> None:
    configured = spawner.extra_labels
    spawner.user_options = {"profile": "cpu-small"}
    spawner.plan = None
    await spawner.load_user_options()
    assert configured == {"configured": "yes"}
    state = spawner.get_state()
    assert state["gpuhub"]["profile"] == "cpu-small"
    assert state["gpuhub"]["gpu_count"] == 0


async def test_an_autoscaled_gpu_type_waits_longer_for_its_node(spawner: GPUKubeSpawner) -> None:
    """A spawn of an autoscaled type gets scale_up_timeout (15 min) as its start_timeout, set
    before start() returns (JupyterHub reads it then); the next spawn of another type gets the
    configured one back."""
    _autoscale_l4(Path(spawner.catalog_path))
    spawner.start_timeout = 300
    spawner.user_options = {"profile": "l4-single", "team": "vision"}
    spawner._scale_up_timeout()
    assert spawner.start_timeout == 900
    spawner.user_options = {"profile": "h100-single", "team": "vision"}
    spawner._scale_up_timeout()
    assert spawner.start_timeout == 300


def _autoscale_l4(catalog: Path) -> None:
    catalog.write_text(catalog.read_text().replace("autoscaled: false", "autoscaled: true"))
