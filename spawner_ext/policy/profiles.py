"""Which profiles a user may start for a team, and why not. Pure."""

from __future__ import annotations

from ..catalog import Catalog, Profile
from .identity import Identity


def why_not(catalog: Catalog, profile: Profile, who: Identity, team: str | None) -> str | None:
    """None when `who` may start `profile` charged to `team`; otherwise the reason, in words."""
    if profile.allowed_groups is not None and not who.groups.intersection(profile.allowed_groups):
        return f"profile {profile.slug!r} is only for members of: " + ", ".join(
            profile.allowed_groups
        )
    if team is None:
        if profile.gpu is not None:
            return (
                f"profile {profile.slug!r} uses GPUs, which are charged to a team, and you are in "
                "no team; ask your admin to add you to a team"
            )
        if profile.allowed_teams is not None:
            return f"profile {profile.slug!r} is only for the teams: " + ", ".join(
                profile.allowed_teams
            )
        return None
    entry = catalog.teams[team]
    if entry.profiles is not None and profile.slug not in entry.profiles:
        return f"team {team!r} may not use profile {profile.slug!r}"
    if profile.allowed_teams is not None and team not in profile.allowed_teams:
        return f"profile {profile.slug!r} is only for the teams: " + ", ".join(
            profile.allowed_teams
        )
    if profile.gpu is not None and entry.quota.gpus.get(profile.gpu.type, 0) < profile.gpu.count:
        allowed = entry.quota.gpus.get(profile.gpu.type, 0)
        return (
            f"team {team!r} may hold at most {allowed} GPU(s) of type {profile.gpu.type!r}, "
            f"and profile {profile.slug!r} needs {profile.gpu.count}"
        )
    return None


def visible_profiles(catalog: Catalog, who: Identity, team: str | None) -> tuple[Profile, ...]:
    """The profiles `who` may start for `team`, in catalog order."""
    return tuple(p for p in catalog.profiles if why_not(catalog, p, who, team) is None)


def default_profile(profiles: tuple[Profile, ...]) -> Profile | None:
    """The first profile marked default, else the first one (as KubeSpawner does)."""
    return next((p for p in profiles if p.default), profiles[0] if profiles else None)
