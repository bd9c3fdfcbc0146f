"""The form's offer to wait: a GPU profile that cannot start now because no GPU of its type is
free (this machine's, or the capacity the ledger records), others wait for it first, or the
team's quota is held, offers "wait for a GPU" with the place and estimate the line gives; a spent
budget and the per-user cap stay refusals with their reason and no offer (waiting cannot cure
them), as the ledger's join refuses them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.ledger.waitlist import WAITABLE as LEDGER_WAITABLE
from spawner_ext.policy.admission import Holding, TeamUsage
from spawner_ext.policy.preview import (
    LINE,
    NO_FREE_GPU,
    WAITABLE,
    LineSpot,
    ProfilePreview,
    free_gpus,
    profile_preview,
    usable_capacities,
)

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CATALOG = load_catalog(ROOT / "hub_config" / "catalog.yaml")
OFF = CATALOG.model_copy(
    update={"waitlist": CATALOG.waitlist.model_copy(update={"enabled": False})}
)
H100 = "h100-80gb"
# vision: 8 H100, 4 GPUs per user, 2000 GPU-hours. nlp: 16 H100, 8 per user.


def usage(*holdings: Holding, hours: str = "0") -> TeamUsage:
    return TeamUsage("ada", holdings, Decimal(hours))


def preview(
    team_usage: TeamUsage,
    line: LineSpot | None,
    *,
    slug: str = "h100-single",
    team: str = "vision",
    machine_free: dict[str, int] | None = None,
    catalog: Catalog = CATALOG,
) -> ProfilePreview:
    profile = catalog.profile(slug)
    assert profile is not None
    return profile_preview(catalog, profile, team, team_usage, NOW, machine_free, line)


IN_40 = NOW + timedelta(minutes=40)
THIRD = LineSpot(place=3, estimate=IN_40, free=0)
FULL_TEAM = (Holding("bob", H100, 5), Holding("cy", H100, 3))
OFFER = (
    "No NVIDIA H100 80GB free now: wait for a GPU \N{EM DASH} you would be 3rd in line, "
    "about 40 minutes"
)
CASES = [
    # name, usage, line, machine_free, catalog, reason, offer text (None: no offer)
    ("free: starts", usage(), LineSpot(1, NOW, 8), None, CATALOG, None, None),
    ("no line read: as before", usage(), None, None, CATALOG, None, None),
    ("no GPU free in the capacity", usage(), THIRD, None, CATALOG, NO_FREE_GPU, OFFER),
    ("this machine has none free", usage(), THIRD, {H100: 0}, CATALOG, NO_FREE_GPU, OFFER),
    (
        "the team's quota is held",
        usage(*FULL_TEAM),
        LineSpot(2, NOW + timedelta(hours=3), 4),
        None,
        CATALOG,
        "gpu-quota",
        "No NVIDIA H100 80GB free now in team vision's quota: wait for a GPU \N{EM DASH} you "
        "would be 2nd in line, about 3 hours",
    ),
    (
        "others wait first, though a GPU is free",
        usage(),
        LineSpot(2, NOW + timedelta(minutes=12), 1),
        None,
        CATALOG,
        LINE,
        "No NVIDIA H100 80GB free now: wait for a GPU \N{EM DASH} you would be 2nd in line, "
        "about 10 minutes",
    ),
    (
        "no estimate",
        usage(),
        LineSpot(1, None, 0),
        None,
        CATALOG,
        NO_FREE_GPU,
        "No NVIDIA H100 80GB free now: wait for a GPU \N{EM DASH} you would be 1st in line, "
        "no estimate yet",
    ),
    (
        "the machine is full but the ledger knows no capacity: its estimate is not trusted",
        usage(),
        LineSpot(1, NOW, None),
        {H100: 0},
        CATALOG,
        NO_FREE_GPU,
        "No NVIDIA H100 80GB free now: wait for a GPU \N{EM DASH} you would be 1st in line, "
        "no estimate yet",
    ),
    (
        "budget spent, no GPU free: refused",
        usage(hours="2000"),
        THIRD,
        None,
        CATALOG,
        "budget",
        None,
    ),
    (
        "budget spent, the machine full: refused for the budget",
        usage(hours="2000"),
        THIRD,
        {H100: 0},
        CATALOG,
        "budget",
        None,
    ),
    (
        "per-user cap, no GPU free: refused",
        usage(Holding("ada", "l4", 4)),
        THIRD,
        None,
        CATALOG,
        "user-cap",
        None,
    ),
    (
        "quota held and the cap reached: admission says quota, joining would say cap",
        usage(Holding("ada", H100, 4), Holding("bob", H100, 4)),
        THIRD,
        None,
        CATALOG,
        "gpu-quota",
        None,
    ),
    (
        "wait-list off: no GPU free is a refusal",
        usage(),
        LineSpot(None, None, 0),
        None,
        OFF,
        NO_FREE_GPU,
        None,
    ),
    (
        "wait-list off: a line does not block",
        usage(),
        LineSpot(None, None, 2),
        None,
        OFF,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("team_usage", "line", "machine_free", "catalog", "reason", "offer"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_what_waiting_can_cure_is_offered_with_place_and_estimate(
    team_usage: TeamUsage,
    line: LineSpot | None,
    machine_free: dict[str, int] | None,
    catalog: Catalog,
    reason: str | None,
    offer: str | None,
) -> None:
    shown = preview(team_usage, line, machine_free=machine_free, catalog=catalog)
    assert shown.blocked_reason == reason
    assert (shown.blocked is None) == (reason is None)
    assert (shown.offer.text if shown.offer else None) == offer
    if shown.offer is not None:
        assert shown.offer.url is None, "the form adds the link"


def test_refusals_keep_their_reason_in_words() -> None:
    spent = preview(usage(hours="2000"), THIRD)
    assert spent.blocked is not None and "used its monthly budget" in spent.blocked
    cap = preview(usage(Holding("ada", "l4", 4)), THIRD)
    assert cap.blocked is not None and cap.blocked.startswith("you may hold 4 GPUs at once")
    line = preview(usage(), LineSpot(3, IN_40, 2))
    assert line.blocked == "2 requests wait for NVIDIA H100 80GB and would get it before you."
    free = preview(usage(), LineSpot(1, IN_40, 3), slug="h100-quad", team="nlp")
    assert free.blocked is not None and free.blocked.startswith("only 3 NVIDIA H100 80GB free")


def test_the_waitable_reasons_are_the_ledgers() -> None:
    assert WAITABLE == LEDGER_WAITABLE


def test_what_no_turn_could_serve_is_refused_without_an_offer() -> None:
    """As the ledger's join: more GPUs than the type has in all, or than the team's quota."""
    four = preview(usage(), LineSpot(1, None, 1, capacity=1), slug="h100-quad", team="nlp")
    assert (four.blocked_reason, four.offer) == (NO_FREE_GPU, None)
    fits = preview(usage(), LineSpot(1, IN_40, 1, capacity=4), slug="h100-quad", team="nlp")
    assert fits.offer is not None and fits.offer.place == 1
    no_l4 = preview(usage(), LineSpot(1, IN_40, 0), slug="l4-single", team="nlp")
    assert no_l4.blocked is not None and no_l4.blocked.startswith("team 'nlp' may hold 0 NVIDIA L4")
    assert no_l4.offer is None


def test_free_gpus_are_the_usable_capacity_less_sessions_and_holds() -> None:
    capacities = {H100: (8, 2), "l4": (1, 0), "no-such-type": (4, 0)}
    usable = usable_capacities(CATALOG, capacities)
    assert usable == {H100: 6, "l4": 1}
    taken = [(H100, 2), (H100, 1), ("l4", 1), (None, 0), ("a100-40gb", 3)]
    assert free_gpus(usable, taken) == {H100: 3, "l4": 0}
    assert free_gpus({H100: 2}, [(H100, 3)]) == {H100: 0}, "never below zero"
