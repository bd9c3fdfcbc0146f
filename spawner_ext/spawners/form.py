"""The spawn page's options form: built from the catalog in force and rendered with Jinja2
(autoescaped), with, for a GPU profile that cannot start now but could by waiting, the offer to
wait and a link to join; and its submitted data turned into KubeSpawner-shaped user_options.
Pure: the spawner gathers the usage and the lines and hands them in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any

import jinja2

from ..catalog import Catalog, Profile, ProfileOption
from ..policy.admission import TeamUsage
from ..policy.borrowing_text import reclaim_terms
from ..policy.identity import Identity, teams_of
from ..policy.preview import (
    BudgetPreview,
    LineKey,
    LineSpot,
    ProfilePreview,
    budget_preview,
    profile_preview,
)
from ..policy.profiles import default_profile, visible_options, visible_profiles
from ..policy.request import BORROW_OPTION, UNLISTED
from ..policy.waitlist_text import waitlist_page_url

OTHER = "--unlisted-choice"
"""The select value that means 'use the text field instead'."""

KUBERNETES = "kubernetes"
LOCAL = "local"
APPLIED_OVERRIDES: Mapping[str, frozenset[str] | None] = {KUBERNETES: None, LOCAL: frozenset()}
"""Per runtime (GPUSpawnerMixin.form_runtime), the `kubespawner_override` keys its servers
apply; None: all of them. GPULocalSpawner starts local processes and applies none."""
LOCAL_NOTES: Mapping[str, str] = {
    "image": "Kubernetes only: local servers use this machine's Python environment, whatever "
    "image is chosen.",
}
"""What an option does on local servers, by the override key it sets (first match)."""
LOCAL_NOTE = "Kubernetes only: this choice has no effect on local servers."


@dataclass(frozen=True)
class TeamView:
    key: str
    display_name: str
    budget: BudgetPreview


@dataclass(frozen=True)
class ProfileView:
    profile: Profile
    previews: tuple[ProfilePreview, ...]
    """One per team of the user that may use the profile (one with team None for no team)."""
    checked: bool
    options: Mapping[str, ProfileOption] = field(default_factory=dict)
    """The profile's options as the user sees them: choices not for their groups left out."""
    option_notes: Mapping[str, str] = field(default_factory=dict)
    """Option name -> what it does on this spawner, for options whose choices have no effect
    here (the option is still offered, and validated, so API clients keep working)."""

    @property
    def teams(self) -> frozenset[str | None]:
        """The teams that may use the profile."""
        return frozenset(p.team for p in self.previews)


@dataclass(frozen=True)
class FormView:
    teams: tuple[TeamView, ...]
    selected_team: str | None
    """The team checked at render time: its numbers show, the others' are hidden until the
    person picks that team (the template's script follows the choice)."""
    profiles: tuple[ProfileView, ...]
    selected_options: Mapping[str, str]
    simulated_gpus: str | None
    catalog_version: str
    borrowing: str | None = None
    """The terms of a borrowed server, when one of the person's teams may borrow (the form then
    offers the "Borrow idle quota" checkbox); None otherwise."""
    borrow_checked: bool = False


@dataclass(frozen=True)
class WaitlistLink:
    """Where the form's offers to wait point: the gpuhub service's wait-list page of this hub,
    for this server."""

    base_url: str
    """The hub's proxy base URL ('/' by default)."""
    server_name: str
    """The server the form starts ('' for the default one)."""

    def url(self, profile: str, team: str) -> str:
        return waitlist_page_url(
            self.base_url, self.server_name, {"profile": profile, "team": team}
        )


def line_keys(catalog: Catalog, who: Identity) -> frozenset[LineKey]:
    """The (team, GPU type, GPU count) of every GPU profile `who` may pick: the lines whose
    place the form shows (ask the ledger for each, then pass them to `form_view`)."""
    keys = set()
    for team in teams_of(catalog, who):
        for profile in visible_profiles(catalog, who, team):
            if profile.gpu is not None:
                keys.add((team, profile.gpu.type, profile.gpu.count))
    return frozenset(keys)


def option_note(option: ProfileOption, runtime: str) -> str | None:
    """What `option` does on servers of `runtime` when its choices set only override keys that
    runtime does not apply (None when it has an effect there, or when runtime is unknown)."""
    applied = APPLIED_OVERRIDES.get(runtime)
    keys = {key for choice in option.choices.values() for key in choice.kubespawner_override}
    if option.unlisted_choice.enabled:
        keys |= set(option.unlisted_choice.kubespawner_override)
    if applied is None or not keys or keys & applied:
        return None
    return next((LOCAL_NOTES[key] for key in sorted(keys) if key in LOCAL_NOTES), LOCAL_NOTE)


