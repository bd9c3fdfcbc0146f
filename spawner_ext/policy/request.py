"""Resolve a spawn request (user_options from the form or the REST API) into a frozen SpawnPlan,
or refuse it with a reason a person can act on. Pure: everything it needs is passed in.

user_options use KubeSpawner's shape, so existing API clients keep working:
`{"profile": SLUG, OPTION: CHOICE_KEY, "OPTION--unlisted-choice": TEXT, "team": TEAM}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from ..catalog import Catalog, GPUType, Profile, ProfileOption
from ..catalog.frozen import freeze, thaw
from ..catalog.overrides import merge_overrides
from ..install import LOCAL
from ..wire import ServerSummary
from .identity import Identity, teams_of
from .profiles import default_profile, only_for, visible_options, visible_profiles, why_not

UNLISTED = "--unlisted-choice"
WAITLIST_OPTION = "waitlist"
"""The user option naming the wait-list request a spawn starts (set by the gpuhub service)."""
BORROW_OPTION = "borrow"
"""The user option that lets a spawn run on other teams' unallocated quota when its team's is
full (`yes`; the form's checkbox sends `on`)."""
_YES = frozenset({"yes", "on", "true", "1"})
_NO = frozenset({"no", "off", "false", "0", ""})
MAX_UNLISTED_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SpawnRefused(Exception):
    """A spawn request that must not start. `reason` is a short label for logs and metrics."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class SpawnPlan:
    """Everything a spawner needs to start one server, decided before anything is created."""

    user: str
    team: str | None
    profile: Profile
    gpu_type_key: str | None
    gpu_type: GPUType | None
    gpu_count: int
    choices: Mapping[str, str]
    """Option name -> chosen choice key, or the user's text for an unlisted choice."""
    unlisted: frozenset[str]
    """Names of the options answered with free text."""
    overrides: Mapping[str, Any]
    """KubeSpawner settings: the profile's `kubespawner_override`, then each chosen option's."""
    price_per_hour: Decimal
    currency: str
    idle_timeout: timedelta | None
    gpu_idle_timeout: timedelta | None
    max_age: timedelta | None
    namespace: str | None
    catalog_version: str
    waitlist: str | None = None
    """The wait-list request this spawn starts (option `waitlist`, which the gpuhub service sets
    when it starts a server at its turn in line); None for a spawn made directly."""
    borrow: bool = False
    """Run on other teams' unallocated quota if the team's own is full (option `borrow`)."""

    @property
    def summary(self) -> ServerSummary:
        """What the plan's server holds and costs, as other processes see it."""
        return ServerSummary(
            team=self.team,
            profile=self.profile.slug,
            gpu_type=self.gpu_type_key,
            gpu_count=self.gpu_count,
            price_per_hour=self.price_per_hour,
            currency=self.currency,
            catalog_version=self.catalog_version,
        )


def resolve_spawn(
    catalog: Catalog,
    who: Identity,
    user_options: Any,
    *,
    catalog_version: str = "",
    install: str = LOCAL,
) -> SpawnPlan:
    """Validate `user_options` against the catalog for `who`, for a server of `install`.
    Raises SpawnRefused."""
    options = _plain_options(user_options)
    waitlist = options.pop(WAITLIST_OPTION, None) or None
    borrow = _yes_or_no(BORROW_OPTION, options.pop(BORROW_OPTION, None))
    team = _team(catalog, who, options.pop("team", None))
    profile = _profile(catalog, who, team, options.pop("profile", None))
    choices, unlisted = _choices(profile, who, options)
    gpu = profile.gpu
    gpu_type = catalog.gpu_types[gpu.type] if gpu else None
    count = gpu.count if gpu else 0
    price = gpu_type.price_per_hour * count if gpu_type else Decimal(0)
    culling = catalog.culling
    return SpawnPlan(
        user=who.name,
        team=team,
        profile=profile,
        gpu_type_key=gpu.type if gpu else None,
        gpu_type=gpu_type,
        gpu_count=count,
        choices=freeze(choices),
        unlisted=frozenset(unlisted),
        overrides=freeze(_overrides(profile, choices, unlisted)),
        price_per_hour=price,
        currency=catalog.metering.currency,
        idle_timeout=profile.idle_timeout or culling.idle_timeout,
        gpu_idle_timeout=(profile.gpu_idle_timeout or culling.gpu_idle_timeout) if gpu else None,
        max_age=profile.max_age or culling.max_age,
        namespace=namespace_of(catalog, team, install),
        catalog_version=catalog_version,
        waitlist=waitlist,
        borrow=borrow,
    )


def namespace_of(catalog: Catalog, team: str | None, install: str) -> str | None:
    """The team's namespace: its own `namespace`, else the catalog's template (`{team}` and
    `{install}` filled in), else None (the spawner's configured namespace)."""
    if team is None:
        return None
    own = catalog.teams[team].namespace
    if own:
        return own
    template = catalog.kubernetes.namespace_template
    if not template:
        return None
    return template.replace("{team}", team).replace("{install}", install)


def _yes_or_no(name: str, value: str | None) -> bool:
    if value is None or value.strip().lower() in _NO:
        return False
    if value.strip().lower() in _YES:
        return True
    raise SpawnRefused(f"option {name!r} must be yes or no, got {value!r}", reason="bad-options")


def _plain_options(user_options: Any) -> dict[str, str]:
    if user_options is None:
        return {}
    if not isinstance(user_options, Mapping):
        raise SpawnRefused(
            "the spawn options must be a JSON object such as "
            '{"profile": "cpu-small", "image": "scipy"}',
            reason="bad-options",
        )
    out: dict[str, str] = {}
    for key, value in user_options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SpawnRefused(
                f"option {key!r} must be text, got {type(value).__name__}: {value!r}",
                reason="bad-options",
            )
        out[key] = value
    return out


def _team(catalog: Catalog, who: Identity, asked: str | None) -> str | None:
    mine = teams_of(catalog, who)
    if asked:
        if asked not in mine:
            known = ", ".join(mine) if mine else "none"
            raise SpawnRefused(
                f"you are not in team {asked!r}; your teams: {known}", reason="not-in-team"
            )
        return asked
    if len(mine) > 1:
        raise SpawnRefused(
            "you are in several teams; choose the one to charge with the option "
            f'"team": one of {", ".join(mine)}',
            reason="choose-team",
        )
    return mine[0] if mine else None


def _profile(catalog: Catalog, who: Identity, team: str | None, slug: str | None) -> Profile:
    visible = visible_profiles(catalog, who, team)
    if not slug:
        chosen = default_profile(visible)
        if chosen is None:
            raise SpawnRefused(
                "there is no profile you may start"
                + ("" if team else "; ask your admin to add you to a team"),
                reason="no-profile",
            )
        return chosen
    profile = catalog.profile(slug)
    if profile is None:
        names = ", ".join(p.slug for p in visible) or "none"
        raise SpawnRefused(
            f"unknown profile {slug!r}; profiles you may start: {names}", reason="unknown-profile"
        )
    refusal = why_not(catalog, profile, who, team)
    if refusal:
        raise SpawnRefused(refusal, reason="profile-not-allowed")
    return profile


def _choices(
    profile: Profile, who: Identity, options: dict[str, str]
) -> tuple[dict[str, str], set[str]]:
    known = set(profile.profile_options)
    for key in options:
        name = key.removesuffix(UNLISTED)
        if name not in known:
            takes = ", ".join(sorted(known)) or "no options"
            raise SpawnRefused(
                f"profile {profile.slug!r} has no option {key!r} (it takes: {takes}); GPU type "
                "and count come from the profile and cannot be set per request",
                reason="unknown-option",
            )
    choices: dict[str, str] = {}
    unlisted: set[str] = set()
    for name, option in visible_options(profile, who).items():
        whole = profile.profile_options[name]
        text = options.get(name + UNLISTED, "")
        if text:
            if whole.unlisted_choice.enabled and not option.unlisted_choice.enabled:
                raise SpawnRefused(
                    f"your own value for option {name!r} of profile {profile.slug!r} is "
                    + only_for(whole.unlisted_choice.allowed_groups or ())
                    + "; choose one of: "
                    + ", ".join(option.choices),
                    reason="choice-not-allowed",
                )
            choices[name] = _unlisted_value(profile, name, option, text)
            unlisted.add(name)
        else:
            asked = options.get(name)
            hidden = whole.choices.get(asked) if asked and asked not in option.choices else None
            if hidden is not None:
                raise SpawnRefused(
                    f"choice {asked!r} of option {name!r} in profile {profile.slug!r} is "
                    + only_for(hidden.allowed_groups or ())
                    + "; choose one of: "
                    + ", ".join(option.choices),
                    reason="choice-not-allowed",
                )
            choices[name] = _listed_choice(profile, name, option, asked)
    return choices, unlisted


def _listed_choice(profile: Profile, name: str, option: ProfileOption, key: str | None) -> str:
    """`key`, checked against the choices `who` may see; the default one when not given."""
    if key is None or key == "":
        default = next((k for k, c in option.choices.items() if c.default), None)
        default = default or next(iter(option.choices), None)
        if default is None:
            raise SpawnRefused(
                f"option {name!r} of profile {profile.slug!r} needs a value ({name + UNLISTED!r})",
                reason="missing-option",
            )
        return default
    if key not in option.choices:
        raise SpawnRefused(
            f"{key!r} is not a choice of option {name!r}; choose one of: "
            + ", ".join(option.choices),
            reason="bad-choice",
        )
    return key


def _unlisted_value(profile: Profile, name: str, option: ProfileOption, text: str) -> str:
    rule = option.unlisted_choice
    if not rule.enabled:
        raise SpawnRefused(
            f"option {name!r} of profile {profile.slug!r} takes only its listed choices: "
            + ", ".join(option.choices),
            reason="bad-choice",
        )
    if len(text) > MAX_UNLISTED_LENGTH or _CONTROL.search(text):
        raise SpawnRefused(
            f"the value for {name!r} must be one line of at most {MAX_UNLISTED_LENGTH} characters",
            reason="bad-choice",
        )
    if rule.validation_regex and not re.fullmatch(rule.validation_regex, text):
        hint = rule.validation_message or f"it must match {rule.validation_regex}"
        raise SpawnRefused(f"{text!r} is not accepted for {name!r}: {hint}", reason="bad-choice")
    return text


def _overrides(profile: Profile, choices: dict[str, str], unlisted: set[str]) -> dict[str, Any]:
    merged: dict[str, Any] = thaw(profile.kubespawner_override)
    for name, option in profile.profile_options.items():
        if name in unlisted:
            layer = _substitute(thaw(option.unlisted_choice.kubespawner_override), choices[name])
        else:
            layer = thaw(option.choices[choices[name]].kubespawner_override)
        merged = merge_overrides(merged, layer)
    return merged


def _substitute(value: Any, text: str) -> Any:
    """Replace `{value}` in every string. Plain replacement, not str.format: the user's text is
    never interpreted, and other braces in the admin's strings stay as written."""
    if isinstance(value, str):
        return value.replace("{value}", text)
    if isinstance(value, Mapping):
        return {k: _substitute(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, text) for v in value]
    return value
