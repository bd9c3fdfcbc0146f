"""SQLAlchemy 2 models of the ledger. Times are stored as UTC and always come back aware."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone; PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_session_key() -> str:
    """A usage session's key: 32 hex digits of a random UUID (a valid Kubernetes label value)."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UsageSession(Base):
    """One run of one server: admitted (`requested_at`), billed from `started_at` to `ended_at`."""

    __tablename__ = "usage_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    """The ledger's own key (joins, ordering); never leaves the ledger's database."""
    uid: Mapped[str] = mapped_column(String(36), default=new_session_key)
    """The session's key outside the ledger (pod labels, spawner state, a server's environment):
    a random UUID that no restore and no other install repeats (a session from before 0007:
    its id as text)."""
    install: Mapped[str | None] = mapped_column(String(63))
    """The install (hub and service) the session belongs to; None: from before installs were
    told apart, every install's."""
    user: Mapped[str] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(63))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    profile: Mapped[str] = mapped_column(String(63))
    gpu_type: Mapped[str | None] = mapped_column(String(63))
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    price_per_hour: Mapped[Decimal] = mapped_column(Numeric(14, 6))
    """Price of the whole server (all its GPUs) per hour, as in force when it was admitted."""
    currency: Mapped[str] = mapped_column(String(3))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The last time the server was seen running (start, or a reconciliation tick)."""
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(32))
    gpu_seconds: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    runtime_ref: Mapped[str | None] = mapped_column(String(255))
    """Where it runs: `namespace/pod` on Kubernetes, `local:<pid>` in local mode."""
    catalog_version: Mapped[str] = mapped_column(String(12), default="")
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    """Why the gpuhub service asked the hub to stop the server (budget, culling); the session
    ends with this reason once the server is really gone."""
    stop_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    borrowed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Run on other teams' quota (its loans, `SessionLoan`); such a server may be reclaimed."""
    reclaim_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """A borrowed server chosen to give its GPUs back: when it is stopped (its user was warned
    from the choice on); None when not chosen, or the choice was withdrawn."""
    reclaim_for: Mapped[str | None] = mapped_column(String(63))
    """The team whose people in line the GPUs are reclaimed for."""
    own_price_per_hour: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    """A borrowed session's price had it been own (its `price_per_hour` is that times
    `borrowing.price_factor`): what it costs from when it becomes own; None for an own one."""
    run_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the server's run started, for a session that continues an earlier part of the same
    run (a borrowed server that became own: the session was split there); None otherwise, when
    `started_at` is the run's start. The server's age (max_age, the meter) counts from it."""

    __table_args__ = (
        Index("ix_usage_sessions_open", "team", "ended_at"),
        Index("ix_usage_sessions_user_server", "user", "server_name", "ended_at"),
        Index("ix_usage_sessions_started", "team", "started_at"),
        Index("ix_usage_sessions_runtime_ref", "runtime_ref", "ended_at"),
        Index("ix_usage_sessions_uid", "uid", unique=True),
        Index("ix_usage_sessions_install", "install", "ended_at"),
    )


class TeamLock(Base):
    """One row per team, locked (INSERT ... ON CONFLICT DO UPDATE) while admitting a spawn on
    PostgreSQL, so concurrent admissions for one team run one after the other."""

    __tablename__ = "team_locks"

    team: Mapped[str] = mapped_column(String(63), primary_key=True)
    over_budget_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the team was first seen over its monthly budget (cleared in a new month)."""


