"""SQLite's online backup for the tests that back up and restore a ledger file."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def sqlite_backup(source: Path, target: Path) -> None:
    """Copy the database `source` into `target`, as `sqlite3 SOURCE ".backup TARGET"` and
    `sqlite3 TARGET ".restore SOURCE"` do: every connection to the target sees the copied
    content, and a write-ahead-log file's commits are in the copy (a `cp` of the file misses
    them)."""
    with closing(sqlite3.connect(source)) as copied, closing(sqlite3.connect(target)) as into:
        copied.backup(into)
