"""reconciliation and atomic admission: last_seen_at, team_locks, index on started_at

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.add_column(sa.Column("last_seen_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE usage_sessions SET last_seen_at = started_at WHERE ended_at IS NULL")
    op.create_index("ix_usage_sessions_started", "usage_sessions", ["team", "started_at"])
    op.create_table(
        "team_locks",
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("over_budget_since", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("team", name="pk_team_locks"),
    )


def downgrade() -> None:
    op.drop_table("team_locks")
    op.drop_index("ix_usage_sessions_started", "usage_sessions")
    with op.batch_alter_table("usage_sessions") as batch:
        batch.drop_column("last_seen_at")