class TeamMonthUsage(Base):
    """GPU-seconds of a team's closed sessions per calendar month (UTC), kept up to date in the
    transaction that closes each session, so a budget check reads one row plus the few open
    sessions instead of the month's history."""

    __tablename__ = "team_month_usage"

    team: Mapped[str] = mapped_column(String(63), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    """'YYYY-MM'."""
    gpu_seconds: Mapped[int] = mapped_column(BigInteger, default=0)


class AdmissionRefusals(Base):
    """How many GPU spawns were refused, per team, GPU type and reason (gpu-quota, user-cap,
    budget, billing-unavailable): counters the hub adds to and the service's metrics read."""

    __tablename__ = "admission_refusals"

    team: Mapped[str] = mapped_column(String(63), primary_key=True)
    gpu_type: Mapped[str] = mapped_column(String(63), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    refusals: Mapped[int] = mapped_column(BigInteger, default=0)
    last_refused_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ServerActivity(Base):
    """The latest activity report of a session's server (the notebook extension's GPU samples)
    and what the culler decided about it: one row per session, written by the service."""

    __tablename__ = "server_activity"

    session_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime())
    gpu_activity: Mapped[str] = mapped_column(String(16))
    """busy, idle, unknown or none (notebook/sampler.py Activity)."""
    kernel_busy: Mapped[bool] = mapped_column(Boolean, default=False)
    gpu_idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    idle_gpu_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    kept_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The last click on Keep in the warning."""
    samples: Mapped[str] = mapped_column(Text, default="[]")
    """The latest GPU samples, as JSON."""
    warning: Mapped[str | None] = mapped_column(String(500))
    """The culler's warning while the server is about to be stopped; None otherwise."""
    cull_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cull_reason: Mapped[str | None] = mapped_column(String(32))


class IdleGPUDay(Base):
    """Idle GPU-seconds (waste) of a session per UTC day, for the reports' idle_gpu_hours."""

    __tablename__ = "idle_gpu_days"

    session_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    gpu_seconds: Mapped[int] = mapped_column(BigInteger, default=0)


# --- the wait-list (policy/waitlist.py decides; ledger/waitlist.py records) -----------------------

LIVE_REQUEST_STATES = ("waiting", "held", "starting")
"""States of a request still in line or about to start; the others (started, expired, cancelled,
failed) have ended."""


class WaitlistRequest(Base):
    """One person's place in line for one server and one GPU profile: joined, given its turn (a
    hold), started, or ended without a server (expired, cancelled, failed)."""

    __tablename__ = "waitlist_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), default=new_session_key)
    """The request's key outside the ledger (the API's `id`)."""
    install: Mapped[str | None] = mapped_column(String(63))
    user: Mapped[str] = mapped_column(String(255))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    team: Mapped[str] = mapped_column(String(63))
    profile: Mapped[str] = mapped_column(String(63))
    gpu_type: Mapped[str] = mapped_column(String(63))
    gpu_count: Mapped[int] = mapped_column(Integer)
    options: Mapped[str] = mapped_column(Text, default="{}")
    """The spawn's user options, as JSON: what the server is started with at its turn."""
    start: Mapped[str] = mapped_column(String(8), default="ask")
    """auto: started at its turn; ask: the GPU is held for the person to start it."""
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime())
    turn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its GPUs were held for it (its turn)."""
    hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Until when the hold lasts: to be started (ask) or to be admitted (auto)."""
    start_asked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its server's start was asked of the hub (auto at its turn; ask when the person
    said so); a cancel after this stops the server."""
    start_attempts: Mapped[int] = mapped_column(Integer, default=0)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message: Mapped[str | None] = mapped_column(String(500))
    """Why it ended, or why its last start failed, for the person."""
    session: Mapped[str | None] = mapped_column(String(36))
    """The usage session (its key) whose admission consumed the hold."""
    position: Mapped[int | None] = mapped_column(Integer)
    """Its place in line (1-based) when the line was last worked out; None once it has a turn."""
    estimated_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When it will likely get its GPUs, as last worked out (None: cannot be told yet)."""
    blocked: Mapped[str | None] = mapped_column(String(32))
    """Why it was skipped though it keeps its place (gpu-quota, budget, user-cap), last time."""

    __table_args__ = (
        Index("ix_waitlist_requests_uid", "uid", unique=True),
        Index("ix_waitlist_requests_line", "install", "gpu_type", "state"),
        Index(
            "ix_waitlist_requests_live_server",
            "install",
            "user",
            "server_name",
            unique=True,
            sqlite_where=text("state IN ('waiting', 'held', 'starting')"),
            postgresql_where=text("state IN ('waiting', 'held', 'starting')"),
        ),
    )


class GPUHold(Base):
    """GPUs of one type set aside for one request at its turn: counted as its team's and user's
    (admission), subtracted from what others may take (admission, the local allocator), and
    consumed by the holder's own admission. Not a session: nothing is billed for a hold."""

    __tablename__ = "gpu_holds"

    request_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    install: Mapped[str | None] = mapped_column(String(63))
    gpu_type: Mapped[str] = mapped_column(String(63))
    gpu_count: Mapped[int] = mapped_column(Integer)
    team: Mapped[str] = mapped_column(String(63))
    user: Mapped[str] = mapped_column(String(255))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    until: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_gpu_holds_type", "install", "gpu_type"),)


