"""Live GPU usage for previews: what the hub's running servers hold, read from the state each
GPU spawner persists in JupyterHub's database. The billing ledger replaces this source when
metering is configured."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..catalog import Catalog
from ..policy.admission import Holding, TeamUsage, combine_holdings
from ..wire import read_state


class UsageSource(Protocol):
    """Where previews read a team's usage from (admission reads the ledger's own)."""

    async def team_usage(self, catalog: Catalog, team: str | None, user: str) -> TeamUsage: ...


def usage_from_states(
    states: Iterable[tuple[str, Mapping[str, Any] | None]], team: str | None, user: str
) -> TeamUsage:
    """Pure: the GPUs `team`'s running servers hold, per user and GPU type, from (user, spawner
    state) pairs, as seen by `user` (the per-user cap is per team, as in admission). No
    GPU-hours: running servers' states say nothing about the month."""
    if team is None:
        return TeamUsage(user=user)
    held = []
    for owner, state in states:
        summary = read_state(state).summary
        if summary is None or summary.team != team or summary.gpu_type is None:
            continue
        held.append(Holding(owner, summary.gpu_type, summary.gpu_count))
    return TeamUsage(user=user, holdings=combine_holdings(held))


class RunningServersUsage:
    """Usage from the running servers recorded in JupyterHub's database (no budget figures)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def team_usage(self, catalog: Catalog, team: str | None, user: str) -> TeamUsage:
        from jupyterhub import orm

        rows = self._db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all()
        return usage_from_states(((row.user.name, row.state) for row in rows), team, user)
