"""The catalog in force in a running hub, reloaded from its file when the file changes.

Polling the path (not inotify) follows Kubernetes' ConfigMap volumes, which swap a `..data` symlink
atomically: every poll reads whatever the path points at now. An invalid edit is logged and recorded
in `last_error`; the last good catalog stays in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..clock import Clock, utcnow
from .loader import catalog_warnings, parse_catalog, read_catalog_text
from .problems import CatalogError
from .schema import Catalog


@dataclass(frozen=True)
class CatalogVersion:
    """A loaded catalog and where it came from. `version` is the first 12 hex digits of the
    file's SHA-256."""

    catalog: Catalog
    version: str
    digest: str
    path: str
    loaded_at: datetime


@dataclass(frozen=True)
class ReloadError:
    """The most recent edit that failed to load, kept until a good edit replaces it."""

    error: CatalogError
    digest: str
    failed_at: datetime


class CatalogStore:
    """Holds the current catalog; `reload()` checks the file once, `watch()` keeps checking."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock = utcnow,
        log: logging.Logger | None = None,
        override_keys: Iterable[str] | None = None,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._log = log or logging.getLogger("gpuhub.catalog")
        self._override_keys = None if override_keys is None else frozenset(override_keys)
        self._last_error: ReloadError | None = None
        self._current = self._load(read_catalog_text(self.path))

    @property
    def current(self) -> CatalogVersion:
        """The catalog in force. Callers take it once per request and use that value."""
        return self._current

    @property
    def catalog(self) -> Catalog:
        return self._current.catalog

    @property
    def last_error(self) -> ReloadError | None:
        """Why the file's present content is not in force, or None when it is."""
        return self._last_error

    def reload(self) -> bool:
        """Check the file once. Returns True when a new catalog came into force."""
        try:
            text = read_catalog_text(self.path)
        except CatalogError as exc:
            self._record_failure(exc, digest="unreadable")
            return False
        digest = _digest(text)
        if digest == self._current.digest:
            self._last_error = None  # an invalid edit was reverted
            return False
        if self._last_error is not None and self._last_error.digest == digest:
            return False  # the same invalid content; already logged
        try:
            loaded = self._load(text)
        except CatalogError as exc:
            self._record_failure(exc, digest)
            return False
        self._current, self._last_error = loaded, None
        self._log.info("catalog %s: loaded version %s", self.path, loaded.version)
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Reload every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload()
            except Exception:  # keep the hub's catalog watcher alive whatever happens
                self._log.exception("catalog %s: unexpected error while reloading", self.path)

    def _load(self, text: str) -> CatalogVersion:
        catalog = parse_catalog(text, self.path, override_keys=self._override_keys)
        for warning in catalog_warnings(text, self.path):
            self._log.warning("catalog %s: %s", self.path, warning)
        digest = _digest(text)
        return CatalogVersion(catalog, digest[:12], digest, self.path, self._clock())

    def _record_failure(self, exc: CatalogError, digest: str) -> None:
        if self._last_error is not None and str(self._last_error.error) == str(exc):
            return
        self._last_error = ReloadError(exc, digest, self._clock())
        self._log.error(
            "catalog %s: edit rejected, version %s stays in force:\n%s",
            self.path,
            self._current.version,
            exc,
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
