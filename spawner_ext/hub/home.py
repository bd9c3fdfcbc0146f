"""The hub's home page, extended (not forked): for each of a user's running servers, its GPUs,
the team charged, how long it has run and what it has cost so far; the budget notice of each team
the user's running GPU servers are charged to (from the team's warning threshold on: the share
used and, at 100 %, when its GPU servers are stopped, and whom to ask; policy/notices.py), read
from the billing ledger whether or not the gpuhub service culls; why gpuhub stopped a server; and
the user's live wait-list requests (hub/waiting.py), refreshed every 15 s while there are any.

JupyterHub renders `templates/home.html` of this package first (`template_paths`); it extends
JupyterHub's own `home.html` and adds a table from the `gpuhub_servers` template variable, which
JupyterHub calls with the page's user. `home_page_config()` gives both settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..catalog import Catalog
from ..catalog.durations import spoken_duration
from ..catalog.store import CatalogStore
from ..clock import utcnow
from ..ledger.budgets import team_budget_notice, team_budget_state
from ..ledger.rules import billed_seconds, session_cost
from ..ledger.store import Ledger
from ..policy.notices import BudgetNotice
from ..wire import ServerState, ServerSummary
from .ledger_lane import LEDGER_DOWN
from .waiting import WaitingView

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_VAR = "gpuhub_servers"
TIMES = "\N{MULTIPLICATION SIGN}"
T = TypeVar("T")


@dataclass(frozen=True)
class RunningServerView:
    """One row of the home page's table."""

    server_name: str
    """'' for the default server."""
    profile: str
    """The profile's display name (its slug when the catalog no longer has it)."""
    gpus: str
    """E.g. '2 x NVIDIA H100 80GB' (with a multiplication sign, as the spawn form), or
    'CPU only'."""
    team: str | None
    """The team charged (its display name); None for a server of no team."""
    running_for: str | None
    """E.g. '1 h 05 min'; None while the server has not started."""
    cost: str | None
    """Cost so far with its currency, e.g. '8.20 USD'; None when it cannot be told."""
    note: str | None = None
    """Why a figure is missing."""
    borrowed: str | None = None
    """For a server on other teams' quota: that, and when it stops if it is being reclaimed."""


def running_server_view(
    server_name: str,
    summary: ServerSummary,
    catalog: Catalog,
    *,
    billed_since: datetime | None,
    running_since: datetime | None,
    now: datetime,
    note: str | None = None,
    session: BilledPart | None = None,
) -> RunningServerView:
    """The row of a running server. `billed_since` is its ledger session's start (None when
    unmetered or unreadable: no cost shown); `running_since` when the hub started it; `session`
    what the ledger's session says beyond its start (its price, whether it is borrowed), when
    read."""
    gpu_type = catalog.gpu_types.get(summary.gpu_type) if summary.gpu_type else None
    if summary.gpu_count and summary.gpu_type:
        name = gpu_type.display_name if gpu_type else summary.gpu_type
        gpus = f"{summary.gpu_count} {TIMES} {name}"
    else:
        gpus = "CPU only"
    team = catalog.teams.get(summary.team) if summary.team else None
    team_name = (team.display_name or summary.team) if team else summary.team
    since = (session.run_since if session else None) or billed_since or running_since
    running_for = spoken_duration(billed_seconds(since, now)) if since else None
    cost: str | None = None
    borrowed = None
    if billed_since is not None:
        price = session.price_per_hour if session is not None else summary.price_per_hour
        spent = session_cost(price, billed_seconds(billed_since, now)) + (
            session.earlier_cost if session is not None else Decimal(0)
        )
        cost = f"{spent.quantize(Decimal('0.01'))} {summary.currency}"
    if session is not None and session.borrowed:
        borrowed = "borrowed from other teams' idle quota" + (
            f"; stops at {session.reclaim_at:%H:%M} UTC to give its GPUs back"
            if session.reclaim_at is not None
            else ""
        )
    elif not summary.gpu_count:
        cost = "no GPU charge"
    profile = catalog.profile(summary.profile)
    return RunningServerView(
        server_name=server_name,
        profile=profile.display_name if profile else summary.profile,
        gpus=gpus,
        team=team_name,
        running_for=running_for,
        cost=cost,
        note=note if cost is None else None,
        borrowed=borrowed,
    )


@dataclass(frozen=True)
class BilledPart:
    """What the home page reads of a running server's ledger session beyond its start."""

    price_per_hour: Decimal
    """The session's own price (a borrowed one's includes `borrowing.price_factor`)."""
    borrowed: bool = False
    reclaim_at: datetime | None = None
    run_since: datetime | None = None
    """When the server's run began, for a session split from an earlier part."""
    earlier_cost: Decimal = Decimal(0)
    """What the earlier parts of the run cost (a borrowed part before it became own)."""


