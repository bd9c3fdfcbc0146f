"""The activity part of the ledger: each running session's latest GPU report (written when the
notebook extension reports), the Keep clicks, the culler's warning, and idle GPU-seconds per
day. The arithmetic is policy/activity.py; this module reads and writes rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..notebook.sampler import Activity
from ..policy.activity import ActivityReport, ActivityState, IdleSpan, after_report
from .models import IdleGPUDay, ServerActivity, UsageSession
from .sessions import dialect_insert, running_session
from .store import Ledger


@dataclass(frozen=True)
class CullWarning:
    """The culler's latest word on a server: what will happen, when, and why."""

    message: str
    cull_at: datetime
    reason: str


@dataclass(frozen=True)
class ActivityRecord:
    session_id: int
    state: ActivityState
    samples: str
    warning: CullWarning | None


def _state(row: ServerActivity) -> ActivityState:
    return ActivityState(
        reported_at=row.reported_at,
        gpu_activity=Activity(row.gpu_activity),
        kernel_busy=row.kernel_busy,
        gpu_idle_since=row.gpu_idle_since,
        idle_gpu_seconds=row.idle_gpu_seconds,
        kept_at=row.kept_at,
    )


def _record(row: ServerActivity) -> ActivityRecord:
    warning = None
    if row.warning and row.cull_at and row.cull_reason:
        warning = CullWarning(row.warning, row.cull_at, row.cull_reason)
    return ActivityRecord(row.session_id, _state(row), row.samples, warning)


class ActivityLedger:
    def __init__(self, ledger: Ledger) -> None:
        self.engine = ledger.engine
        self.install = ledger.install

    def open_session(self, db: Session, user: str, server_name: str) -> UsageSession | None:
        """The running session of a user's server (the newest, if reconciliation left two), of
        the ledger handle's install."""
        return db.scalars(running_session(user, server_name, self.install)).first()

    def record(
        self,
        user: str,
        server_name: str,
        report: ActivityReport,
        samples: str,
        at: datetime,
        max_gap: timedelta,
    ) -> ActivityRecord | None:
        """Apply one report of the server's extension; None if the server has no running
        session (not started yet, or already stopped: the report is dropped)."""
        with Session(self.engine) as db, db.begin():
            session = self.open_session(db, user, server_name)
            if session is None:
                return None
            row = db.get(ServerActivity, session.id, with_for_update=True)
            previous = _state(row) if row is not None else None
            state, spans = after_report(previous, report, at, session.gpu_count, max_gap)
            if row is None:
                row = ServerActivity(session_id=session.id)
                db.add(row)
            if state is not previous:
                row.reported_at = state.reported_at
                row.gpu_activity = state.gpu_activity.value
                row.kernel_busy = state.kernel_busy
                row.gpu_idle_since = state.gpu_idle_since
                row.idle_gpu_seconds = state.idle_gpu_seconds
                row.kept_at = state.kept_at
                row.samples = samples
            _add_idle(db, session.id, spans)
            db.flush()
            return _record(row)

    def keep(self, user: str, server_name: str, at: datetime) -> ActivityRecord | None:
        """The user clicked Keep: both idle clocks start again from `at`, the warning goes."""
        with Session(self.engine) as db, db.begin():
            session = self.open_session(db, user, server_name)
            if session is None:
                return None
            row = db.get(ServerActivity, session.id, with_for_update=True)
            if row is None:
                row = ServerActivity(
                    session_id=session.id,
                    reported_at=at,
                    gpu_activity=Activity.UNKNOWN.value,
                    kernel_busy=False,
                    idle_gpu_seconds=0,
                    samples="[]",
                )
                db.add(row)
            row.kept_at = max(filter(None, (row.kept_at, at)))
            row.warning = row.cull_at = row.cull_reason = None
            db.flush()
            return _record(row)

    def records(self, session_ids: Sequence[int]) -> dict[int, ActivityRecord]:
        if not session_ids:
            return {}
        with Session(self.engine) as db:
            rows = db.scalars(
                select(ServerActivity).where(ServerActivity.session_id.in_(session_ids))
            )
            return {row.session_id: _record(row) for row in rows}

    def stop_message(self, session_id: int) -> str | None:
        """The culler's message about stopping this session's server, if it left one."""
        with Session(self.engine) as db:
            row = db.get(ServerActivity, session_id)
            session = db.get(UsageSession, session_id)
            if row is None or session is None or row.cull_reason != session.end_reason:
                return None
            return row.warning

    def warn(self, session_id: int, warning: CullWarning | None) -> None:
        """Keep the culler's warning for the server's extension to show (None: clear it)."""
        values = (
            {"warning": warning.message, "cull_at": warning.cull_at, "cull_reason": warning.reason}
            if warning is not None
            else {"warning": None, "cull_at": None, "cull_reason": None}
        )
        with Session(self.engine) as db, db.begin():
            db.execute(
                update(ServerActivity)
                .where(ServerActivity.session_id == session_id)
                .values(**values)
            )


def _add_idle(db: Session, session_id: int, spans: Sequence[IdleSpan]) -> None:
    insert = dialect_insert(db)
    for span in spans:
        statement = insert(IdleGPUDay).values(
            session_id=session_id, day=span.day, gpu_seconds=span.gpu_seconds
        )
        db.execute(
            statement.on_conflict_do_update(
                index_elements=["session_id", "day"],
                set_={"gpu_seconds": IdleGPUDay.gpu_seconds + statement.excluded.gpu_seconds},
            )
        )
