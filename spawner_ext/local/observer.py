"""Which local servers run now, for reconciliation: the hub's spawner states (pid, session and
plan) and whether each pid is alive."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..clock import utcnow
from ..hub.usage import STATE_KEY, STATE_SESSION
from ..ledger.reconcile import RunningServer


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> datetime | None:
    """When a process started, from /proc (Linux); None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)


def running_from_states(
    states: Iterable[tuple[str, str, Mapping[str, Any]]],
    alive: Any = pid_alive,
    started: Any = process_start_time,
) -> list[RunningServer]:
    """(user, server name, state) of spawners with a server -> the ones whose process lives."""
    found = []
    for user, server_name, state in states:
        pid = state.get("pid")
        info = state.get(STATE_KEY) or {}
        if not isinstance(pid, int) or not pid or not info or not alive(pid):
            continue
        session = state.get(STATE_SESSION)
        found.append(
            RunningServer(
                session_id=session if isinstance(session, int) else None,
                user=user,
                server_name=server_name,
                team=info.get("team"),
                profile=str(info.get("profile", "")),
                gpu_type=info.get("gpu_type"),
                gpu_count=int(info.get("gpu_count") or 0),
                price_per_hour=Decimal(str(info.get("price_per_hour", "0"))),
                currency=str(info.get("currency", "USD")),
                started_at=started(pid) or utcnow(),
                runtime_ref=f"local:{pid}",
            )
        )
    return found


class LocalObserver:
    """Observer of local processes, through JupyterHub's database of spawner states."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def running(self) -> list[RunningServer]:
        from jupyterhub import orm

        rows = self._db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all()
        return running_from_states((r.user.name, r.name or "", r.state or {}) for r in rows)

    async def stop(self, runtime_ref: str) -> None:
        """End a local server's process group (JupyterHub notices on its next poll)."""
        pid = int(runtime_ref.removeprefix("local:"))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