STOP_REASONS = {
    "culled-idle": "it had no activity for its idle timeout",
    "culled-gpu-idle": "its GPUs had been idle for the GPU idle timeout",
    "max-age": "it had run for the longest time allowed",
    "budget": "the team's monthly GPU budget was used up",
}
"""Why gpuhub stopped a server, for the person who finds it gone."""


@dataclass(frozen=True)
class StoppedNotice:
    """A server gpuhub stopped (not its user), shown on the home page for a day after."""

    server_name: str
    ended_at: datetime
    reason: str
    message: str


def stopped_notice(
    server_name: str,
    reason: str | None,
    ended_at: datetime | None,
    message: str | None,
    now: datetime,
    within: timedelta = timedelta(days=1),
) -> StoppedNotice | None:
    """The notice of a session that ended for one of STOP_REASONS within `within` of now (the
    culler's own message when it left one), else None."""
    if reason not in STOP_REASONS or ended_at is None or now - ended_at > within:
        return None
    what = f"Your server {server_name!r}" if server_name else "Your server"
    text = message or f"{what} was stopped: {STOP_REASONS[reason]}."
    return StoppedNotice(server_name, ended_at, reason, text)


class _Lane(Protocol):
    async def read(self, what: str, fn: Callable[[Ledger], T]) -> T: ...


class _Context(Protocol):
    @property
    def store(self) -> CatalogStore: ...

    @property
    def lane(self) -> _Lane: ...


class _HasHomeView(Protocol):
    active: bool
    context: _Context
    ledger_url: str

    async def home_view(self) -> RunningServerView | None: ...

    async def stopped_notice(self) -> StoppedNotice | None: ...

    def server_state(self) -> ServerState: ...


class _HasWaiting(Protocol):
    async def waiting_views(self) -> list[WaitingView]: ...


class HomeServers:
    """The `gpuhub_servers` template variable: a user's running gpuhub servers, read only when
    a template iterates it (JupyterHub computes template variables for every page). Its reads
    are coroutines (the ledger is read off the hub's event loop): JupyterHub renders pages
    with Jinja's async mode, which awaits them."""

    def __init__(self, user: Any) -> None:
        self.user = user

    def _spawners(self) -> list[_HasHomeView]:
        spawners = getattr(self.user, "spawners", None) or {}
        return [spawners[name] for name in sorted(spawners) if hasattr(spawners[name], "home_view")]

    def __aiter__(self) -> AsyncIterator[RunningServerView]:
        return self._views()

    async def _views(self) -> AsyncIterator[RunningServerView]:
        active = [s for s in self._spawners() if getattr(s, "active", False)]
        for view in await asyncio.gather(*(s.home_view() for s in active)):
            if view is not None:
                yield view

    async def budget_notices(self) -> list[BudgetNotice]:
        """The budget notice of each team the user's running GPU servers are charged to (one per
        team), where the team is at or past its warning threshold."""
        teams: dict[str, _HasHomeView] = {}
        for spawner in self._spawners():
            summary = spawner.server_state().summary if getattr(spawner, "active", False) else None
            if summary is not None and summary.team and summary.gpu_count and spawner.ledger_url:
                teams.setdefault(summary.team, spawner)
        notices = []
        now = utcnow()
        for team, spawner in sorted(teams.items()):
            try:
                state = await spawner.context.lane.read(
                    f"budget of team {team}",
                    lambda ledger, team=team: team_budget_state(ledger, team),  # type: ignore[misc]
                )
            except LEDGER_DOWN:
                continue  # the row's cost says the billing database does not answer
            notice = team_budget_notice(spawner.context.store.catalog, team, state, now)
            if notice is not None:
                notices.append(notice)
        return notices

    async def stopped(self) -> list[StoppedNotice]:
        """Servers gpuhub stopped in the last day (not running again since)."""
        stopped = [s for s in self._spawners() if not getattr(s, "active", False)]
        found = await asyncio.gather(*(s.stopped_notice() for s in stopped))
        return [notice for notice in found if notice is not None]

    async def waiting(self) -> list[WaitingView]:
        """The user's live wait-list requests. They are the user's, not one server's: asked of
        one of their gpuhub spawners (the default server's when it is one)."""
        spawners = getattr(self.user, "spawners", None) or {}
        for name in sorted(spawners):  # '' first
            spawner: _HasWaiting = spawners[name]
            if hasattr(spawner, "waiting_views"):
                return await spawner.waiting_views()
        return []


def home_servers(user: Any) -> HomeServers:
    return HomeServers(user)


def home_page_config() -> dict[str, Any]:
    """JupyterHub settings that extend its home page: `template_paths`, `template_vars`."""
    return {"template_paths": [str(TEMPLATES)], "template_vars": {TEMPLATE_VAR: home_servers}}
