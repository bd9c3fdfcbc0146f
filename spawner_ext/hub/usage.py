"""Live GPU usage for previews: what the hub's running servers hold, read from the state each
GPU spawner persists in JupyterHub's database. The billing ledger replaces this source when
metering is configured."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..catalog import Catalog
from ..policy.preview import TeamUsage

STATE_KEY = "gpuhub"
"""Spawner-state key of the plan summary (team, profile, GPU type and count, price)."""
STATE_SESSION = "gpuhub_session"
"""Spawner-state key of the ledger session id."""


class UsageSource(Protocol):
    """Where previews and admission read a team's usage from."""

    async def team_usage(self, catalog: Catalog, team: str | None, user: str) -> TeamUsage: ...


def usage_from_states(
    states: Iterable[tuple[str, Mapping[str, Any] | None]], team: str | None, user: str
) -> TeamUsage:
    """Pure: sum the GPUs held per type by `team`, and by `user` in that team (the per-user cap
    is per team, as in admission), from (user, spawner state) pairs of running servers."""
    team_gpus: Counter[str] = Counter()
    user_gpus = 0
    for owner, state in states:
        info = (state or {}).get(STATE_KEY) or {}
        gpu_type, count = info.get("gpu_type"), info.get("gpu_count", 0)
        if not gpu_type or not isinstance(count, int):
            continue
        if team is None or info.get("team") != team:
            continue
        team_gpus[gpu_type] += count
        if owner == user:
            user_gpus += count
    return TeamUsage(gpus_in_use=dict(team_gpus), user_gpus_in_use=user_gpus)


class RunningServersUsage:
    """Usage from the running servers recorded in JupyterHub's database (no budget figures)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def team_usage(self, catalog: Catalog, team: str | None, user: str) -> TeamUsage:
        from jupyterhub import orm

        rows = self._db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all()
        return usage_from_states(((row.user.name, row.state) for row in rows), team, user)
