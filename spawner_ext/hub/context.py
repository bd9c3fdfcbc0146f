"""The hub process's one HubContext: the catalog in force (with its reload watcher) and the billing
ledger, plus what one runtime shares between spawns (local GPUs, team namespaces). Built on first
use and kept in JupyterHub's own application settings, which every User and so every spawner
shares, so there is one per hub (not per module); spawners reach it through their `context`
trait, which tests and config can set to another.

Per-spawn work only: hub-wide loops (reconciliation, budgets, quotas) live in the gpuhub service.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from ..catalog.store import CatalogStore
from ..ledger.engine import SchemaError
from ..ledger.store import Ledger

SETTINGS_KEY = "gpuhub_context"
"""Key of the HubContext in JupyterHub's tornado settings."""
RELOAD_INTERVAL_SECONDS = 2.0
RETRY_SECONDS = 2.0
"""How often ledger writes that found the billing database down are tried again."""

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
        self._pending: deque[tuple[str, Callable[[Ledger], object]]] = deque()
        self._retrying: asyncio.Task[None] | None = None

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
        `gpuhub db upgrade` while its schema is missing or old (and tries again next call)."""
        if not self.ledger_url:
            return None
        if self._ledger is None:
            self._ledger = Ledger.open(self.ledger_url, install=self.install)
        return self._ledger

    def write(
        self,
        what: str,
        change: Callable[[Ledger], object],
        late: Callable[[Ledger], object] | None = None,
    ) -> None:
        """Apply a ledger write now. If the billing database does not answer (or earlier
        writes still wait), keep it, in order with later writes, and retry every
        `RETRY_SECONDS` until it does; a write that waited is applied as `late` if given (the
        write carries its own times, so a late write bills the same). Lost only if the hub dies
        first; reconciliation then closes the session at its last-seen time."""
        waited = bool(self._pending)
        if not waited and self._apply(what, change, waiting=1):
            return
        self._pending.append((what, late or change))
        if waited and self.flush():
            return
        self._ensure_retry()

    def flush(self) -> bool:
        """Try the pending writes in order; True when none is left."""
        while self._pending:
            what, change = self._pending[0]
            if not self._apply(what, change, waiting=len(self._pending)):
                return False
            self._pending.popleft()
        return True

    def _apply(self, what: str, change: Callable[[Ledger], object], *, waiting: int) -> bool:
        """Write `change`; False (and a warning naming it) while the database does not answer."""
        try:
            ledger = self.ledger()
            if ledger is not None:
                change(ledger)
        except (DBAPIError, SchemaError) as exc:
            self.log.warning(
                "gpuhub: billing database unavailable; %d write(s) wait, first the %s: %s",
                waiting,
                what,
                str(exc).splitlines()[0],
            )
            return False
        return True

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    def _ensure_retry(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # tried again at the next write
        if self._retrying is not None and not self._retrying.done():
            return

        async def retry() -> None:
            while self._pending:
                await asyncio.sleep(RETRY_SECONDS)
                if self.flush():
                    self.log.info("gpuhub: billing database back; pending writes recorded")

        self._retrying = loop.create_task(retry())

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
        for task in (self._watcher, self._retrying):
            if task is not None:
                task.cancel()
        if self._ledger is not None:
            self._ledger.engine.dispose()


def context_in(
    settings: MutableMapping[str, Any],
    catalog_path: str,
    ledger_url: str,
    log: logging.Logger | None = None,
    install: str | None = None,
) -> HubContext:
    """The hub's HubContext, kept in its application `settings`; made on first call. Raises
    ValueError when spawners of one hub are configured with different catalogs or ledgers."""
    found = settings.get(SETTINGS_KEY)
    if found is None:
        found = settings[SETTINGS_KEY] = HubContext(
            catalog_path, ledger_url, install=install, log=log
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
