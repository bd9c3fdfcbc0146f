"""ResourceQuota manifests built from the catalog's team quotas."""

from __future__ import annotations

from pathlib import Path

from spawner_ext.catalog import load_catalog, parse_catalog
from spawner_ext.kube.quotas import team_quota_manifests

CATALOG = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")


def test_one_quota_per_team_namespace() -> None:
    quotas = team_quota_manifests(CATALOG, "jhub")
    assert sorted(quotas) == ["gpuhub-nlp", "gpuhub-teaching", "gpuhub-vision"]
    # vision: h100 8 + a100 8 + l4 4 share nvidia.com/gpu; MIG slices have their own resource.
    assert quotas["gpuhub-vision"]["spec"]["hard"] == {
        "requests.nvidia.com/gpu": "20",
        "requests.nvidia.com/mig-1g.10gb": "7",
    }
    assert quotas["gpuhub-teaching"]["metadata"]["labels"]["gpuhub.io/team"] == "teaching"


def test_no_namespaces_no_quotas() -> None:
    catalog = parse_catalog("teams: {a: {quota: {gpus: {}}}}\nprofiles: []\n")
    assert team_quota_manifests(catalog, "jhub") == {}
