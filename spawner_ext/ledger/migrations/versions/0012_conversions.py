"""conversions: a borrowed server that becomes an own one has its session split; the part that
goes on keeps when the server's run started, and a borrowed session keeps the price it will have
once own

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.add_column(sa.Column("run_started_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("own_price_per_hour", sa.Numeric(14, 6), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.drop_column("own_price_per_hour")
        batch.drop_column("run_started_at")
