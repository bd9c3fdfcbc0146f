"""One CatalogStore per catalog path in the hub process, with its reload watcher running."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..catalog.store import CatalogStore

_stores: dict[str, CatalogStore] = {}
_watchers: dict[str, asyncio.Task[None]] = {}

RELOAD_INTERVAL_SECONDS = 2.0


def shared_store(path: str | Path, log: logging.Logger | None = None) -> CatalogStore:
    """The hub's store for `path`, loaded on first use (raises CatalogError if the file is
    invalid then). When called inside a running event loop, also starts its reload watcher."""
    key = str(Path(path).absolute())
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = CatalogStore(key, log=log)
    _ensure_watcher(key, store)
    return store


def _ensure_watcher(key: str, store: CatalogStore) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = _watchers.get(key)
    if task is None or task.done() or task.get_loop() is not loop:
        _watchers[key] = loop.create_task(store.watch(RELOAD_INTERVAL_SECONDS))
