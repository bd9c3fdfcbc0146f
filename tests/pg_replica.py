"""A PostgreSQL primary and a synchronous standby on this machine (streaming replication:
`pg_basebackup -R` on a second port), for the billing database's failover tests and benchmark.

The pair can lose its primary (killed, or frozen with SIGSTOP as a host that stops answering
would be) and have its standby promoted. Promotion is a step the test takes, standing in for
the operator or a tool such as Patroni: nothing in gpuhub promotes a standby."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, _bin_dir, _free_port, _run_as

STANDBY_NAME = "standby"
"""The standby's application_name, which the primary's synchronous_standby_names names."""


@dataclass(frozen=True)
class ReplicatedPair:
    """A primary and its synchronous standby; `url` reaches whichever of them takes writes."""

    primary: PostgresServer
    standby: PostgresServer

    def url(self, database: str, connect_timeout: int = 2) -> str:
        """A multi-host URL (libpq tries the hosts in order) that only settles on a server that
        takes writes, and gives up on an unanswering host after `connect_timeout` seconds."""
        hosts = "&".join(f"host={s.host}:{s.port}" for s in (self.primary, self.standby))
        return (
            f"postgresql+psycopg://{self.primary.user}@/{database}?{hosts}"
            f"&target_session_attrs=read-write&connect_timeout={connect_timeout}"
        )

    def create_database(self, name: str) -> None:
        """A new database on the primary (the standby replays it)."""
        import psycopg

        with psycopg.connect(_conninfo(self.primary), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def primary_pid(self) -> int:
        """The primary's postmaster process."""
        return _postmaster(self.primary)

    def kill_primary(self) -> None:
        """The primary's postmaster killed with SIGKILL, as a crash would (its backends end
        as they find it gone; none accepts a new connection)."""
        os.kill(self.primary_pid(), signal.SIGKILL)

    def freeze_primary(self) -> None:
        """The primary and its backends stopped with SIGSTOP: connections are accepted by the
        kernel and then nothing answers, as with a host that stops answering."""
        for pid in _processes(self.primary):
            os.kill(pid, signal.SIGSTOP)

    def fence_primary(self) -> None:
        """A frozen (or running) primary killed for good, as fencing before a promotion does."""
        _kill(self.primary)

    def promote_standby(self) -> None:
        """Promote the standby (the operator's or Patroni's step) and reset its
        synchronous_standby_names: with no standby left to confirm them, every commit on the new
        primary would wait forever."""
        self.standby.pg_ctl("-w", "promote")
        self.reset_synchronous_standby_names()

    def reset_synchronous_standby_names(self) -> None:
        """The promoted standby's commits stop waiting for a standby of their own."""
        import psycopg

        with psycopg.connect(_conninfo(self.standby), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")

    def is_synchronous(self) -> bool:
        """Whether the primary's standby is attached and confirms commits synchronously."""
        import psycopg

        with psycopg.connect(_conninfo(self.primary), autocommit=True) as conn:
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,),
            ).fetchone()
        return row is not None and row[0] == "sync"


def _postmaster(server: PostgresServer) -> int:
    assert server.data is not None
    return int((server.data / "postmaster.pid").read_text().split()[0])


def _processes(server: PostgresServer) -> list[int]:
    """The server's postmaster and its children (backends, WAL sender, checkpointer...)."""
    postmaster = _postmaster(server)
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *(int(pid) for pid in children)]


def _kill(server: PostgresServer) -> None:
    """SIGKILL to the server's postmaster and its children (a frozen one too)."""
    for pid in _processes(server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _conninfo(server: PostgresServer) -> str:
    return f"host={server.host} port={server.port} user={server.user} dbname=postgres"


def start_pair() -> Iterator[ReplicatedPair]:
    """Start a primary whose commits wait for a synchronous standby, and the standby (a
    `pg_basebackup -R` of it on another port); stop both and remove their data when done."""
    import psycopg

    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/bootstrap system installs it)")
    run_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="gpuhub-pg-pair-"))
    servers: list[PostgresServer] = []
    try:
        db_user = run_user or pwd.getpwuid(os.geteuid()).pw_name
        homes = {name: root / name for name in ("primary", "standby")}
        for home in homes.values():
            (home / "sockets").mkdir(parents=True)
        if run_user:
            entry = pwd.getpwnam(run_user)
            for path in (root, *homes.values(), *(h / "sockets" for h in homes.values())):
                os.chown(path, entry.pw_uid, entry.pw_gid)

        def server(name: str) -> PostgresServer:
            home = homes[name]
            return PostgresServer(
                "127.0.0.1",
                _free_port(),
                db_user,
                home / "data",
                bindir,
                run_user,
                home / "sockets",
            )

        primary = server("primary")
        assert primary.data is not None
        subprocess.run(
            _run_as(run_user, [str(bindir / "initdb"), "-D", str(primary.data), "-A", "trust",
                               "-U", db_user]),
            check=True, capture_output=True,
        )  # fmt: skip
        primary.start()
        servers.append(primary)
        with psycopg.connect(_conninfo(primary), autocommit=True) as conn:
            # In postgresql.auto.conf, which pg_basebackup copies: the standby has it too, as a
            # node configured alike would, and must drop it once promoted.
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            conn.execute("SELECT pg_reload_conf()")
        standby = server("standby")
        assert standby.data is not None
        source = f"{_conninfo(primary)} application_name={STANDBY_NAME}"
        subprocess.run(
            _run_as(run_user, [str(bindir / "pg_basebackup"), "-D", str(standby.data), "-R",
                               "-X", "stream", "-c", "fast", "-d", source]),
            check=True, capture_output=True,
        )  # fmt: skip
        standby.start()
        servers.append(standby)
        pair = ReplicatedPair(primary, standby)
        _wait_until_synchronous(pair)
        yield pair
    finally:
        for started in servers:  # a frozen server would not stop on pg_ctl's signal
            with contextlib.suppress(OSError, ValueError):
                _kill(started)
            started.stop_quietly()
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_synchronous(pair: ReplicatedPair, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pair.is_synchronous():
        if time.monotonic() > deadline:
            pytest.fail(f"the standby on port {pair.standby.port} did not become synchronous")
        time.sleep(0.2)


def database_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"
