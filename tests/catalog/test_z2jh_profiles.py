"""Existing Zero to JupyterHub profile lists load unchanged: every key and value is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from spawner_ext.catalog import parse_catalog
from spawner_ext.catalog.frozen import thaw

LISTS = sorted((Path(__file__).parent / "z2jh").glob("*.yaml"))


def as_catalog(profile_list_text: str) -> str:
    body = "\n".join("  " + line for line in profile_list_text.splitlines())
    return "profiles:\n" + body + "\n"


def loaded_keys(profile: Any, keys: list[str]) -> dict[str, Any]:
    return {key: thaw(getattr(profile, key)) for key in keys}


@pytest.mark.parametrize("path", LISTS, ids=[p.stem for p in LISTS])
def test_profile_list_loads_unchanged(path: Path) -> None:
    text = path.read_text()
    original = yaml.safe_load(text)
    catalog = parse_catalog(as_catalog(text), str(path))
    assert len(catalog.profiles) == len(original)
    for profile, raw in zip(catalog.profiles, original, strict=True):
        assert profile.gpu is None, "no GPU is inferred from a plain z2jh profile"
        plain = {k: v for k, v in raw.items() if k != "profile_options"}
        assert loaded_keys(profile, list(plain)) == plain
        for name, option in raw.get("profile_options", {}).items():
            loaded = profile.profile_options[name]
            dumped = loaded.model_dump(mode="python", exclude_unset=True)
            assert thaw(dumped) == option


def test_slug_defaults_like_kubespawner() -> None:
    catalog = parse_catalog(
        as_catalog((Path(__file__).parent / "z2jh/research-group.yaml").read_text())
    )
    assert catalog.profiles[0].slug == "small-1-cpu-4-gb"
    assert catalog.profiles[1].slug == "large"
