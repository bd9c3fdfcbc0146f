"""A real PostgreSQL server for the tests, from Debian's package, started once per test session.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user the package
creates. Tests marked `postgres` are skipped, with the reason, when the package is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    data: Path | None = None
    bindir: Path | None = None
    run_user: str | None = None
    sockets: Path | None = None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq's connection string for `database` (the server's own by default)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    def create_database(self, name: str) -> str:
        """A new, empty database `name` (one of that name left from an earlier run is dropped
        first); its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pg_ctl(self, *args: str) -> None:
        assert self.bindir is not None and self.data is not None
        subprocess.run(
            _run_as(self.run_user, [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        """Stop the server at once (as a crash or an outage would)."""
        self.pg_ctl("-m", "immediate", "-w", "stop")

    def stop_quietly(self) -> None:
        """Stop the server at once if it runs (no error if it does not)."""
        assert self.bindir is not None and self.data is not None
        subprocess.run(
            _run_as(self.run_user, [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                                    "immediate", "-w", "stop"]),
            check=False, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        self.pg_ctl("-l", str(self.data.parent / "server.log") if self.data else "", "-w", "start",
                    "-o", _options(self.port, self.sockets))  # fmt: skip


def _options(port: int, sockets: Path | None) -> str:
    return f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=200"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


def start_server() -> Iterator[PostgresServer]:
    """Start a throwaway server on 127.0.0.1; stop it and remove its data when done."""
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/bootstrap system installs it)")
    run_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="gpuhub-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if run_user:
        entry = pwd.getpwnam(run_user)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    db_user = run_user or pwd.getpwuid(os.geteuid()).pw_name
    port = _free_port()
    log = root / "server.log"
    subprocess.run(
        _run_as(run_user, [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", db_user]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _run_as(
            run_user,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "start",
                "-o",
                _options(port, sockets),
            ],
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer("127.0.0.1", port, db_user, data, bindir, run_user, sockets)
    finally:
        subprocess.run(
            _run_as(run_user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on the session's server; dropped afterwards."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = "t_" + uuid.uuid4().hex[:12]
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)
