"""Report fixtures: the ledger fixtures (a fresh database on SQLite and PostgreSQL) and a way to
write sessions as the ledger closes them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.rules import billed_seconds, session_cost
from tests.ledger.conftest import catalog, clock, db_url, ledger

__all__ = ["add_session", "catalog", "clock", "db_url", "ledger"]


def add_session(
    engine: Engine,
    user: str,
    start: datetime,
    end: datetime | None,
    *,
    team: str | None = "vision",
    profile: str = "h100-single",
    gpu_type: str | None = "h100-80gb",
    gpus: int = 1,
    price: str = "4.10",
    started: bool = True,
    reason: str | None = None,
) -> int:
    """A started session (closed at `end`, or open), billed as Ledger.close bills it; with
    `started=False` a spawn that failed before it started (requested at `start`, nothing
    billed)."""
    seconds = billed_seconds(start, end) if end is not None else None
    if not started:
        seconds = 0
    row = UsageSession(
        user=user,
        team=team,
        server_name="",
        profile=profile,
        gpu_type=gpu_type,
        gpu_count=gpus,
        price_per_hour=Decimal(price),
        currency="USD",
        requested_at=start,
        started_at=start if started else None,
        last_seen_at=(end or start) if started else None,
        ended_at=end,
        end_reason=reason or ("stopped" if started else "failed") if end is not None else None,
        gpu_seconds=None if seconds is None else seconds * gpus,
        cost=None if seconds is None else session_cost(Decimal(price), seconds),
    )
    with Session(engine) as db, db.begin():
        db.add(row)
        db.flush()
        return row.id
