"""gpuhub's culling policy for people who keep stock jupyterhub-idle-culler: its
`cull_arbiter_hook`. In the idle culler's config file:

    from spawner_ext.service.arbiter import GPUCullArbiter
    c.IdleCuller.cull_arbiter_hook = GPUCullArbiter(
        catalog="/etc/gpuhub/catalog.yaml", db_url="postgresql+psycopg://...")

and run the gpuhub service with `--no-culling` (it still takes the notebook extension's
reports). For each server the idle culler considers, the arbiter makes the same decision as
gpuhub's own culler (policy/culling.py) from the billing ledger, records the reason on the
session and the warning for JupyterLab, and answers True when the server must go. The idle
culler's own `--timeout` is then not used: the catalog's `culling` settings are."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..catalog.store import CatalogStore
from ..clock import Clock, utcnow
from ..ledger.activity import ActivityLedger
from ..ledger.store import Ledger
from .culler import budget_stops, consider, record_decision
from .hubapi import HubServer

BUDGET_READ_EVERY = timedelta(seconds=10)


class GPUCullArbiter:
    def __init__(
        self, catalog: str, db_url: str, *, install: str | None = None, clock: Clock = utcnow
    ) -> None:
        """`install`: the hub's install name, when several hubs share the billing database
        (None: every session is this hub's)."""
        self.store = CatalogStore(catalog)
        self.ledger = Ledger.open(db_url, clock=clock, install=install)
        self.activity = ActivityLedger(self.ledger)
        self.clock = clock
        self._stops: tuple[datetime, dict[str, datetime]] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> GPUCullArbiter:
        return self  # traitlets copies config values; this one holds a database engine

    def _budget_stops(self, now: datetime) -> dict[str, datetime]:
        """The teams' budget stops, read once per BUDGET_READ_EVERY: the idle culler calls the
        hook once per server, and reading them is a transaction over every team."""
        if self._stops is None or now - self._stops[0] >= BUDGET_READ_EVERY:
            self._stops = (now, budget_stops(self.ledger, self.store.catalog))
        return self._stops[1]

    def __call__(
        self, *, inactive: timedelta, inactive_limit: int, server: dict[str, Any], **_: Any
    ) -> bool:
        """jupyterhub-idle-culler's hook: True to cull `server` (its REST API model)."""
        self.store.reload()  # reads the file; parses it only when it changed
        user, _slash, name = str(server.get("full_name") or "").partition("/")
        if not user:  # JupyterHub < 5 has no full_name: the URL is /user/<name>/<server>/
            parts = str(server.get("url", "")).strip("/").split("/")
            user = parts[-2] if len(parts) >= 2 and server.get("name") else parts[-1]
            name = str(server.get("name") or "")
        listed = HubServer.from_model(user, name, server)
        now = self.clock()
        catalog = self.store.catalog
        session = self.ledger.open_session_of(user, name)
        records = self.activity.records([session.id]) if session else {}
        stops = self._budget_stops(now)
        considered = consider(catalog, listed, session, records, stops, now)
        record = records.get(session.id) if session else None
        return record_decision(self.ledger, self.activity, considered, record) is not None
