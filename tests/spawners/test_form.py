"""The spawn form shows the numbers of the team being charged, follows a change of team, and says
which options do nothing on local servers (while still offering and validating them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from tornado import web

from spawner_ext.catalog import ProfileOption, load_catalog, parse_catalog
from spawner_ext.catalog.store import CatalogVersion
from spawner_ext.local.spawner import GPULocalSpawner
from spawner_ext.policy.admission import Holding, TeamUsage
from spawner_ext.policy.identity import Identity
from spawner_ext.spawners.form import (
    KUBERNETES,
    LOCAL,
    LOCAL_NOTE,
    LOCAL_NOTES,
    form_view,
    option_note,
    render_form,
    user_options_from_form,
)
from spawner_ext.spawners.mixin import GPUSpawnerMixin

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CATALOG = load_catalog(ROOT / "hub_config" / "catalog.yaml")
LIN = Identity("lin")  # in nlp and vision (by name)
ADA = Identity("ada")  # in vision only
H100 = "h100-80gb"


@dataclass(frozen=True)
class Line:
    """One fact line of a profile card, as the page has it."""

    profile: str
    kind: str
    team: str | None
    hidden: bool
    text: str


class Page(HTMLParser):
    """The fact lines per profile, the option notes and selects, and the scripts of the form."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[Line] = []
        self.selects: dict[str, dict[str, str | None]] = {}
        self.notes: dict[str, str] = {}
        self.scripts = 0
        self._profile = ""
        self._open: dict[str, str | None] | None = None
        self._note: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        ident = a.get("id") or ""
        if tag == "div" and ident.startswith("gpuhub-profile-"):
            self._profile = ident.removeprefix("gpuhub-profile-")
        if tag == "li":
            self._open, self._text = a, []
        if tag == "div" and "gpuhub-option-note" in (a.get("class") or ""):
            self._note, self._text = ident, []
        if tag == "select":
            self.selects[a.get("name") or ""] = a
        if tag == "script":
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = " ".join("".join(self._text).split())
        if tag == "li" and self._open is not None:
            a = self._open
            kind = (a.get("class") or "").split()[0]
            hidden = "hidden" in a
            self.lines.append(Line(self._profile, kind, a.get("data-gpuhub-team"), hidden, text))
            self._open = None
        if tag == "div" and self._note is not None:
            self.notes[self._note] = text
            self._note = None


def page(html: str) -> Page:
    parsed = Page()
    parsed.feed(html)
    return parsed


def shown(parsed: Page, profile: str) -> list[str]:
    """What a person sees on a profile's card: its lines that are not hidden."""
    return [line.text for line in parsed.lines if line.profile == profile and not line.hidden]


# vision: its 8 H100 all held; nlp: nothing held.
USAGE: dict[str | None, TeamUsage] = {
    "vision": TeamUsage("lin", (Holding("bob", H100, 8),), Decimal(10)),
    "nlp": TeamUsage("lin", (), Decimal(10)),
}


def render(team: str | None, usage: dict[str | None, TeamUsage] | None = None) -> Page:
    previous = {"team": team} if team else None
    view = form_view(CATALOG, LIN, usage or USAGE, NOW, previous=previous)
    if team:
        assert view.selected_team == team
    return page(render_form(view))


def test_the_numbers_shown_are_the_selected_teams() -> None:
    vision = render("vision")
    assert shown(vision, "h100-single")[2:] == [
        "vision: 0 of 8 NVIDIA H100 80GB free; you may hold 4 more GPUs",
        "Cannot start now: team 'vision' may hold 8 NVIDIA H100 80GB at once and holds 8 "
        "(bob: 8); 0 free, you asked for 1. Try again when a server stops, or pick a smaller "
        "profile.",
    ]
    nlp = render("nlp")
    assert shown(nlp, "h100-single")[2:] == [
        "nlp: 16 of 16 NVIDIA H100 80GB free; you may hold 8 more GPUs"
    ]
    assert (
        shown(nlp, "h100-single")[:2]
        == shown(vision, "h100-single")[:2]
        == [
            "1 \N{MULTIPLICATION SIGN} NVIDIA H100 80GB",
            "4.10 USD per hour",
        ]
    )


