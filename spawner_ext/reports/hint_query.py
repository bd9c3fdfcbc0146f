"""Reads for the right-sizing hints of a report: each GPU session's billed part of the period (the
same rule as the usage rows, reports/usage.py) and the sessions' GPU use (ledger/activity.py),
handed to reports/hints.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from ..catalog import Catalog
from ..ledger.activity import ActivityLedger
from ..ledger.engine import READ_ONLY
from ..ledger.store import Ledger
from ..policy.gpu_use import GPUUse
from .hints import HeldSession, HintRow, hint_rows
from .query import UsageQuery
from .usage import billed_sessions

CHUNK = 500
"""Session ids per read of their GPU use (well under any database's bind parameter limit)."""


def held_sessions(ledger: Ledger, query: UsageQuery, now: datetime) -> Iterator[HeldSession]:
    """The report's GPU sessions with the seconds each was billed within the period, oldest
    first."""
    engine = ledger.engine
    billed = billed_sessions(engine.dialect.name, query, now)
    statement = (
        select(
            billed.c.id,
            billed.c.team,
            billed.c.user,
            billed.c.profile,
            billed.c.gpu_type,
            billed.c.gpu_count,
            billed.c.price_per_hour,
            billed.c.currency,
            (billed.c.high - billed.c.low).label("seconds"),
        )
        .where(billed.c.gpu_count > 0, billed.c.gpu_type.is_not(None))
        .order_by(billed.c.id)
    )
    with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
        for row in connection.execute(statement):
            yield HeldSession(
                id=row.id,
                team=row.team,
                user=row.user,
                profile=row.profile,
                gpu_type=row.gpu_type,
                gpu_count=row.gpu_count,
                price_per_hour=Decimal(row.price_per_hour),
                currency=row.currency,
                held_seconds=round(row.seconds),
            )


def gpu_uses(ledger: Ledger, session_ids: list[int]) -> dict[int, GPUUse]:
    """Each session's GPU use over its whole life (never reported: absent)."""
    activity = ActivityLedger(ledger)
    found: dict[int, GPUUse] = {}
    for start in range(0, len(session_ids), CHUNK):
        found |= activity.gpu_use(session_ids[start : start + CHUNK])
    return found


def read_hints(ledger: Ledger, catalog: Catalog, query: UsageQuery, now: datetime) -> list[HintRow]:
    """The hints of a report's period (its `by` is not used: hints are per user and profile)."""
    sessions = list(held_sessions(ledger, query, now))
    return hint_rows(sessions, gpu_uses(ledger, [s.id for s in sessions]), catalog)