def form_view(
    catalog: Catalog,
    who: Identity,
    usage: Mapping[str | None, TeamUsage],
    now: datetime,
    *,
    previous: Mapping[str, Any] | None = None,
    simulated_gpus: str | None = None,
    catalog_version: str = "",
    machine_free: Mapping[str, int] | None = None,
    runtime: str = KUBERNETES,
    lines: Mapping[LineKey, LineSpot] | None = None,
    waitlist: WaitlistLink | None = None,
) -> FormView:
    """Everything the form shows for `who`. `usage` maps each of their teams (or None) to what the
    team holds, as seen by `who`; `previous` are the user_options of their last spawn,
    preselected; `machine_free` (local mode) the GPUs per type free on this machine; `runtime`
    where servers run (KUBERNETES or LOCAL), for the options that do nothing there; `lines` the
    GPU types' lines per `line_keys` (None or a missing key: the ledger was not read, so no
    offer to wait); `waitlist` where an offer's link points (None: an offer without a link)."""
    previous = previous or {}
    team_keys: Sequence[str | None] = teams_of(catalog, who) or (None,)

    def usage_of(team: str | None) -> TeamUsage:
        return usage.get(team, TeamUsage(user=who.name))

    teams = tuple(
        TeamView(
            key,
            catalog.teams[key].display_name or key,
            budget_preview(catalog, key, usage_of(key), now),
        )
        for key in team_keys
        if key is not None
    )
    asked_team = previous.get("team")
    selected_team = asked_team if asked_team in team_keys else team_keys[0]
    by_slug: dict[str, list[ProfilePreview]] = {}
    for key in team_keys:
        for profile in visible_profiles(catalog, who, key):
            line = None
            if key is not None and profile.gpu is not None and lines is not None:
                line = lines.get((key, profile.gpu.type, profile.gpu.count))
            preview = profile_preview(catalog, profile, key, usage_of(key), now, machine_free, line)
            if preview.offer is not None and waitlist is not None and key is not None:
                offer = replace(preview.offer, url=waitlist.url(profile.slug, key))
                preview = replace(preview, offer=offer)
            by_slug.setdefault(profile.slug, []).append(preview)
    shown = tuple(p for p in catalog.profiles if p.slug in by_slug)
    chosen = previous.get("profile") if previous.get("profile") in by_slug else None
    fallback = default_profile(shown)
    chosen = chosen or (fallback.slug if fallback else None)

    def view_of(profile: Profile) -> ProfileView:
        options = visible_options(profile, who)
        found = {name: option_note(option, runtime) for name, option in options.items()}
        notes = {name: note for name, note in found.items() if note}
        previews = tuple(by_slug[profile.slug])
        return ProfileView(profile, previews, profile.slug == chosen, options, notes)

    return FormView(
        teams=teams,
        selected_team=selected_team,
        profiles=tuple(view_of(p) for p in shown),
        selected_options={k: v for k, v in previous.items() if isinstance(v, str)},
        simulated_gpus=simulated_gpus,
        catalog_version=catalog_version,
        borrowing=_borrowing_terms(catalog, team_keys),
        borrow_checked=str(previous.get(BORROW_OPTION, "")).lower() in ("yes", "on", "true", "1"),
    )


def _borrowing_terms(catalog: Catalog, teams: Sequence[str | None]) -> str | None:
    """What borrowing means here, if any of `teams` may borrow some GPU type."""
    if catalog.borrowing is None:
        return None
    if not any(any(catalog.teams[t].quota.borrow_limit.values()) for t in teams if t is not None):
        return None
    return f"a borrowed server {reclaim_terms(catalog)}"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("spawner_ext", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_form(view: FormView) -> str:
    """The form's HTML, to sit inside JupyterHub's spawn page (Bootstrap 5)."""
    return _environment().get_template("options_form.html").render(view=view, OTHER=OTHER)


def user_options_from_form(formdata: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """Form fields -> user_options, the shape the REST API takes:
    `{"profile": SLUG, "team": TEAM, OPTION: CHOICE, "OPTION--unlisted-choice": TEXT}`.
    Validation happens later, on the user_options, for form and API alike."""

    def first(name: str) -> str | None:
        values = formdata.get(name) or []
        value = values[0] if values else None
        return value if isinstance(value, str) else None

    options: dict[str, str] = {}
    profile = first("profile")
    team = first("team")
    if profile:
        options["profile"] = profile
    if team:
        options["team"] = team
    if first(BORROW_OPTION):
        options[BORROW_OPTION] = "yes"
    if not profile:
        return options
    prefix = f"profile-option-{profile}--"
    for name in formdata:
        if not name.startswith(prefix) or name.endswith(UNLISTED):
            continue
        option = name[len(prefix) :]
        choice = first(name)
        if choice == OTHER:
            options[option + UNLISTED] = (first(name + UNLISTED) or "").strip()
        elif choice:
            options[option] = choice
    return options
