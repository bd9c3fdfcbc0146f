"""stop requests: why the gpuhub service asked for a session's server to stop, and when

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.add_column(sa.Column("stop_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("stop_requested_at", UTCDateTime(), nullable=True))
    op.create_index("ix_usage_sessions_runtime_ref", "usage_sessions", ["runtime_ref", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_sessions_runtime_ref", "usage_sessions")
    with op.batch_alter_table("usage_sessions") as batch:
        batch.drop_column("stop_requested_at")
        batch.drop_column("stop_reason")
