"""borrowing: a session on other teams' quota is marked borrowed, and its loans say whose quota
and how many GPUs of it

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.add_column(
            sa.Column("borrowed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "session_loans",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("lender", sa.String(63), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "lender", name="pk_session_loans"),
    )
    op.create_index("ix_session_loans_lender", "session_loans", ["lender"])


def downgrade() -> None:
    op.drop_index("ix_session_loans_lender", table_name="session_loans")
    op.drop_table("session_loans")
    with op.batch_alter_table("usage_sessions") as batch:
        batch.drop_column("borrowed")
