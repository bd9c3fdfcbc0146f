"""the wait-list: requests in line, GPU holds, a lock row per GPU type, GPU capacity per
install, and the notifier's outbox

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0008"
down_revision = "0007"

LIVE = sa.text("state IN ('waiting', 'held', 'starting')")


def upgrade() -> None:
    op.create_table(
        "waitlist_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("install", sa.String(63), nullable=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("gpu_type", sa.String(63), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("start", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("joined_at", UTCDateTime(), nullable=False),
        sa.Column("turn_at", UTCDateTime(), nullable=True),
        sa.Column("hold_until", UTCDateTime(), nullable=True),
        sa.Column("start_asked_at", UTCDateTime(), nullable=True),
        sa.Column("start_attempts", sa.Integer(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("message", sa.String(500), nullable=True),
        sa.Column("session", sa.String(36), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("estimated_start", UTCDateTime(), nullable=True),
        sa.Column("blocked", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_waitlist_requests"),
    )
    op.create_index("ix_waitlist_requests_uid", "waitlist_requests", ["uid"], unique=True)
    op.create_index(
        "ix_waitlist_requests_line", "waitlist_requests", ["install", "gpu_type", "state"]
    )
    op.create_index(
        "ix_waitlist_requests_live_server",
        "waitlist_requests",
        ["install", "user", "server_name"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )
    op.create_table(
        "gpu_holds",
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("install", sa.String(63), nullable=True),
        sa.Column("gpu_type", sa.String(63), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_gpu_holds"),
    )
    op.create_index("ix_gpu_holds_type", "gpu_holds", ["install", "gpu_type"])
    op.create_table(
        "gpu_type_locks",
        sa.Column("gpu_type", sa.String(63), nullable=False),
        sa.PrimaryKeyConstraint("gpu_type", name="pk_gpu_type_locks"),
    )
    op.create_table(
        "gpu_capacity",
        sa.Column("install", sa.String(63), nullable=False),
        sa.Column("gpu_type", sa.String(63), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("used_elsewhere", sa.Integer(), nullable=False),
        sa.Column("observed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("install", "gpu_type", name="pk_gpu_capacity"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
    )
    op.create_index("ix_notifications_key", "notifications", ["key"], unique=True)
    op.create_index(
        "ix_notifications_due", "notifications", ["sent_at", "gave_up_at", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("gpu_capacity")
    op.drop_table("gpu_type_locks")
    op.drop_table("gpu_holds")
    op.drop_index("ix_waitlist_requests_live_server", table_name="waitlist_requests")
    op.drop_index("ix_waitlist_requests_line", table_name="waitlist_requests")
    op.drop_index("ix_waitlist_requests_uid", table_name="waitlist_requests")
    op.drop_table("waitlist_requests")