def test_every_teams_numbers_are_on_the_page_for_the_script_to_show() -> None:
    nlp = render("nlp")
    hidden = [line for line in nlp.lines if line.hidden]
    assert hidden, "the other team's lines are there, hidden"
    assert {line.team for line in hidden} == {"vision"}
    assert nlp.scripts == 1, "a small script follows the team choice"
    assert {line.team for line in nlp.lines if line.team and not line.hidden} == {"nlp"}


def test_without_a_previous_choice_the_first_team_is_selected() -> None:
    view = form_view(CATALOG, LIN, USAGE, NOW)
    assert view.selected_team == "nlp"
    assert shown(page(render_form(view)), "h100-single")[2:] == [
        "nlp: 16 of 16 NVIDIA H100 80GB free; you may hold 8 more GPUs"
    ]


def test_a_profile_the_selected_team_may_not_use_says_so() -> None:
    assert shown(render("vision"), "h100-quad")[2:] == [
        "Not offered to Computer Vision Lab: charge another team to start it."
    ]
    assert shown(render("nlp"), "h100-quad")[2:] == [
        "nlp: 16 of 16 NVIDIA H100 80GB free; you may hold 8 more GPUs"
    ]


def test_a_used_up_budget_blocks_on_the_form_for_that_team_only() -> None:
    usage: dict[str | None, TeamUsage] = {
        "vision": TeamUsage("lin", (), Decimal(2000)),
        "nlp": TeamUsage("lin", (), Decimal(10)),
    }
    blocked = [line for line in render("vision", usage).lines if line.kind == "gpuhub-blocked"]
    assert {line.team for line in blocked} == {"vision"}
    assert all(not line.hidden for line in blocked)
    assert {line.profile for line in blocked} == {
        "mig-slice",
        "l4-single",
        "a100-single",
        "h100-single",
    }
    assert blocked[0].text.startswith(
        "Cannot start now: team 'vision' has used its monthly budget (2000 of 2000 GPU-hours)"
    )
    assert "cpu-small" not in {line.profile for line in blocked}, "CPU profiles still start"
    nlp = render("nlp", usage)
    assert not [line.text for line in nlp.lines if "budget" in line.text and not line.hidden]
    assert shown(nlp, "h100-single")[2:] == [
        "nlp: 16 of 16 NVIDIA H100 80GB free; you may hold 8 more GPUs"
    ]


def test_one_team_shows_everything_and_needs_no_script() -> None:
    view = form_view(CATALOG, ADA, {"vision": TeamUsage("ada")}, NOW)
    parsed = page(render_form(view))
    assert parsed.scripts == 0
    assert not [line for line in parsed.lines if line.hidden]
    assert "vision: 8 of 8 NVIDIA H100 80GB free; you may hold 4 more GPUs" in shown(
        parsed, "h100-single"
    )


# --- options that do nothing on this spawner ------------------------------------------------


def test_local_servers_ignore_the_image_and_the_form_says_so() -> None:
    view = form_view(CATALOG, ADA, {}, NOW, runtime=LOCAL)
    assert {p.profile.slug: dict(p.option_notes) for p in view.profiles} == {
        slug: {"image": LOCAL_NOTES["image"]}
        for slug in ("cpu-small", "mig-slice", "l4-single", "a100-single", "h100-single")
    }
    parsed = page(render_form(view))
    field = "profile-option-h100-single--image"
    assert parsed.notes[f"{field}--note"] == (
        "Kubernetes only: local servers use this machine's Python environment, whatever image "
        "is chosen."
    )
    select = parsed.selects[field]
    assert select["aria-describedby"] == f"{field}--note", "read out with the select"
    assert "disabled" not in select, "still offered: the value is submitted and validated"


def test_on_kubernetes_options_have_no_note() -> None:
    view = form_view(CATALOG, ADA, {}, NOW, runtime=KUBERNETES)
    assert all(not p.option_notes for p in view.profiles)
    parsed = page(render_form(view))
    assert parsed.notes == {}
    assert "aria-describedby" not in parsed.selects["profile-option-h100-single--image"]


