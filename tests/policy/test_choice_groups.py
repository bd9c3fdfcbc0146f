"""`allowed_groups` on profile option choices (as 2i2c's profile lists have them): a choice
hidden from users outside its groups is neither on their form nor accepted from a forged form or
an API call."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from tornado import web

from spawner_ext.catalog import parse_catalog
from spawner_ext.catalog.store import CatalogVersion
from spawner_ext.local.spawner import GPULocalSpawner
from spawner_ext.policy.admission import TeamUsage
from spawner_ext.policy.identity import Identity
from spawner_ext.policy.profiles import in_groups, visible_options, visible_profiles, why_not
from spawner_ext.policy.request import SpawnRefused, resolve_spawn
from spawner_ext.spawners.form import form_view, render_form

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CATALOG = parse_catalog(
    """
profiles:
  - display_name: Small
    slug: small
    profile_options:
      image:
        display_name: Image
        choices:
          scipy:
            display_name: Scientific Python
            slug: scipy
            kubespawner_override: {image: "quay.io/jupyter/scipy-notebook"}
          secret:
            display_name: Staff image
            default: true
            allowed_groups: ["Org:Staff"]
            kubespawner_override: {image: "quay.io/org/staff"}
        unlisted_choice:
          enabled: true
          display_name: Your own image
          allowed_groups: ["org:staff", "org:power-users"]
          kubespawner_override: {image: "{value}"}
  - display_name: Staff only
    slug: staff-only
    allowed_groups: ["org:staff"]
  - display_name: Nobody's choice
    slug: closed
    profile_options:
      size:
        display_name: Size
        choices:
          huge: {display_name: Huge, allowed_groups: []}
""",
    override_keys={"image"},
)
SMALL = CATALOG.profiles[0]
STAFF = Identity("sam", frozenset({"org:staff"}))
POWER = Identity("pat", frozenset({"ORG:POWER-USERS"}))
STUDENT = Identity("stu", frozenset({"org:students"}))


@pytest.mark.parametrize(
    ("allowed", "groups", "expected"),
    [
        (None, set(), True),
        ((), {"a"}, False),
        (("a", "b"), {"b"}, True),
        (("a", "b"), {"c"}, False),
        (("Org:Staff",), {"org:staff"}, True),
        (("org:staff",), {"ORG:STAFF"}, True),
    ],
)
def test_in_groups(allowed: tuple[str, ...] | None, groups: set[str], expected: bool) -> None:
    assert in_groups(Identity("u", frozenset(groups)), allowed) is expected


@pytest.mark.parametrize(
    ("who", "choices", "free_text"),
    [
        (STAFF, ["scipy", "secret"], True),
        (POWER, ["scipy"], True),
        (STUDENT, ["scipy"], False),
    ],
)
def test_visible_options(who: Identity, choices: list[str], free_text: bool) -> None:
    image = visible_options(SMALL, who)["image"]
    assert list(image.choices) == choices
    assert image.unlisted_choice.enabled is free_text


@pytest.mark.parametrize(
    ("who", "profiles"),
    [(STAFF, ["small", "staff-only"]), (STUDENT, ["small"]), (Identity("ann"), ["small"])],
)
def test_visible_profiles(who: Identity, profiles: list[str]) -> None:
    assert [p.slug for p in visible_profiles(CATALOG, who, None)] == profiles


def test_a_profile_with_an_option_left_empty_is_not_offered() -> None:
    closed = CATALOG.profile("closed")
    assert closed is not None
    reason = why_not(CATALOG, closed, STAFF, None)
    assert reason is not None and "option 'size' of profile 'closed' has no choice" in reason


PLANS: list[tuple[Identity, dict[str, str], str]] = [
    (STAFF, {"profile": "small"}, "quay.io/org/staff"),  # the default, for whoever may
    (STUDENT, {"profile": "small"}, "quay.io/jupyter/scipy-notebook"),  # the first they may
    (STUDENT, {"profile": "small", "image": "scipy"}, "quay.io/jupyter/scipy-notebook"),
    (STAFF, {"profile": "small", "image": "secret"}, "quay.io/org/staff"),
    (POWER, {"profile": "small", "image--unlisted-choice": "quay.io/me/x"}, "quay.io/me/x"),
]


@pytest.mark.parametrize(("who", "options", "image"), PLANS)
def test_plans(who: Identity, options: dict[str, str], image: str) -> None:
    assert resolve_spawn(CATALOG, who, options).overrides["image"] == image


REFUSED: list[tuple[Identity, dict[str, str], str, str]] = [
    (
        STUDENT,
        {"profile": "small", "image": "secret"},
        "choice 'secret' of option 'image' in profile 'small' is only for members of: Org:Staff; "
        "choose one of: scipy",
        "choice-not-allowed",
    ),
    (
        STUDENT,
        {"profile": "small", "image--unlisted-choice": "quay.io/me/x"},
        "your own value for option 'image' of profile 'small' is only for members of: "
        "org:staff, org:power-users; choose one of: scipy",
        "choice-not-allowed",
    ),
    (
        STAFF,
        {"profile": "closed"},
        "option 'size' of profile 'closed' has no choice open to you",
        "profile-not-allowed",
    ),
]


@pytest.mark.parametrize(("who", "options", "message", "reason"), REFUSED)
def test_refusals(who: Identity, options: dict[str, str], message: str, reason: str) -> None:
    with pytest.raises(SpawnRefused) as refused:
        resolve_spawn(CATALOG, who, options)
    assert message in refused.value.message
    assert refused.value.reason == reason


class Selects(HTMLParser):
    """Select name -> option values, and whether any free-text field is on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.selects: dict[str, list[str]] = {}
        self.text_fields: list[str] = []
        self._select = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "select":
            self._select = attr["name"] or ""
            self.selects[self._select] = []
        elif tag == "option":
            self.selects[self._select].append(attr["value"] or "")
        elif tag == "input" and attr.get("type") == "text":
            self.text_fields.append(attr["name"] or "")


def form_of(who: Identity) -> Selects:
    html = render_form(form_view(CATALOG, who, {None: TeamUsage(who.name)}, NOW))
    page = Selects()
    page.feed(html)
    return page


def test_the_form_shows_a_choice_only_to_its_groups() -> None:
    field = "profile-option-small--image"
    staff, student = form_of(STAFF), form_of(STUDENT)
    assert staff.selects[field] == ["scipy", "secret", "--unlisted-choice"]
    assert staff.text_fields == [field + "--unlisted-choice"]
    assert student.selects[field] == ["scipy"]
    assert student.text_fields == []
    assert "profile-option-closed--size" not in staff.selects


class StudentSpawner(GPULocalSpawner):
    """The local spawner with the catalog and the user handed in (no hub around it)."""

    def catalog_version(self) -> CatalogVersion:
        return CatalogVersion(CATALOG, "abc123", "0" * 64, "catalog.yaml", NOW)

    def identity(self) -> Identity:
        return STUDENT


def test_a_forged_form_choosing_a_hidden_choice_is_refused() -> None:
    spawner = StudentSpawner()
    form: dict[str, Any] = {"profile": ["small"], "profile-option-small--image": ["secret"]}
    with pytest.raises(web.HTTPError) as refused:
        spawner.options_from_form(form)
    assert refused.value.status_code == 400
    assert "choice 'secret' of option 'image' in profile 'small' is only for members of" in str(
        refused.value
    )
    ok = spawner.options_from_form({**form, "profile-option-small--image": ["scipy"]})
    assert ok == {"profile": "small", "image": "scipy"}