class GPUTypeLock(Base):
    """One row per GPU type, locked while admitting a spawn of the type or giving turns on
    PostgreSQL (SQLite: the database's write lock), so no GPU goes to two people."""

    __tablename__ = "gpu_type_locks"

    gpu_type: Mapped[str] = mapped_column(String(63), primary_key=True)


class GPUCapacity(Base):
    """How many GPUs of a type an install's servers can get: the local machine's devices (written
    by the hub) or the matching Kubernetes nodes' allocatable GPUs (written by the service)."""

    __tablename__ = "gpu_capacity"

    install: Mapped[str] = mapped_column(String(63), primary_key=True)
    gpu_type: Mapped[str] = mapped_column(String(63), primary_key=True)
    total: Mapped[int] = mapped_column(Integer)
    used_elsewhere: Mapped[int] = mapped_column(Integer, default=0)
    """GPUs of those nodes taken by pods that are not this install's open sessions."""
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Notification(Base):
    """The notifier's outbox: one message to send (email or webhook), written in the transaction
    that decided it, sent once by the service (retried until it goes or is given up)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    """What it is about, unique: the same event never queues twice (e.g. waitlist:<id>:turn)."""
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (
        Index("ix_notifications_key", "key", unique=True),
        Index("ix_notifications_due", "sent_at", "gave_up_at", "next_attempt_at"),
    )


# --- GPU use per session (policy/gpu_use.py adds up; ledger/activity.py records) ---------------

UTILIZATION_COLUMNS = tuple(f"util_{5 * n:02d}" for n in range(20))
"""The utilisation histogram's columns, bucket by bucket (policy/gpu_use.py BUCKETS)."""


class SessionGPUUse(Base):
    """How much of its GPUs a session used on one UTC day, added to as its server's activity
    reports arrive (policy/gpu_use.py GPUUse; a report counts on the day it arrives). Bounded: one
    row per session and day, whatever the number of reports."""

    __tablename__ = "session_gpu_use"

    session_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    reports: Mapped[int] = mapped_column(BigInteger, default=0)
    observed_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    busy_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    """Seconds in which any GPU was above the utilisation threshold."""
    busy_gpu_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    utilization_unknown: Mapped[bool] = mapped_column(Boolean, default=False)
    peak_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    memory_total_mib: Mapped[int] = mapped_column(Integer, default=0)
    peak_gpus_in_use: Mapped[int] = mapped_column(Integer, default=0)
    util_00: Mapped[int] = mapped_column(BigInteger, default=0)
    util_05: Mapped[int] = mapped_column(BigInteger, default=0)
    util_10: Mapped[int] = mapped_column(BigInteger, default=0)
    util_15: Mapped[int] = mapped_column(BigInteger, default=0)
    util_20: Mapped[int] = mapped_column(BigInteger, default=0)
    util_25: Mapped[int] = mapped_column(BigInteger, default=0)
    util_30: Mapped[int] = mapped_column(BigInteger, default=0)
    util_35: Mapped[int] = mapped_column(BigInteger, default=0)
    util_40: Mapped[int] = mapped_column(BigInteger, default=0)
    util_45: Mapped[int] = mapped_column(BigInteger, default=0)
    util_50: Mapped[int] = mapped_column(BigInteger, default=0)
    util_55: Mapped[int] = mapped_column(BigInteger, default=0)
    util_60: Mapped[int] = mapped_column(BigInteger, default=0)
    util_65: Mapped[int] = mapped_column(BigInteger, default=0)
    util_70: Mapped[int] = mapped_column(BigInteger, default=0)
    util_75: Mapped[int] = mapped_column(BigInteger, default=0)
    util_80: Mapped[int] = mapped_column(BigInteger, default=0)
    util_85: Mapped[int] = mapped_column(BigInteger, default=0)
    util_90: Mapped[int] = mapped_column(BigInteger, default=0)
    util_95: Mapped[int] = mapped_column(BigInteger, default=0)
    """util_NN: seconds in which the busiest GPU's utilisation was in [NN, NN + 5) percent
    (util_95: [95, 100])."""


class SessionLoan(Base):
    """GPUs of another team's quota that a borrowed session runs on: `gpus` of `lender`'s quota
    for the session's GPU type, for the session's whole span (a change splits the session)."""

    __tablename__ = "session_loans"

    session_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lender: Mapped[str] = mapped_column(String(63), primary_key=True)
    gpus: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_session_loans_lender", "lender"),)
