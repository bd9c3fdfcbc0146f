"""Golden tests of notebook pod manifests: KubeSpawner's own pod builder, then our placement."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubespawner.objects import make_pod

from spawner_ext.catalog import load_catalog
from spawner_ext.kube.placement import apply_placement, made_by_this_spawn, placement
from spawner_ext.kube.serialize import to_manifest
from spawner_ext.policy.identity import Identity
from spawner_ext.policy.request import resolve_spawn

GOLDEN = Path(__file__).parent / "golden"
CATALOG = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")
ADA = Identity("ada", frozenset({"vision"}))
LIN = Identity("nora", frozenset({"nlp"}))
SAM = Identity("sam", frozenset({"students"}))


def base_pod(**extra: Any) -> dict[str, Any]:
    pod = make_pod(
        name="jupyter-ada",
        cmd=["jupyterhub-singleuser"],
        port=8888,
        image="quay.io/jupyter/scipy-notebook:2026-11-02",
        labels={"component": "singleuser-server"},
        **extra,
    )
    plain: dict[str, Any] = to_manifest(pod)
    return plain


CASES = {
    "cpu-small": (ADA, {"profile": "cpu-small"}, {}),
    "h100-single": (ADA, {"profile": "h100-single", "image": "pytorch"}, {}),
    "h100-quad": (LIN, {"profile": "h100-quad"}, {}),
    "mig-slice": (SAM, {"profile": "mig-slice"}, {}),
    # An override that smuggles GPUs into a CPU profile loses them.
    "cpu-with-smuggled-gpu": (
        ADA,
        {"profile": "cpu-small"},
        {"extra_resource_limits": {"nvidia.com/gpu": "8"}},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pod_manifest_matches_golden(case: str) -> None:
    who, options, extra = CASES[case]
    plan = resolve_spawn(CATALOG, who, options, catalog_version="0123456789ab")
    manifest = apply_placement(base_pod(**extra), placement(plan, "jhub", "", session="42"))
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(yaml.safe_dump(manifest, sort_keys=True))
    assert manifest == yaml.safe_load(path.read_text())


def test_gpu_pod_facts() -> None:
    plan = resolve_spawn(CATALOG, LIN, {"profile": "h100-quad"})
    manifest = apply_placement(base_pod(), placement(plan, "jhub"))
    container = manifest["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert manifest["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in manifest[
        "spec"
    ]["tolerations"]
    assert not any(e["name"] == "NVIDIA_VISIBLE_DEVICES" for e in container.get("env", []))


def test_cpu_pod_never_sees_gpus() -> None:
    plan = resolve_spawn(CATALOG, ADA, {"profile": "cpu-small"})
    manifest = apply_placement(
        base_pod(extra_resource_limits={"nvidia.com/gpu": "1"}), placement(plan, "jhub")
    )
    container = manifest["spec"]["containers"][0]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in container["env"]
    assert not any(k.startswith("nvidia.com/") for k in container["resources"].get("limits", {}))
    assert "nodeSelector" not in manifest["spec"]


def test_mig_resource_name() -> None:
    plan = resolve_spawn(CATALOG, SAM, {"profile": "mig-slice"})
    manifest = apply_placement(base_pod(), placement(plan, "jhub"))
    limits = manifest["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/mig-1g.10gb": "1"}


def test_apply_placement_does_not_touch_its_input() -> None:
    pod = base_pod()
    before = yaml.safe_dump(pod)
    apply_placement(pod, placement(resolve_spawn(CATALOG, LIN, {"profile": "h100-quad"}), "jhub"))
    assert yaml.safe_dump(pod) == before


def test_a_pod_of_this_spawns_session_and_install_is_its_own() -> None:
    """A 409 on create finds a pod of the server's name: the pod this spawn's own timed-out
    create made carries its session and install; any other is not its own."""
    plan = resolve_spawn(CATALOG, ADA, {"profile": "h100-single"}, catalog_version="0123456789ab")
    made = apply_placement(base_pod(), placement(plan, "jhub", "", session="a" * 32))
    assert made_by_this_spawn(made, "a" * 32, "jhub")
    assert not made_by_this_spawn(made, "b" * 32, "jhub"), "an earlier spawn's pod"
    assert not made_by_this_spawn(made, "a" * 32, "other"), "another install's pod"
    assert not made_by_this_spawn(made, None, "jhub"), "no session: nothing tells them apart"
    going = {**made, "metadata": {**made["metadata"], "deletionTimestamp": "2026-12-06T00:00:00Z"}}
    assert not made_by_this_spawn(going, "a" * 32, "jhub"), "being deleted"
    assert not made_by_this_spawn(base_pod(), "a" * 32, "jhub"), "a pod without our labels"
