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


def test_a_team_that_may_borrow_gets_its_borrow_limit_on_top() -> None:
    text = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
    text = text.replace(
        "      gpus_per_user: 4\n", "      gpus_per_user: 4\n      borrow_limit: {h100-80gb: 3}\n"
    )
    with_section = parse_catalog(text + "\nborrowing: {}\n")
    assert team_quota_manifests(with_section, "jhub")["gpuhub-vision"]["spec"]["hard"] == {
        "requests.nvidia.com/gpu": "23",  # 20 of its own + 3 it may borrow
        "requests.nvidia.com/mig-1g.10gb": "7",
    }
    # the other teams lend, they borrow nothing: their backstop is unchanged
    assert (
        team_quota_manifests(with_section, "jhub")["gpuhub-nlp"]
        == (team_quota_manifests(CATALOG, "jhub")["gpuhub-nlp"])
    )
