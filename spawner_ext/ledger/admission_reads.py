"""Everything a GPU spawn's admission reads, in two statements inside its locked transaction: the
rows (the team's open GPU sessions, the spawning server's own open sessions, the team's holds
and this server's own hold) and the figures (the team's closed GPU-seconds this month, the
requests waiting for the type, the type's GPUs free now). Each statement is a round trip; on
PostgreSQL these two replace five (`benchmarks/waitlist.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, bindparam, false, func, literal, null, or_, select, union_all
from sqlalchemy.orm import Session

from ..catalog import Catalog
from ..policy.borrowing import Share
from .line import free_check_columns, limited_capacity, quick_check_figures, same_install
from .models import GPUHold, SessionLoan, TeamMonthUsage, UsageSession
from .rules import Span, gpu_seconds_between, month_key, month_start
from .sessions import of_install


@dataclass(frozen=True)
class HoldRow:
    """A hold as admission needs it (GPUs set aside for one request at its turn)."""

    request_id: int
    install: str | None
    gpu_type: str
    gpu_count: int
    team: str
    user: str
    server_name: str


@dataclass(frozen=True)
class AdmissionReads:
    stale: tuple[int, ...]
    """Ledger ids of the spawning server's sessions still open: it cannot be running while it
    starts again, so admission closes them (and reads again)."""
    spans: tuple[Span, ...]
    """The team's open GPU sessions (started or not), of every install."""
    holds: tuple[HoldRow, ...]
    """The team's holds, and the spawning server's own hold whatever its team."""
    closed_seconds: int
    """The team's closed sessions' GPU-seconds this month (the monthly totals' row)."""
    waiting: int
    """Requests of this install waiting for the GPU type."""
    free: int | None
    """GPUs of the type free for this install now (capacity less sessions and holds); None
    when unlimited or unknown (autoscaled, no install, nothing recorded)."""
    capacity: int | None
    """GPUs of the type this install's servers can get (`usable_capacity`); None likewise."""

    def gpu_hours_this_month(self, now: datetime) -> Decimal:
        """As the budget counts them: closed sessions plus the open ones up to now."""
        seconds = self.closed_seconds + gpu_seconds_between(self.spans, month_start(now), now)
        return (Decimal(seconds) / 3600).quantize(Decimal("0.001"))


def read_for_admission(
    db: Session,
    catalog: Catalog,
    install: str | None,
    *,
    team: str,
    user: str,
    server_name: str,
    gpu_type: str | None,
    now: datetime,
) -> AdmissionReads:
    """What admission decides on, read in two statements (call it holding the locks)."""
    limited = gpu_type is not None and limited_capacity(catalog, install, gpu_type)
    rows_statement, figures_statement = _statements(install is None, gpu_type is not None, limited)
    values = {
        "team": team,
        "user": user,
        "server_name": server_name,
        "install": install,
        "gpu_type": gpu_type,
        "month": month_key(now),
    }
    stale: list[int] = []
    spans: list[Span] = []
    hold_rows: list[HoldRow] = []
    row: Any
    for row in db.execute(rows_statement, values):
        if row.kind == "h":
            hold_rows.append(
                HoldRow(
                    row.id,
                    row.install,
                    row.gpu_type,
                    row.gpu_count,
                    row.team,
                    row.user,
                    row.server_name,
                )
            )
            continue
        if (row.user, row.server_name) == (user, server_name) and (
            install is None or row.install in (install, None)
        ):
            stale.append(row.id)
        elif row.team == team and row.gpu_count > 0:
            spans.append(
                Span(row.user, row.gpu_type, row.gpu_count, row.started_at, None, row.borrowed)
            )
    figures = db.execute(figures_statement, values).one()
    waiting, capacity, free = (
        quick_check_figures(figures[1:]) if gpu_type is not None else (0, None, None)
    )
    return AdmissionReads(
        stale=tuple(stale),
        spans=tuple(spans),
        holds=tuple(hold_rows),
        closed_seconds=int(figures[0] or 0),
        waiting=waiting,
        free=free,
        capacity=capacity,
    )


