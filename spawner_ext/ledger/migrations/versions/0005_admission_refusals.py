"""admission refusals: GPU spawns refused per team, GPU type and reason (for the metrics)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "admission_refusals",
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("gpu_type", sa.String(63), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("refusals", sa.BigInteger(), nullable=False),
        sa.Column("last_refused_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("team", "gpu_type", "reason", name="pk_admission_refusals"),
    )


def downgrade() -> None:
    op.drop_table("admission_refusals")
