"""The activity part of the ledger: each running session's latest GPU report (written when the
notebook extension reports), the Keep clicks, the culler's warning, idle GPU-seconds per day,
and how much of its GPUs each session used. The arithmetic is policy/activity.py and
policy/gpu_use.py; this module reads and writes rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import case, or_, select, update
from sqlalchemy.orm import Session

from ..notebook.sampler import Activity
from ..policy.activity import ActivityReport, ActivityState, IdleSpan, after_report
from ..policy.gpu_use import BUCKETS, GPUUse, GPUUseSample, merge_all, report_seconds, report_use
from .models import (
    UTILIZATION_COLUMNS,
    IdleGPUDay,
    ServerActivity,
    SessionGPUUse,
    UsageSession,
)
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
        use: GPUUseSample | None = None,
    ) -> ActivityRecord | None:
        """Apply one report of the server's extension; None if the server has no running
        session (not started yet, or already stopped: the report is dropped). `use`, the
        report's GPUs reduced (policy/gpu_use.py sample_use), is added to the session's GPU
        use for the time since its previous report, at most `max_gap`.

        Two reports of one server at once: the server_activity row is locked (PostgreSQL:
        SELECT ... FOR UPDATE; SQLite: BEGIN IMMEDIATE) before the previous report's time is
        read, so each report's time is counted once; the GPU use is added in SQL (an upsert
        with arithmetic), so neither report's share is lost."""
        with Session(self.engine) as db, db.begin():
            session = self.open_session(db, user, server_name)
            if session is None:
                return None
            row, previous = _locked_row(db, session.id, at)
            state, spans = after_report(previous, report, at, session.gpu_count, max_gap)
            if use is not None:
                seconds = report_seconds(previous.reported_at if previous else None, at, max_gap)
                _add_use(db, session.id, at.astimezone(UTC).date(), report_use(use, seconds))
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

    def gpu_use(self, session_ids: Sequence[int]) -> dict[int, GPUUse]:
        """Each session's GPU use over all its days (sessions never reported: absent)."""
        return {
            session_id: merge_all(days.values())
            for session_id, days in self.gpu_use_by_day(session_ids).items()
        }

    def gpu_use_by_day(self, session_ids: Sequence[int]) -> dict[int, dict[date, GPUUse]]:
        """Each session's GPU use per UTC day (the day its reports arrived)."""
        if not session_ids:
            return {}
        out: dict[int, dict[date, GPUUse]] = {}
        with Session(self.engine) as db:
            rows = db.scalars(
                select(SessionGPUUse).where(SessionGPUUse.session_id.in_(session_ids))
            )
            for row in rows:
                out.setdefault(row.session_id, {})[row.day] = _use(row)
        return out

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


def _locked_row(
    db: Session, session_id: int, at: datetime
) -> tuple[ServerActivity, ActivityState | None]:
    """The session's server_activity row, locked until the transaction ends, and the state it
    held before (None: this is the session's first report). The first reports of a server
    racing each other: one inserts the row, the others wait for it (ON CONFLICT DO NOTHING)
    and go on from it, as if they had come after it."""
    row = db.get(ServerActivity, session_id, with_for_update=True)
    if row is not None:
        return row, _state(row)
    inserted = db.execute(
        dialect_insert(db)(ServerActivity)
        .values(
            session_id=session_id,
            reported_at=at,
            gpu_activity=Activity.UNKNOWN.value,
            kernel_busy=False,
            idle_gpu_seconds=0,
            samples="[]",
        )
        .on_conflict_do_nothing(index_elements=["session_id"])
        .returning(ServerActivity.session_id)
    ).first()
    row = db.get(ServerActivity, session_id, with_for_update=True, populate_existing=True)
    assert row is not None
    return row, None if inserted is not None else _state(row)


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


assert len(UTILIZATION_COLUMNS) == BUCKETS, "one column per bucket of policy/gpu_use.py"


def _use(row: SessionGPUUse) -> GPUUse:
    return GPUUse(
        reports=row.reports,
        observed_seconds=row.observed_seconds,
        busy_seconds=row.busy_seconds,
        busy_gpu_seconds=row.busy_gpu_seconds,
        utilization_seconds=tuple(getattr(row, name) for name in UTILIZATION_COLUMNS),
        utilization_unknown=row.utilization_unknown,
        peak_memory_mib=row.peak_memory_mib,
        memory_total_mib=row.memory_total_mib,
        peak_gpus_in_use=row.peak_gpus_in_use,
    )


SUMMED = ("reports", "observed_seconds", "busy_seconds", "busy_gpu_seconds", *UTILIZATION_COLUMNS)
BIGGER = ("peak_memory_mib", "memory_total_mib", "peak_gpus_in_use")


def _add_use(db: Session, session_id: int, day: date, add: GPUUse) -> None:
    """policy/gpu_use.py `merge` of the stored day and `add`, in one statement (an upsert)."""
    values: dict[str, Any] = {
        "reports": add.reports,
        "observed_seconds": add.observed_seconds,
        "busy_seconds": add.busy_seconds,
        "busy_gpu_seconds": add.busy_gpu_seconds,
        "utilization_unknown": add.utilization_unknown,
        "peak_memory_mib": add.peak_memory_mib,
        "memory_total_mib": add.memory_total_mib,
        "peak_gpus_in_use": add.peak_gpus_in_use,
        **dict(zip(UTILIZATION_COLUMNS, add.utilization_seconds, strict=True)),
    }
    statement = dialect_insert(db)(SessionGPUUse).values(session_id=session_id, day=day, **values)
    table, new = SessionGPUUse.__table__.c, statement.excluded
    set_: dict[str, Any] = {name: table[name] + new[name] for name in SUMMED}
    set_ |= {name: case((new[name] > table[name], new[name]), else_=table[name]) for name in BIGGER}
    set_["utilization_unknown"] = or_(table.utilization_unknown, new.utilization_unknown)
    db.execute(statement.on_conflict_do_update(index_elements=["session_id", "day"], set_=set_))
