"""The policy core: teams, visible profiles, and spawn requests resolved or refused."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spawner_ext.catalog import load_catalog, parse_catalog
from spawner_ext.policy.identity import Identity, teams_of
from spawner_ext.policy.profiles import visible_profiles
from spawner_ext.policy.request import SpawnRefused, resolve_spawn

CATALOG = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")
ADA = Identity("ada", frozenset({"vision"}))
BOTH = Identity("lin", frozenset({"vision", "nlp"}))
STUDENT = Identity("sam", frozenset({"students"}))
NOBODY = Identity("eve", frozenset())
TUTOR = Identity("tutor")


def slugs(who: Identity, team: str | None) -> list[str]:
    return [p.slug for p in visible_profiles(CATALOG, who, team)]


def test_teams_by_group_and_by_name() -> None:
    assert teams_of(CATALOG, ADA) == ("vision",)
    assert teams_of(CATALOG, BOTH) == ("nlp", "vision")
    assert teams_of(CATALOG, TUTOR) == ("teaching",)
    assert teams_of(CATALOG, NOBODY) == ()


@pytest.mark.parametrize(
    ("who", "team", "expected"),
    [
        (ADA, "vision", ["cpu-small", "mig-slice", "l4-single", "a100-single", "h100-single"]),
        (BOTH, "nlp", ["cpu-small", "a100-single", "h100-single", "h100-quad"]),
        (STUDENT, "teaching", ["cpu-small", "mig-slice", "l4-single"]),
        (NOBODY, None, ["cpu-small"]),
    ],
)
def test_visible_profiles(who: Identity, team: str | None, expected: list[str]) -> None:
    assert slugs(who, team) == expected


def test_gpu_plan() -> None:
    plan = resolve_spawn(CATALOG, ADA, {"profile": "h100-single", "image": "pytorch"})
    assert plan.team == "vision"
    assert (plan.gpu_type_key, plan.gpu_count) == ("h100-80gb", 1)
    assert plan.price_per_hour == Decimal("4.1")
    assert plan.overrides["image"] == "quay.io/jupyter/pytorch-notebook:cuda12-2026-11-02"
    assert plan.overrides["cpu_limit"] == 16
    assert plan.namespace == "gpuhub-vision"
    assert plan.gpu_idle_timeout is not None and plan.gpu_idle_timeout.total_seconds() == 1800
    assert (plan.summary.team, plan.summary.profile) == ("vision", "h100-single")
    assert (plan.summary.gpu_type, plan.summary.gpu_count) == ("h100-80gb", 1)


def test_defaults_and_unlisted_choice() -> None:
    plan = resolve_spawn(CATALOG, NOBODY, {})
    assert plan.profile.slug == "cpu-small"
    assert plan.team is None and plan.gpu_count == 0 and plan.namespace is None
    assert plan.choices["image"] == "scipy"
    custom = resolve_spawn(
        CATALOG, ADA, {"profile": "l4-single", "image--unlisted-choice": "quay.io/me/img:v1"}
    )
    assert custom.overrides["image"] == "quay.io/me/img:v1"
    assert custom.unlisted == {"image"}
    quad = resolve_spawn(CATALOG, BOTH, {"profile": "h100-quad", "team": "nlp"})
    assert quad.price_per_hour == Decimal("16.4")
    assert quad.max_age is not None and quad.max_age.total_seconds() == 86400


REFUSALS: list[tuple[str, Identity, Any, str, str]] = [
    ("unknown profile", ADA, {"profile": "h200"}, "unknown-profile", "unknown profile 'h200'"),
    (
        "profile not for the team",
        ADA,
        {"profile": "h100-quad"},
        "profile-not-allowed",
        "profile 'h100-quad' is only for the teams: nlp",
    ),
    (
        "GPU without a team",
        NOBODY,
        {"profile": "l4-single"},
        "profile-not-allowed",
        "ask your admin to add you to a team",
    ),
    (
        "forged GPU count",
        ADA,
        {"profile": "h100-single", "gpu_count": "8"},
        "unknown-option",
        "GPU type and count come from the profile",
    ),
    (
        "forged team",
        ADA,
        {"profile": "h100-single", "team": "nlp"},
        "not-in-team",
        "you are not in team 'nlp'",
    ),
    ("two teams, none chosen", BOTH, {"profile": "cpu-small"}, "choose-team", "several teams"),
    (
        "choice outside the list",
        ADA,
        {"profile": "cpu-small", "image": "tensorflow"},
        "bad-choice",
        "'tensorflow' is not a choice of option 'image'",
    ),
    (
        "regex mismatch",
        ADA,
        {"profile": "cpu-small", "image--unlisted-choice": "docker.io/evil:latest"},
        "bad-choice",
        "Use an image from quay.io with a tag",
    ),
    (
        "injection with a newline",
        ADA,
        {"profile": "cpu-small", "image--unlisted-choice": "quay.io/a/b:c\nrm -rf /"},
        "bad-choice",
        "one line",
    ),
    (
        "shell metacharacters",
        ADA,
        {"profile": "cpu-small", "image--unlisted-choice": "quay.io/a/b:c;$(reboot)"},
        "bad-choice",
        "is not accepted",
    ),
    ("not an object", ADA, ["profile", "x"], "bad-options", "must be a JSON object"),
    ("number value", ADA, {"profile": "cpu-small", "image": 3}, "bad-options", "must be text"),
    (
        "student on an H100",
        STUDENT,
        {"profile": "h100-single"},
        "profile-not-allowed",
        "team 'teaching' may not use profile 'h100-single'",
    ),
]


@pytest.mark.parametrize(
    ("who", "options", "reason", "message"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refused(who: Identity, options: Any, reason: str, message: str) -> None:
    with pytest.raises(SpawnRefused) as info:
        resolve_spawn(CATALOG, who, options)
    assert info.value.reason == reason
    assert message in info.value.message


def test_value_substitution_does_not_interpret_user_text() -> None:
    catalog = parse_catalog(
        """
profiles:
  - display_name: Any tag
    profile_options:
      tag:
        display_name: Tag
        unlisted_choice:
          enabled: true
          kubespawner_override:
            image: "img:{value}"
            extra_labels: {tag: "{value}", literal: "{other}"}
"""
    )
    text = "{value}{0}{other}"
    plan = resolve_spawn(catalog, ADA, {"tag--unlisted-choice": text})
    assert plan.overrides["image"] == "img:" + text
    assert plan.overrides["extra_labels"] == {"tag": text, "literal": "{other}"}


@pytest.mark.parametrize(
    ("value", "borrow"),
    [(None, False), ("yes", True), ("on", True), ("True", True), ("no", False), ("", False)],
)
def test_the_borrow_option(value: str | None, borrow: bool) -> None:
    options = {"profile": "h100-single"} | ({} if value is None else {"borrow": value})
    plan = resolve_spawn(CATALOG, ADA, options)
    assert plan.borrow is borrow
    assert "borrow" not in plan.choices  # not a profile option: admission reads it


def test_a_bad_borrow_value_is_refused_with_the_values_it_takes() -> None:
    with pytest.raises(SpawnRefused) as refused:
        resolve_spawn(CATALOG, ADA, {"profile": "h100-single", "borrow": "maybe"})
    assert (refused.value.reason, refused.value.message) == (
        "bad-options",
        "option 'borrow' must be yes or no, got 'maybe'",
    )
