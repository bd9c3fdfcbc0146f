"""The machine's processes, as local mode needs them: is a pid alive, when did it start, and
which processes are gpuhub servers (found by the variables wire.server_env gives them). Linux
/proc; where it cannot be read, a process is not found (and not judged)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..wire import ServerEnv, read_server_env

PROC = Path("/proc")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def process_start_time(pid: int) -> datetime | None:
    """When a process started, from /proc (Linux); None where that cannot be read."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        boot = next(
            int(line.split()[1])
            for line in (PROC / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)


def environment(pid: int) -> dict[str, str] | None:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def live_servers(hub_api_url: str | None = None) -> Iterator[tuple[int, ServerEnv]]:
    """(pid, what its environment says) of every live gpuhub server process of the hub at
    `hub_api_url` (of any hub when None). A server's child processes (kernels) inherit its
    variables; only the topmost process of each is reported."""
    found: dict[int, ServerEnv] = {}
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = environment(pid)
        server = read_server_env(env) if env else None
        if server is None or not pid_alive(pid):
            continue
        if hub_api_url is not None and server.hub_api_url.rstrip("/") != hub_api_url.rstrip("/"):
            continue
        found[pid] = server
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    for pid, server in sorted(found.items()):
        parent = found.get(parents.get(pid, 0))
        if parent is not None and parent.server_key == server.server_key:
            continue
        yield pid, server
