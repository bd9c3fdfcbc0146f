"""What both halves of the ledger share: the engine, the clock, a writing and a reading session
factory. No queries here."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from ..clock import Clock, utcnow
from .engine import READ_ONLY


class LedgerBase:
    """The ledger's database at one engine: short synchronous transactions, as JupyterHub's own
    database calls are."""

    def __init__(
        self, engine: Engine, *, clock: Clock = utcnow, install: str | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.install = install
        """The install (spawner_ext/install.py) this handle works for: the sessions it opens
        are that install's, and it reads, closes and stops only that install's (and those from
        before installs were told apart). None: every session (reports, tools)."""
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reads = sessionmaker(engine.execution_options(**{READ_ONLY: True}))
