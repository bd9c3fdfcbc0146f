"""Hot reload with a real file: replaced, edited badly, reverted, and swapped like a ConfigMap."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spawner_ext.catalog import CatalogError
from spawner_ext.catalog.store import CatalogStore

GOOD = "profiles:\n  - display_name: CPU\n    slug: cpu\n"
OTHER = "profiles:\n  - display_name: CPU\n    slug: cpu\n  - display_name: Big\n    slug: big\n"
BAD = "profiles:\n  - display_name: CPU\n    slgu: cpu\n"


def replace_atomically(path: Path, text: str) -> None:
    """Write beside the file and rename over it, as editors and config tools do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def slugs(store: CatalogStore) -> list[str]:
    return [p.slug for p in store.catalog.profiles]


def test_first_load_must_be_valid(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(BAD)
    with pytest.raises(CatalogError, match=r"catalog\.yaml:3:5: profiles\[0\]\.slgu"):
        CatalogStore(path)


def test_good_edit_bad_edit_and_revert(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD)
    store = CatalogStore(path, clock=lambda: datetime(2026, 11, 24, tzinfo=UTC))
    first = store.current
    assert store.reload() is False  # unchanged
    assert first.loaded_at == datetime(2026, 11, 24, tzinfo=UTC)

    replace_atomically(path, OTHER)
    assert store.reload() is True
    assert slugs(store) == ["cpu", "big"]
    assert store.current.version != first.version
    assert len(store.current.version) == 12

    with caplog.at_level(logging.ERROR, logger="gpuhub.catalog"):
        replace_atomically(path, BAD)
        assert store.reload() is False
        assert store.reload() is False  # the same bad content is logged once
    assert slugs(store) == ["cpu", "big"], "the last good catalog stays in force"
    assert store.last_error is not None
    assert "catalog.yaml:3:5: profiles[0].slgu: unknown key 'slgu'" in str(store.last_error.error)
    assert len([r for r in caplog.records if "edit rejected" in r.getMessage()]) == 1

    replace_atomically(path, OTHER)  # reverted to what is in force
    assert store.reload() is False
    assert store.last_error is None


def test_file_vanishing_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD)
    store = CatalogStore(path)
    path.unlink()
    assert store.reload() is False
    assert slugs(store) == ["cpu"]
    assert store.last_error is not None
    assert "cannot read the file" in str(store.last_error.error)
    path.write_text(OTHER)
    assert store.reload() is True
    assert store.last_error is None


def configmap_volume(root: Path, text: str, generation: int) -> None:
    """Lay out a Kubernetes ConfigMap volume: catalog.yaml -> ..data/catalog.yaml, where ..data
    is a symlink swapped atomically to a new timestamped directory on every update."""
    data_dir = root / f"..2026_11_24_00_00_0{generation}.000000001"
    data_dir.mkdir()
    (data_dir / "catalog.yaml").write_text(text)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, root / "..data")
    link = root / "catalog.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/catalog.yaml")


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    configmap_volume(tmp_path, GOOD, 1)
    store = CatalogStore(tmp_path / "catalog.yaml")
    configmap_volume(tmp_path, OTHER, 2)
    assert store.reload() is True
    assert slugs(store) == ["cpu", "big"]
    configmap_volume(tmp_path, BAD, 3)
    assert store.reload() is False
    assert slugs(store) == ["cpu", "big"]
    assert store.last_error is not None


async def test_watch_picks_up_an_edit_within_seconds(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD)
    store = CatalogStore(path)
    task = asyncio.create_task(store.watch(interval=0.05))
    try:
        replace_atomically(path, OTHER)
        for _ in range(100):  # up to 5 s
            if slugs(store) == ["cpu", "big"]:
                break
            await asyncio.sleep(0.05)
        assert slugs(store) == ["cpu", "big"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
