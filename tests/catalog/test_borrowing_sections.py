"""Borrowing in the catalog: values as an admin writes them, defaults, cohorts, and every bad
value as FILE:LINE:COL: path: message.

Broken once: `_borrowing_problems` left out of reference_problems (the unknown cohort team and
the borrow_limit without a section passed silently); the one-cohort check removed (a team in two
cohorts passed)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from spawner_ext.catalog import CatalogError, parse_catalog

BASE = """\
gpu_types:
  h100:
    display_name: H100
    price_per_hour: 4
profiles:
  - display_name: CPU
    slug: cpu
teams:
  vision:
    quota:
      gpus: {h100: 4}
      borrow_limit: {h100: 2}
      lend_limit: {h100: 1}
  nlp:
    quota:
      gpus: {h100: 8}
  teaching:
    quota:
      gpus: {h100: 1}
borrowing:
  cohorts:
    research: [vision, nlp]
  reclaim_notice: 5m
  min_runtime: 2h
  price_factor: 1.5
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "cat.yaml")
    return [str(p) for p in info.value.problems]


def test_values_as_written() -> None:
    catalog = parse_catalog(BASE, "cat.yaml")
    borrowing = catalog.borrowing
    assert borrowing is not None
    assert (borrowing.reclaim_notice, borrowing.min_runtime) == (
        timedelta(minutes=5),
        timedelta(hours=2),
    )
    assert borrowing.price_factor == Decimal("1.5")
    quota = catalog.teams["vision"].quota
    assert (dict(quota.borrow_limit), dict(quota.lend_limit)) == ({"h100": 2}, {"h100": 1})
    teams = tuple(catalog.teams)
    assert borrowing.cohort_of("vision", teams) == ("nlp", "vision")
    assert borrowing.cohort_of("teaching", teams) == ("teaching",)  # in no cohort: on its own


def test_defaults() -> None:
    text = BASE.split("borrowing:")[0] + "borrowing: {}\n"
    borrowing = parse_catalog(text, "cat.yaml").borrowing
    assert borrowing is not None
    assert (borrowing.reclaim_notice, borrowing.min_runtime, borrowing.price_factor) == (
        timedelta(minutes=15),
        timedelta(hours=1),
        Decimal(1),
    )
    # no cohorts: every team lends to every other
    assert borrowing.cohort_of("teaching", ("vision", "nlp", "teaching")) == (
        "nlp",
        "teaching",
        "vision",
    )
    without = parse_catalog(BASE.split("borrowing:")[0].replace("borrow_limit: {h100: 2}", ""), "c")
    assert without.borrowing is None
    assert dict(without.teams["nlp"].quota.borrow_limit) == {}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("research: [vision, nlp]", "research: [vision, nlb]"),
            "cat.yaml:22:24: borrowing.cohorts.research[1]: unknown team 'nlb'; did you mean "
            "'nlp'?",
        ),
        (
            ("research: [vision, nlp]", "research: [vision, nlp]\n    art: [teaching, nlp]"),
            "cat.yaml:22:5: borrowing.cohorts: team 'nlp' is in cohorts 'research' and 'art'; a "
            "team lends within one cohort: remove it from one of them",
        ),
        (
            ("borrow_limit: {h100: 2}", "borrow_limit: {h200: 2}"),
            "cat.yaml:12:22: teams.vision.quota.borrow_limit.h200: unknown GPU type 'h200'; did "
            "you mean 'h100'?",
        ),
        (
            ("lend_limit: {h100: 1}", "lend_limit: {h100: -1}"),
            "cat.yaml:13:26: teams.vision.quota.lend_limit.h100: must be at least 0, got -1",
        ),
        (
            ("reclaim_notice: 5m", "reclaim_notice: soon"),
            "cat.yaml:23:19: borrowing.reclaim_notice: cannot read 'soon' as a duration",
        ),
        (
            ("price_factor: 1.5", "price_factor: cheap"),
            "cat.yaml:25:17: borrowing.price_factor: expected a price such as 2.50, got 'cheap'",
        ),
        (
            ("min_runtime: 2h", "min_runtime: 2h\n  lenders: all"),
            "cat.yaml:25:3: borrowing.lenders: unknown key 'lenders'; known: cohorts, min_runtime, "
            "price_factor, reclaim_notice",
        ),
    ],
)
def test_bad_values_say_file_line_and_what_to_do(change: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


def test_borrow_limit_needs_the_section() -> None:
    text = BASE.split("borrowing:")[0]
    assert problems_of(text) == [
        "cat.yaml:12:7: teams.vision.quota.borrow_limit: the team may borrow, but the catalog "
        "has no `borrowing` section: add one (its defaults are a 15m notice and a 1h guaranteed "
        "run), or remove borrow_limit"
    ]
    # a limit of 0 borrows nothing: no section needed
    assert parse_catalog(text.replace("{h100: 2}", "{h100: 0}"), "cat.yaml").borrowing is None
