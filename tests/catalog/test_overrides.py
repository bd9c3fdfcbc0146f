"""Layers of kubespawner_override, combined as KubeSpawner merges dict settings."""

from __future__ import annotations

from spawner_ext.catalog.overrides import merge_overrides


def test_later_layers_win_and_mappings_merge_recursively() -> None:
    base = {"image": "a", "node_selector": {"zone": "x", "pool": "gpu"}, "args": ["--x"]}
    layer = {"image": "b", "node_selector": {"pool": "h100"}, "args": ["--y"]}
    assert merge_overrides(base, layer) == {
        "image": "b",
        "node_selector": {"zone": "x", "pool": "h100"},
        "args": ["--y"],  # lists are replaced, not appended
    }
    assert base["node_selector"] == {"zone": "x", "pool": "gpu"}, "the base is not changed"


def test_merging_a_result_again_with_the_same_layer_changes_nothing() -> None:
    layer = {"extra_resource_limits": {"nvidia.com/gpu": "2"}}
    once = merge_overrides({"extra_resource_limits": {"cpu": "4"}}, layer)
    assert merge_overrides(once, layer) == once
