"""Alembic environment of the ledger (run by `gpuhub db upgrade`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from spawner_ext.ledger.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None

connectable = config.attributes.get("connection")
if connectable is None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connectable, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
