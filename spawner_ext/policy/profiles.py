"""Which profiles, and which of their options' choices, a user may start for a team, and why
not. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from ..catalog import Catalog, Profile, ProfileOption
from ..catalog.frozen import freeze
from .identity import Identity


def in_groups(who: Identity, allowed: tuple[str, ...] | None) -> bool:
    """True when `allowed` is None (everyone) or `who` is in one of its groups. Names compare
    case-insensitively, as 2i2c's profile filter (where `allowed_groups` comes from) does."""
    if allowed is None:
        return True
    mine = {group.casefold() for group in who.groups}
    return any(group.casefold() in mine for group in allowed)


def only_for(allowed: tuple[str, ...]) -> str:
    """`only for members of: a, b` (or `for nobody` when the list is empty)."""
    return "only for members of: " + ", ".join(allowed) if allowed else "for nobody"


def visible_options(profile: Profile, who: Identity) -> Mapping[str, ProfileOption]:
    """The profile's options as `who` sees them: choices whose `allowed_groups` leave `who` out
    are gone, and so is the free-text field (`unlisted_choice.enabled` false) when its
    `allowed_groups` do. An option may be left with nothing to choose; `why_not` says so."""
    out: dict[str, ProfileOption] = {}
    for name, option in profile.profile_options.items():
        choices = {k: c for k, c in option.choices.items() if in_groups(who, c.allowed_groups)}
        unlisted = option.unlisted_choice
        if unlisted.enabled and not in_groups(who, unlisted.allowed_groups):
            unlisted = unlisted.model_copy(update={"enabled": False})
        if len(choices) == len(option.choices) and unlisted is option.unlisted_choice:
            out[name] = option
        else:
            out[name] = option.model_copy(
                update={"choices": freeze(choices), "unlisted_choice": unlisted}
            )
    return freeze(out)  # type: ignore[no-any-return]


def why_not(catalog: Catalog, profile: Profile, who: Identity, team: str | None) -> str | None:
    """None when `who` may start `profile` charged to `team`; otherwise the reason, in words."""
    if not in_groups(who, profile.allowed_groups):
        return f"profile {profile.slug!r} is " + only_for(profile.allowed_groups or ())
    for name, option in visible_options(profile, who).items():
        if not option.choices and not option.unlisted_choice.enabled:
            return (
                f"option {name!r} of profile {profile.slug!r} has no choice open to you (each "
                "is only for some groups); ask your admin"
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
    if profile.gpu is not None and most_gpus(catalog, team, profile.gpu.type) < profile.gpu.count:
        allowed = most_gpus(catalog, team, profile.gpu.type)
        return (
            f"team {team!r} may hold at most {allowed} GPU(s) of type {profile.gpu.type!r}, "
            f"and profile {profile.slug!r} needs {profile.gpu.count}"
        )
    return None


def most_gpus(catalog: Catalog, team: str, gpu_type: str) -> int:
    """The most GPUs of a type one server of `team` can ever hold: its quota, or with borrowing
    on its `borrow_limit` if that is more (a server is own or borrowed whole,
    policy/borrowing.py)."""
    quota = catalog.teams[team].quota
    borrowable = quota.borrow_limit.get(gpu_type, 0) if catalog.borrowing is not None else 0
    return max(quota.gpus.get(gpu_type, 0), borrowable)


def visible_profiles(catalog: Catalog, who: Identity, team: str | None) -> tuple[Profile, ...]:
    """The profiles `who` may start for `team`, in catalog order."""
    return tuple(p for p in catalog.profiles if why_not(catalog, p, who, team) is None)


def default_profile(profiles: tuple[Profile, ...]) -> Profile | None:
    """The first profile marked default, else the first one (as KubeSpawner does)."""
    return next((p for p in profiles if p.default), profiles[0] if profiles else None)
