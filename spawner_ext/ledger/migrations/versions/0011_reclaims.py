"""reclaims: when a borrowed server is stopped to give its GPUs back, and for which team

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.add_column(sa.Column("reclaim_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("reclaim_for", sa.String(63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.drop_column("reclaim_for")
        batch.drop_column("reclaim_at")
