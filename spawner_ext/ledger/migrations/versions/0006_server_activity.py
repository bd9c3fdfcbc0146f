"""server activity: the notebook extension's latest GPU report per session, the culler's
warning, and idle GPU-seconds per session and day

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "server_activity",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("reported_at", UTCDateTime(), nullable=False),
        sa.Column("gpu_activity", sa.String(16), nullable=False),
        sa.Column("kernel_busy", sa.Boolean(), nullable=False),
        sa.Column("gpu_idle_since", UTCDateTime(), nullable=True),
        sa.Column("idle_gpu_seconds", sa.BigInteger(), nullable=False),
        sa.Column("kept_at", UTCDateTime(), nullable=True),
        sa.Column("samples", sa.Text(), nullable=False),
        sa.Column("warning", sa.String(500), nullable=True),
        sa.Column("cull_at", UTCDateTime(), nullable=True),
        sa.Column("cull_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("session_id", name="pk_server_activity"),
    )
    op.create_table(
        "idle_gpu_days",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("gpu_seconds", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "day", name="pk_idle_gpu_days"),
    )


def downgrade() -> None:
    op.drop_table("idle_gpu_days")
    op.drop_table("server_activity")