def option(**choice_overrides: dict[str, Any]) -> ProfileOption:
    return ProfileOption.model_validate(
        {
            "display_name": "Thing",
            "choices": {
                name: {"display_name": name, "kubespawner_override": override}
                for name, override in choice_overrides.items()
            },
        }
    )


@pytest.mark.parametrize(
    ("the_option", "runtime", "note"),
    [
        (option(a={"image": "x"}, b={"image": "y"}), LOCAL, LOCAL_NOTES["image"]),
        (option(a={"cpu_guarantee": 1}, b={"cpu_guarantee": 2}), LOCAL, LOCAL_NOTE),
        (option(a={"image": "x"}), KUBERNETES, None),
        (option(a={"image": "x"}), "somewhere-else", None),
        (option(a={}, b={}), LOCAL, None),
    ],
    ids=["image", "other key", "kubernetes", "unknown runtime", "no override"],
)
def test_option_note(the_option: ProfileOption, runtime: str, note: str | None) -> None:
    assert option_note(the_option, runtime) == note


class FormOnlyLocalSpawner(GPULocalSpawner):
    """GPULocalSpawner with the catalog, the user and the usage handed in (no hub around it)."""

    def catalog_version(self) -> CatalogVersion:
        return CatalogVersion(CATALOG, "abc123", "0" * 64, "catalog.yaml", NOW)

    def identity(self) -> Identity:
        return ADA

    async def _team_usage(self, team: str | None, user: str) -> TeamUsage:
        return TeamUsage(user)

    def machine_free_gpus(self) -> dict[str, int]:
        return {H100: 1}


async def test_the_local_spawner_renders_the_notes() -> None:
    assert GPULocalSpawner().form_runtime() == "local"
    assert GPUSpawnerMixin.form_runtime(GPULocalSpawner()) == "kubernetes", "the mixin's default"
    parsed = page(await FormOnlyLocalSpawner().render_options_form())
    assert parsed.notes["profile-option-cpu-small--image--note"] == LOCAL_NOTES["image"]


def test_the_local_spawner_still_validates_the_image() -> None:
    spawner = FormOnlyLocalSpawner()
    plan = spawner.resolve({"profile": "cpu-small", "image": "pytorch"})
    assert plan.profile.slug == "cpu-small"
    with pytest.raises(web.HTTPError) as refused:
        spawner.resolve({"profile": "cpu-small", "image": "tensorflow"})
    assert "'tensorflow' is not a choice of option 'image'" in str(refused.value)


def test_a_team_that_may_borrow_gets_the_checkbox_and_a_hint_where_its_quota_is_full() -> None:
    text = (ROOT / "hub_config" / "catalog.yaml").read_text()
    text = text.replace(
        "      gpus_per_user: 4\n",
        "      gpus_per_user: 4\n      borrow_limit: {h100-80gb: 2}\n",
        1,
    )
    catalog = parse_catalog(text + "\nborrowing: {reclaim_notice: 15m, min_runtime: 1h}\n", "c")
    html = render_form(form_view(catalog, LIN, USAGE, NOW, previous={"team": "vision"}))
    parsed = page(html)
    assert shown(parsed, "h100-single")[-1] == (
        "Your team's quota is full: tick Borrow idle quota below to run on other teams' idle "
        "quota, if they have some."
    )
    assert 'name="borrow" value="yes"' in html
    assert "a borrowed server may be reclaimed with 15m notice after it has run 1h" in html
    assert user_options_from_form({"profile": ["h100-single"], "borrow": ["yes"]}) == {
        "profile": "h100-single",
        "borrow": "yes",
    }
    # no borrowing section, or no team of the person's that may borrow: no checkbox
    assert 'name="borrow"' not in render_form(form_view(CATALOG, LIN, USAGE, NOW))
    assert 'name="borrow"' not in render_form(
        form_view(catalog, Identity("grace"), {"nlp": TeamUsage("grace")}, NOW)
    )
