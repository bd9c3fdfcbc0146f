"""session identity: a key that never repeats (`uid`, what pod labels, spawner state and server
environments carry) and the install a session belongs to (`install`)

Sessions recorded before keep their integer id as their key (`uid` = the id as text), so the
labels and spawner states written before this version still name them; new sessions get a
random UUID, which no restore from a backup and no other install sharing the database repeats.
Their install stays NULL: a session from before installs were told apart is every install's.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.add_column(sa.Column("uid", sa.String(36), nullable=True))
        batch.add_column(sa.Column("install", sa.String(63), nullable=True))
    sessions = sa.table("usage_sessions", sa.column("id", sa.Integer), sa.column("uid", sa.String))
    op.execute(sessions.update().values(uid=sa.cast(sessions.c.id, sa.String)))
    with op.batch_alter_table("usage_sessions") as batch:
        batch.alter_column("uid", existing_type=sa.String(36), nullable=False)
        batch.create_index("ix_usage_sessions_uid", ["uid"], unique=True)
        batch.create_index("ix_usage_sessions_install", ["install", "ended_at"])


def downgrade() -> None:
    with op.batch_alter_table("usage_sessions") as batch:
        batch.drop_index("ix_usage_sessions_install")
        batch.drop_index("ix_usage_sessions_uid")
        batch.drop_column("install")
        batch.drop_column("uid")
