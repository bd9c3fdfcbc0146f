"""Reads for the borrowing report of a period: the borrowed sessions that may count in it
(ledger/borrow_reads.py), handed to reports/borrowing.py."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from ..ledger.borrow_reads import borrowed_sessions
from .borrowing import BorrowingRow, borrowing_rows, check_grouping
from .query import UsageQuery


def read_borrowing(engine: Engine, query: UsageQuery, now: datetime) -> list[BorrowingRow]:
    """The borrowing rows of `query` (ReportError for a grouping they do not have)."""
    check_grouping(query)
    period = query.period
    sessions = borrowed_sessions(
        engine, period.start, period.end, teams=query.teams, user=query.user
    )
    return borrowing_rows(sessions, query, now)
