"""Who may read which usage, from the JupyterHub scopes of the person or token asking (pure).

- `custom:gpu-usage:read`: every team (admins).
- `custom:gpu-usage:read!group=<team>`: that team (its leads; roles made from the catalog's
  `leads`, see service/registration.py). The filter names the team's key in the catalog.
- no such scope: only one's own sessions, in any team. Asking for a team's usage without its
  scope is refused (403), never answered with an empty report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .query import UsageQuery

READ_SCOPE = "custom:gpu-usage:read"
TEAM_FILTER = "!group="


class Forbidden(Exception):
    """The asker may not read what they asked for; the message says what they may read."""


@dataclass(frozen=True)
class Access:
    user: str
    teams: frozenset[str] | None
    """None: every team."""

    @property
    def everything(self) -> bool:
        return self.teams is None

    def may_read(self, team: str) -> bool:
        return self.teams is None or team in self.teams

    def describe(self) -> str:
        if self.teams is None:
            return "every team"
        if not self.teams:
            return "your own usage only"
        return "teams " + ", ".join(sorted(self.teams)) + " and your own usage"


def refused(access: Access, what: str) -> Forbidden:
    """The refusal of reading `what` ("the usage of team 'nlp'"), saying what one may read."""
    return Forbidden(f"you may not read {what}; you may read {access.describe()}")


def access_of_model(model: Mapping[str, Any]) -> Access:
    """The Access of a JupyterHub user model (as HubAuth returns it, with its `scopes`)."""
    return access_of(model["name"], model.get("scopes") or [])


def access_of(user: str, scopes: Iterable[str]) -> Access:
    teams: set[str] = set()
    for scope in scopes:
        if scope == READ_SCOPE:
            return Access(user, None)
        if scope.startswith(READ_SCOPE + TEAM_FILTER):
            teams.add(scope.removeprefix(READ_SCOPE + TEAM_FILTER))
    return Access(user, frozenset(teams))


def authorize(access: Access, query: UsageQuery) -> UsageQuery:
    """The query narrowed to what `access` may read, or Forbidden."""
    own = query.user == access.user
    if query.teams is None:
        if access.teams is None or own:
            return query
        if access.teams:
            return replace(query, teams=tuple(sorted(access.teams)))
        if query.user is not None:
            raise refused(access, f"the usage of {query.user!r}")
        return replace(query, user=access.user)
    refused_teams = [t for t in query.teams if not access.may_read(t)]
    if refused_teams and not own:
        raise refused(access, f"the usage of team {refused_teams[0]!r}")
    return query


def readable_teams(access: Access, known: Iterable[str]) -> list[str]:
    """The teams of `known` whose whole usage `access` may read."""
    return sorted(t for t in known if access.may_read(t))
