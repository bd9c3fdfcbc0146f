"""monthly GPU-seconds per team, so admission does not sum the month's history

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa
from alembic import op

from spawner_ext.ledger.models import UTCDateTime
from spawner_ext.ledger.rules import month_pieces

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    table = op.create_table(
        "team_month_usage",
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("gpu_seconds", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team", "month", name="pk_team_month_usage"),
    )
    sessions = sa.table(
        "usage_sessions",
        sa.column("team", sa.String()),
        sa.column("gpu_count", sa.Integer()),
        sa.column("started_at", UTCDateTime()),
        sa.column("ended_at", UTCDateTime()),
    )
    closed = op.get_bind().execute(
        sa.select(sessions.c.team, sessions.c.gpu_count, sessions.c.started_at, sessions.c.ended_at)
        .where(
            sessions.c.team.is_not(None),
            sessions.c.gpu_count > 0,
            sessions.c.started_at.is_not(None),
            sessions.c.ended_at.is_not(None),
        )
        .execution_options(yield_per=10_000)
    )
    totals: Counter[tuple[str, str]] = Counter()
    for team, count, started, ended in closed:
        for month, seconds in month_pieces(started, ended, count):
            totals[(team, month)] += seconds
    if totals:
        op.bulk_insert(
            table,
            [{"team": t, "month": m, "gpu_seconds": n} for (t, m), n in sorted(totals.items())],
        )


def downgrade() -> None:
    op.drop_table("team_month_usage")
