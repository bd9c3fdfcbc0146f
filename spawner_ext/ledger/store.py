"""The billing ledger: one object for a database URL, with the admission engine (admission.py)
and the session lifecycle (sessions.py) it is made of."""

from __future__ import annotations

from ..clock import Clock, utcnow
from .admission import AdmissionEngine
from .engine import check_schema, make_engine
from .reclaims import ReclaimLedger
from .sessions import SessionLog
from .waitlist import WaitlistLedger


class Ledger(AdmissionEngine, SessionLog, WaitlistLedger, ReclaimLedger):
    """The billing ledger at one database URL: admit spawns, record their sessions' lives."""

    @classmethod
    def open(cls, url: str, *, clock: Clock = utcnow, install: str | None = None) -> Ledger:
        """Open the ledger at `url`, for `install`'s sessions (None: all); raises SchemaError if
        its schema is missing or old."""
        engine = make_engine(url)
        try:
            check_schema(engine, url)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock=clock, install=install)
