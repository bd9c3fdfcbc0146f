"""Engines for the ledger database: SQLite (default) and PostgreSQL, with the locking that makes
admission atomic, and the schema check that refuses to run on an old schema."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "gpuhub_read_only"
DEFAULT_URL = "sqlite:///gpuhub-ledger.sqlite"
"""A file beside JupyterHub's own jupyterhub.sqlite (both relative to the hub's directory)."""


def redacted(url: str) -> str:
    """`url` with its password hidden, for messages and logs (`postgresql://gpuhub:***@db/x`)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class SchemaError(RuntimeError):
    """The ledger database is missing its schema or has an older one."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. On SQLite every transaction takes the write lock at BEGIN
    (BEGIN IMMEDIATE), so admissions are serialised across threads and processes; transactions
    on `engine.execution_options(gpuhub_read_only=True)` only read (a plain BEGIN). A SQLite
    file is put in write-ahead-log mode (`wal_mode`). On a server, `server_options` apply (the
    caller's keyword arguments win)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            wal_mode(dbapi_connection)

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, **{**server_options(url), **kwargs})


def wal_mode(dbapi_connection: Any) -> None:
    """Put the connection's SQLite file in write-ahead-log mode, once per file (the mode stays
    with the file). A commit then appends to the log with one fsync (`synchronous` stays FULL:
    a committed admission survives a power loss) instead of writing a rollback journal and the
    database with two, and readers (the service's reports) no longer wait for a writer (the
    hub's admissions). The log needs shared memory between the processes that open the file:
    keep the file on a local disk, not a network file system. A database in memory, or a file
    that cannot be written, keeps its mode."""
    with contextlib.suppress(sqlite3.DatabaseError):  # read-only: it reads in the file's mode
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


CONNECT_TIMEOUT_SECONDS = 5
"""How long a connection attempt waits for a database host that does not answer, unless the URL
says (`connect_timeout=`); libpq's own default waits as long as the operating system does."""


def server_options(url: str) -> dict[str, Any]:
    """Engine options for a database server (PostgreSQL): a pooled connection is tested before
    use (one left from before a failover or restart is replaced, not handed out broken), and a
    connection attempt gives up after CONNECT_TIMEOUT_SECONDS unless the URL gives its own
    `connect_timeout`. With several hosts in the URL (`?host=a:5432&host=b:5432`) libpq tries
    them in order, so an unanswering first host costs that long per attempt."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    if "connect_timeout" not in make_url(url).query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return options


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the ledger schema at `url` up to `revision` (creating it in an empty database)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def check_schema(engine: Engine, url_for_message: str) -> None:
    """Raise SchemaError unless the schema is the one this version of gpuhub needs."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    what = "has no ledger schema" if current is None else f"has ledger schema {current}"
    shown = redacted(url_for_message)
    raise SchemaError(
        f"the billing database {shown} {what}; this gpuhub needs {head}. "
        f"Run: gpuhub db upgrade --db-url {shown}"
    )
