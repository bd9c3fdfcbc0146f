"""The hub process's one HubContext: the catalog in force (with its reload watcher), the billing
ledger with the threads its calls run in (its lane, hub/ledger_lane.py), and what one runtime
shares between spawns (local GPUs, team namespaces). Built on first use and kept in JupyterHub's
own application settings, which every User and so every spawner shares, so there is one per hub
(not per module); spawners reach it through their `context` trait, which tests and config can
set to another.

Per-spawn work only: hub-wide loops (reconciliation, budgets, quotas) live in the gpuhub service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

from ..catalog.store import CatalogStore
from ..ledger.store import Ledger
from .ledger_lane import CALL_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, LedgerLane

SETTINGS_KEY = "gpuhub_context"
"""Key of the HubContext in JupyterHub's tornado settings."""
RELOAD_INTERVAL_SECONDS = 2.0

T = TypeVar("T")


class HubContext:
    """What spawns in one hub share. Synchronous and cheap to ask; opens what it holds lazily."""

    def __init__(
        self,
        catalog_path: str | Path,
        ledger_url: str,
        *,
        install: str | None = None,
        log: logging.Logger | None = None,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
        call_timeout: float = CALL_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self.catalog_path = str(Path(catalog_path).absolute())
        self.ledger_url = ledger_url
        self.install = install
        self.log = log or logging.getLogger("gpuhub")
        self.reload_interval = reload_interval
        self._store: CatalogStore | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ledger: Ledger | None = None
        self._parts: dict[type[Any], Any] = {}
        self._opening = threading.Lock()
        self.lane = LedgerLane(
            self.ledger, self.log, call_timeout=call_timeout, read_timeout=read_timeout
        )
        """Where the hub's ledger work runs, off its event loop."""

    @property
    def store(self) -> CatalogStore:
        """The catalog in force (raises CatalogError if the file is invalid at first use). Inside
        a running event loop, also keeps its reload watcher running."""
        if self._store is None:
            self._store = CatalogStore(self.catalog_path, log=self.log)
        self._ensure_watcher(self._store)
        return self._store

    def ledger(self) -> Ledger | None:
        """The billing ledger (None without metering); raises SchemaError naming
        `gpuhub db upgrade` while its schema is missing or old (and tries again next call).
        Opening it reads the database: in the hub, ask through `lane`, not in the event loop."""
        if not self.ledger_url:
            return None
        with self._opening:  # the lane's and the read pool's threads may ask at once
            if self._ledger is None:
                self._ledger = Ledger.open(self.ledger_url, install=self.install)
        return self._ledger

    def part(self, kind: type[T], make: Callable[[], T]) -> T:
        """The one `kind` object of this hub (e.g. the local GPU allocator), made on first ask."""
        found = self._parts.get(kind)
        if found is None:
            found = self._parts[kind] = make()
        assert isinstance(found, kind)
        return found

    def peek(self, kind: type[T]) -> T | None:
        """The `kind` object if one was made, else None."""
        found = self._parts.get(kind)
        return found if isinstance(found, kind) else None

    def matches(self, catalog_path: str | Path, ledger_url: str) -> bool:
        return (self.catalog_path, self.ledger_url) == (
            str(Path(catalog_path).absolute()),
            ledger_url,
        )

    def _ensure_watcher(self, store: CatalogStore) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._watcher
        if task is None or task.done() or task.get_loop() is not loop:
            self._watcher = loop.create_task(store.watch(self.reload_interval))

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.lane.close()
        if self._ledger is not None:
            self._ledger.engine.dispose()


def context_in(
    settings: MutableMapping[str, Any],
    catalog_path: str,
    ledger_url: str,
    log: logging.Logger | None = None,
    install: str | None = None,
    call_timeout: float = CALL_TIMEOUT_SECONDS,
) -> HubContext:
    """The hub's HubContext, kept in its application `settings`; made on first call. Raises
    ValueError when spawners of one hub are configured with different catalogs or ledgers."""
    found = settings.get(SETTINGS_KEY)
    if found is None:
        found = settings[SETTINGS_KEY] = HubContext(
            catalog_path, ledger_url, install=install, log=log, call_timeout=call_timeout
        )
    if (
        not isinstance(found, HubContext)
        or not found.matches(catalog_path, ledger_url)
        or found.install != install
    ):
        raise ValueError(
            "gpuhub: every spawner of one hub must use the same catalog_path, ledger_url and "
            "install "
            f"(found {getattr(found, 'catalog_path', found)!r} and {catalog_path!r})"
        )
    return found
