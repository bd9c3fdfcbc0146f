"""Which local servers run now, for reconciliation in the gpuhub service: the servers the hub
lists (their spawner state, read through its REST API) whose process lives, and gpuhub server
processes the hub does not list (orphans: the hub was killed before it recorded them)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ..clock import utcnow
from ..ledger.reconcile import RunningServer
from ..wire import ServerEnv, read_state
from .processes import live_servers, pid_alive, process_start_time

Started = Callable[[int], datetime | None]


def running_from_states(
    states: Iterable[tuple[str, str, Mapping[str, Any]]],
    alive: Callable[[int], bool] = pid_alive,
    started: Started = process_start_time,
) -> list[RunningServer]:
    """(user, server name, state) of spawners with a server -> the ones whose process lives."""
    found = []
    for user, server_name, state in states:
        pid = state.get("pid")
        ours = read_state(state)
        if not isinstance(pid, int) or pid <= 0 or ours.summary is None or not alive(pid):
            continue
        found.append(
            RunningServer.of(
                ours.summary,
                user=user,
                server_name=server_name,
                session=ours.session,
                started_at=started(pid) or utcnow(),
                runtime_ref=f"local:{pid}",
            )
        )
    return found


def orphans(
    processes: Iterable[tuple[int, ServerEnv]],
    listed_pids: set[int],
    started: Started = process_start_time,
) -> list[RunningServer]:
    """Live gpuhub server processes whose pid the hub lists for no server."""
    found = []
    for pid, server in processes:
        if pid in listed_pids or server.summary is None:
            continue
        found.append(
            RunningServer.of(
                server.summary,
                user=server.user,
                server_name=server.server_name,
                session=server.session,
                started_at=started(pid) or utcnow(),
                runtime_ref=f"local:{pid}",
            )
        )
    return found


def end_process_group(runtime_ref: str) -> None:
    """End a local server's process group (JupyterHub notices on its next poll)."""
    pid = int(runtime_ref.removeprefix("local:"))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)


__all__ = ["end_process_group", "live_servers", "orphans", "running_from_states"]
