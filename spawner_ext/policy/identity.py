"""Who is asking, and which teams they belong to or lead. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import Catalog


@dataclass(frozen=True)
class Identity:
    """A JupyterHub user as policies see them: name and group names (from OAuthenticator's
    `manage_groups`, i.e. the identity provider's groups claim)."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False


def teams_of(catalog: Catalog, who: Identity) -> tuple[str, ...]:
    """Keys of the teams `who` belongs to (by group or by name), sorted."""
    return tuple(
        sorted(
            key
            for key, team in catalog.teams.items()
            if who.name in team.users or who.groups.intersection(team.groups)
        )
    )
