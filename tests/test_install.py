"""Install names: checked, derived from where the hub runs, and which pods are an install's."""

from __future__ import annotations

from typing import Any

import pytest

from spawner_ext.install import InstallError, checked_install, default_install, fitted
from spawner_ext.kube.observer import pods_of_install


@pytest.mark.parametrize("name", ["local", "prod", "staging-gpu", "a", "x" * 40, "0a9"])
def test_good_install_names(name: str) -> None:
    assert checked_install(name) == name


@pytest.mark.parametrize("name", ["", "Prod", "-prod", "prod-", "a_b", "x" * 41, "a.b"])
def test_bad_install_names_say_what_to_write(name: str) -> None:
    with pytest.raises(InstallError, match="lowercase letters, digits and '-'"):
        checked_install(name)


@pytest.mark.parametrize(
    ("environ", "install"),
    [
        ({}, "local"),
        ({"POD_NAMESPACE": "jhub"}, "jhub"),
        ({"POD_NAMESPACE": "jhub", "HELM_RELEASE_NAME": "jhub"}, "jhub"),
        ({"POD_NAMESPACE": "research", "HELM_RELEASE_NAME": "staging"}, "research-staging"),
        ({"POD_NAMESPACE": "Team_A"}, "team-a"),
    ],
)
def test_the_default_install_is_the_hubs_namespace_and_release(
    environ: dict[str, str], install: str
) -> None:
    assert default_install(environ) == install


def test_long_names_are_cut_and_stay_apart() -> None:
    one, two = fitted("n" * 50 + "-one"), fitted("n" * 50 + "-two")
    assert one != two
    assert checked_install(one) == one and len(one) == 40


def pod(name: str, install: str | None) -> dict[str, Any]:
    labels = {"gpuhub.io/profile": "cpu-small", "gpuhub.io/gpu-count": "0"}
    if install is not None:
        labels["gpuhub.io/install"] = install
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "labels": labels,
            "annotations": {"gpuhub.io/user": name},
        },
        "status": {"phase": "Running", "startTime": "2026-12-05T12:00:00Z"},
    }


def test_an_install_sees_its_own_pods_and_the_unlabelled_ones_its_hub_lists() -> None:
    pods = [
        pod("mine", "prod"),
        pod("theirs", "staging"),
        pod("old-listed", None),  # from before installs were told apart; our hub lists it
        pod("old-unlisted", None),
    ]
    seen = pods_of_install(pods, "prod", listed={"ns/old-listed", "ns/theirs"})
    assert [s.runtime_ref for s in seen.ours] == ["ns/mine", "ns/old-listed"]
    assert seen.foreign == ["ns/theirs"], "another install's pod, even at a listed name"
    assert seen.unclaimed == ["ns/old-unlisted"]
