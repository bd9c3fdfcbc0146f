"""session GPU use: per session and UTC day, the seconds observed and busy, peak memory, the
most GPUs in use, and a utilisation histogram, added to as activity reports arrive

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"

UTILIZATION_BUCKETS = 20  # of 5 % each: util_00 ... util_95


def upgrade() -> None:
    op.create_table(
        "session_gpu_use",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("observed_seconds", sa.BigInteger(), nullable=False),
        sa.Column("busy_seconds", sa.BigInteger(), nullable=False),
        sa.Column("busy_gpu_seconds", sa.BigInteger(), nullable=False),
        sa.Column("utilization_unknown", sa.Boolean(), nullable=False),
        sa.Column("peak_memory_mib", sa.Integer(), nullable=False),
        sa.Column("memory_total_mib", sa.Integer(), nullable=False),
        sa.Column("peak_gpus_in_use", sa.Integer(), nullable=False),
        *(
            sa.Column(f"util_{5 * n:02d}", sa.BigInteger(), nullable=False)
            for n in range(UTILIZATION_BUCKETS)
        ),
        sa.PrimaryKeyConstraint("session_id", "day", name="pk_session_gpu_use"),
    )


def downgrade() -> None:
    op.drop_table("session_gpu_use")
