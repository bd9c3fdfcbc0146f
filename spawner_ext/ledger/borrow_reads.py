"""Reads of borrowed sessions for the leads' borrowing report and the service's metrics: the
borrowed sessions of a period with their loans (whose quota, how many GPUs), the borrowed servers
running now, and the closed ones' totals. Reads only; what the figures mean is worked out by
reports/borrowing.py and service/metrics.py."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from ..end_reason import EndReason
from .engine import READ_ONLY
from .models import SessionLoan, UsageSession

CHUNK = 500
"""Session ids per read of their loans (well under any database's bind parameter limit)."""


@dataclass(frozen=True)
class BorrowedSession:
    """A borrowed session as billed: from `started_at`, `gpu_seconds / gpu_count` seconds once
    closed (until now while open)."""

    id: int
    team: str | None
    """The borrowing team (the one charged)."""
    user: str
    gpu_type: str | None
    gpu_count: int
    started_at: datetime
    ended_at: datetime | None
    gpu_seconds: int | None
    end_reason: str | None
    loans: tuple[tuple[str, int], ...]
    """(lender, GPUs) of each team whose quota the session runs on, by lender."""


def borrowed_sessions(
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    teams: Sequence[str] | None = None,
    user: str | None = None,
) -> list[BorrowedSession]:
    """The borrowed sessions billed between `start` and `end` (those that started before `end`
    and had not ended by `start`), of `teams` (charged to one of them, or running on the quota
    of one of them; None: every team) and of `user` (None: everyone's), by id."""
    u = UsageSession
    overlapping = [
        u.borrowed.is_(True),
        u.started_at.is_not(None),
        u.started_at < end,
        (u.ended_at.is_(None)) | (u.ended_at > start),
    ]
    if user is not None:
        overlapping.append(u.user == user)
    selects: list[Any] = []
    if teams is None:
        selects.append(select(u).where(*overlapping))
    else:
        lent = select(SessionLoan.session_id).where(SessionLoan.lender.in_(teams))
        selects.append(select(u).where(*overlapping, u.team.in_(teams)))
        selects.append(select(u).where(*overlapping, u.id.in_(lent)))
    found: dict[int, Any] = {}
    reads = engine.execution_options(**{READ_ONLY: True})
    with reads.connect() as connection:
        for statement in selects:
            for row in connection.execute(statement):
                found[row.id] = row
        ids = sorted(found)
        loans: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for first in range(0, len(ids), CHUNK):
            chunk = ids[first : first + CHUNK]
            query = (
                select(SessionLoan.session_id, SessionLoan.lender, SessionLoan.gpus)
                .where(SessionLoan.session_id.in_(chunk))
                .order_by(SessionLoan.session_id, SessionLoan.lender)
            )
            for session_id, lender, gpus in connection.execute(query):
                loans[session_id].append((lender, int(gpus)))
    return [
        BorrowedSession(
            id=row.id,
            team=row.team,
            user=row.user,
            gpu_type=row.gpu_type,
            gpu_count=row.gpu_count,
            started_at=_aware(row.started_at),
            ended_at=None if row.ended_at is None else _aware(row.ended_at),
            gpu_seconds=row.gpu_seconds,
            end_reason=row.end_reason,
            loans=tuple(loans[row.id]),
        )
        for row in (found[i] for i in ids)
    ]


def _aware(value: Any) -> datetime:
    """Core rows (not ORM objects) come back through the column type: already aware UTC."""
    assert isinstance(value, datetime) and value.tzinfo is not None
    return value


Labels = tuple[str, str]
"""(team, GPU type) with "" for none."""


@dataclass(frozen=True)
class BorrowingNow:
    """GPUs of running borrowed servers: per borrowing team and per lending team."""

    borrowed: dict[Labels, int]
    lent: dict[Labels, int]


def borrowing_now(engine: Engine) -> BorrowingNow:
    u, loan = UsageSession, SessionLoan
    running = [u.borrowed.is_(True), u.started_at.is_not(None), u.ended_at.is_(None)]
    borrowed_query = (
        select(u.team, u.gpu_type, func.sum(u.gpu_count))
        .where(*running)
        .group_by(u.team, u.gpu_type)
    )
    lent_query = (
        select(loan.lender, u.gpu_type, func.sum(loan.gpus))
        .join(u, u.id == loan.session_id)
        .where(*running)
        .group_by(loan.lender, u.gpu_type)
    )
    with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
        borrowed = {
            (team or "", gpu_type or ""): int(n or 0)
            for team, gpu_type, n in connection.execute(borrowed_query)
        }
        lent = {
            (lender, gpu_type or ""): int(n or 0)
            for lender, gpu_type, n in connection.execute(lent_query)
        }
    return BorrowingNow(borrowed, lent)


@dataclass(frozen=True)
class BorrowingTotals:
    """Closed borrowed sessions (their bills are final)."""

    borrowed_gpu_seconds: dict[Labels, int]
    """GPU-seconds billed to borrowed sessions, per borrowing team and GPU type."""
    lent_gpu_seconds: dict[Labels, int]
    """Per lending team and GPU type: each session's billed seconds times the GPUs it ran on
    that team's quota."""
    reclaims: dict[Labels, int]
    """Sessions that ended `reclaimed`, per borrowing team and GPU type."""


def borrowing_totals(engine: Engine) -> BorrowingTotals:
    u, loan = UsageSession, SessionLoan
    closed = [u.borrowed.is_(True), u.started_at.is_not(None), u.ended_at.is_not(None)]
    borrowed_query = (
        select(u.team, u.gpu_type, func.sum(u.gpu_seconds))
        .where(*closed)
        .group_by(u.team, u.gpu_type)
    )
    # gpu_seconds is the session's seconds times its GPUs: divided by gpu_count in Python,
    # per group of one gpu_count, so that no database rounds an integer division
    lent_query = (
        select(loan.lender, u.gpu_type, u.gpu_count, func.sum(u.gpu_seconds * loan.gpus))
        .join(u, u.id == loan.session_id)
        .where(*closed, u.gpu_count > 0)
        .group_by(loan.lender, u.gpu_type, u.gpu_count)
    )
    reclaims_query = (
        select(u.team, u.gpu_type, func.count())
        .where(u.end_reason == EndReason.RECLAIMED.value)
        .group_by(u.team, u.gpu_type)
    )
    lent: dict[Labels, int] = defaultdict(int)
    with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
        borrowed = {
            (team or "", gpu_type or ""): int(seconds or 0)
            for team, gpu_type, seconds in connection.execute(borrowed_query)
        }
        for lender, gpu_type, gpu_count, seconds in connection.execute(lent_query):
            lent[(lender, gpu_type or "")] += int(seconds or 0) // int(gpu_count)
        reclaims = {
            (team or "", gpu_type or ""): int(n)
            for team, gpu_type, n in connection.execute(reclaims_query)
        }
    return BorrowingTotals(borrowed, dict(lent), reclaims)