@lru_cache(maxsize=8)
def _statements(any_install: bool, of_type: bool, limited: bool) -> tuple[Any, Any]:
    """The two statements, with bind parameters (team, user, server_name, install, gpu_type,
    month), built once per shape: building them costs more than running them on SQLite."""
    install: Any = None if any_install else bindparam("install")
    team: Any = bindparam("team")
    user: Any = bindparam("user")
    server_name: Any = bindparam("server_name")
    s, h = UsageSession, GPUHold
    this_server = and_(s.user == user, s.server_name == server_name, of_install(install))
    sessions = select(
        literal("s").label("kind"),
        s.id.label("id"),
        s.install.label("install"),
        s.user.label("user"),
        s.server_name.label("server_name"),
        s.gpu_type.label("gpu_type"),
        s.gpu_count.label("gpu_count"),
        s.started_at.label("started_at"),
        s.team.label("team"),
        s.borrowed.label("borrowed"),
    ).where(
        s.ended_at.is_(None),
        or_(and_(s.team == team, s.gpu_count > 0), this_server),
    )
    holds = select(
        literal("h"),
        h.request_id,
        h.install,
        h.user,
        h.server_name,
        h.gpu_type,
        h.gpu_count,
        null(),
        h.team,
        false(),
    ).where(
        or_(
            h.team == team,
            and_(h.user == user, h.server_name == server_name, same_install(h.install, install)),
        )
    )
    closed = (
        select(TeamMonthUsage.gpu_seconds)
        .where(TeamMonthUsage.team == team, TeamMonthUsage.month == bindparam("month"))
        .scalar_subquery()
    )
    figures = (
        select(closed, *free_check_columns(install, bindparam("gpu_type"), limited))
        if of_type
        else select(closed)
    )
    return union_all(sessions, holds), figures


def read_shares(
    db: Session, catalog: Catalog, gpu_type: str, teams: Sequence[str]
) -> dict[str, Share]:
    """Each of `teams`' standing for `gpu_type` (policy/borrowing.py's `Share`), in one
    statement: its own servers' and holds' GPUs, its borrowed servers' GPUs, and the GPUs of its
    quota that others' borrowed servers run on. Quotas are database-wide, as admission's are."""
    s, h = UsageSession, GPUHold
    open_of_type = and_(s.gpu_type == gpu_type, s.ended_at.is_(None), s.team.in_(teams))
    sessions = (
        select(
            literal("s").label("kind"),
            s.team.label("team"),
            s.borrowed.label("borrowed"),
            func.sum(s.gpu_count).label("gpus"),
        )
        .where(open_of_type, s.gpu_count > 0)
        .group_by(s.team, s.borrowed)
    )
    holds = (
        select(literal("h"), h.team, false(), func.sum(h.gpu_count))
        .where(h.gpu_type == gpu_type, h.team.in_(teams))
        .group_by(h.team)
    )
    lent = (
        select(literal("l"), SessionLoan.lender, false(), func.sum(SessionLoan.gpus))
        .join(s, s.id == SessionLoan.session_id)
        .where(s.gpu_type == gpu_type, s.ended_at.is_(None), SessionLoan.lender.in_(teams))
        .group_by(SessionLoan.lender)
    )
    own: dict[str, int] = dict.fromkeys(teams, 0)
    borrowed = dict(own)
    lends = dict(own)
    row: Any
    for row in db.execute(union_all(sessions, holds, lent)):
        kind, team, is_borrowed, gpus = row[0], row[1], row[2], int(row[3] or 0)
        if team not in own:
            continue
        if kind == "l":
            lends[team] += gpus
        elif kind == "s" and is_borrowed:
            borrowed[team] += gpus
        else:
            own[team] += gpus
    shares = {}
    for team in teams:
        quota = catalog.teams[team].quota
        limit = quota.lend_limit.get(gpu_type)
        shares[team] = Share(
            team=team,
            quota=quota.gpus.get(gpu_type, 0),
            own=own[team],
            borrowed=borrowed[team],
            lent=lends[team],
            borrow_limit=quota.borrow_limit.get(gpu_type, 0),
            lend_limit=limit,
        )
    return shares
