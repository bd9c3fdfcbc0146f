"""The SQLite ledger's journal: write-ahead log on a file (one fsync per commit, readers beside a
writer), and a file that cannot be written still opens to read.

Broken once each: `wal_mode` left out of the engine's connect hook (the file stayed in `delete`
mode); its read-only error not caught (the read-only engine failed to connect)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from spawner_ext.ledger.engine import make_engine, upgrade


def journal_mode(path: Path) -> str:
    """The file's journal mode as SQLite itself reports it, on a connection of its own."""
    connection = sqlite3.connect(path)
    try:
        mode: str = connection.execute("PRAGMA journal_mode").fetchone()[0]
        return mode
    finally:
        connection.close()


def test_a_ledger_file_is_in_write_ahead_log_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    upgrade(f"sqlite:///{path}")
    assert journal_mode(path) == "delete"  # alembic's own engine leaves SQLite's default
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert journal_mode(path) == "wal"


def test_a_read_only_ledger_file_opens_in_its_own_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    upgrade(f"sqlite:///{path}")
    # read-only as SQLite opens it (file modes do not stop root, who runs the tests on CI)
    engine = make_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.execution_options(gpuhub_read_only=True).connect() as connection:
            tables = connection.execute(
                text("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert tables > 0
    assert journal_mode(path) == "delete"
