"""usage sessions: one row per server run

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "usage_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("team", sa.String(63), nullable=True),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("gpu_type", sa.String(63), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("price_per_hour", sa.Numeric(14, 6), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.Column("gpu_seconds", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Numeric(18, 6), nullable=True),
        sa.Column("runtime_ref", sa.String(255), nullable=True),
        sa.Column("catalog_version", sa.String(12), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_sessions"),
    )
    op.create_index("ix_usage_sessions_open", "usage_sessions", ["team", "ended_at"])
    op.create_index(
        "ix_usage_sessions_user_server", "usage_sessions", ["user", "server_name", "ended_at"]
    )


def downgrade() -> None:
    op.drop_table("usage_sessions")
