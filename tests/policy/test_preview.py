"""The form's preview asks admission's own decision about a profile: whatever admission would
refuse (a used-up budget, the team's quota, the per-user cap) blocks in the preview, word for
word, and nothing else does (but this machine's free GPUs in local mode)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.policy.admission import Decision, Holding, TeamUsage, decide
from spawner_ext.policy.preview import (
    NO_FREE_GPU,
    ProfilePreview,
    budget_preview,
    profile_preview,
)

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CATALOG = load_catalog(ROOT / "hub_config" / "catalog.yaml")
# vision: 8 H100, 8 A100, 7 MIG slices, 4 L4; 4 GPUs per user; 2000 GPU-hours, warns at 80 %.
# nlp: 16 H100, 4 A100; 8 per user; 5000 GPU-hours. teaching: 14 MIG, 4 L4; 1 per user; 300 h.


def preview(
    slug: str, team: str, usage: TeamUsage, machine_free: dict[str, int] | None = None
) -> ProfilePreview:
    profile = CATALOG.profile(slug)
    assert profile is not None
    return profile_preview(CATALOG, profile, team, usage, NOW, machine_free)


def admission(catalog: Catalog, slug: str, team: str, usage: TeamUsage) -> Decision:
    """What admission decides on the same request (as ledger/store.py asks it)."""
    profile = catalog.profile(slug)
    assert profile is not None
    gpu = profile.gpu
    return decide(
        team,
        catalog.teams[team].quota,
        user=usage.user,
        gpu_type=gpu.type if gpu else None,
        gpu_count=gpu.count if gpu else 0,
        gpu_type_name=catalog.gpu_types[gpu.type].display_name if gpu else "",
        holdings=usage.holdings,
        hours_used=usage.gpu_hours_this_month,
        now=NOW,
    )


def usage(*holdings: Holding, hours: str | None = "0", user: str = "ada") -> TeamUsage:
    return TeamUsage(user, holdings, None if hours is None else Decimal(hours))


H100 = "h100-80gb"
CASES = [
    ("free", "h100-single", "vision", usage(), None, None),
    (
        "budget used up",
        "h100-single",
        "vision",
        usage(hours="2000"),
        "budget",
        "team 'vision' has used its monthly budget (2000 of 2000 GPU-hours); GPU servers can "
        "start again when it resets on 2026-12-01 00:00 UTC",
    ),
    ("over budget", "mig-slice", "teaching", usage(hours="412.5"), "budget", "412.5 of 300"),
    ("CPU profiles start over budget", "cpu-small", "vision", usage(hours="9999"), None, None),
    (
        "team quota full",
        "h100-single",
        "vision",
        usage(Holding("bob", H100, 5), Holding("cy", H100, 3)),
        "gpu-quota",
        "team 'vision' may hold 8 NVIDIA H100 80GB at once and holds 8 (bob: 5, cy: 3); 0 free",
    ),
    (
        "too few left for four",
        "h100-quad",
        "nlp",
        usage(Holding("bob", H100, 13)),
        "gpu-quota",
        "3 free, you asked for 4",
    ),
    (
        "per-user cap, counted over GPU types",
        "h100-single",
        "vision",
        usage(Holding("ada", "l4", 2), Holding("ada", "a100-40gb", 2)),
        "user-cap",
        "you may hold 4 GPUs at once in team 'vision' and hold 4",
    ),
    (
        "others' GPUs do not count against my cap",
        "mig-slice",
        "teaching",
        usage(Holding("bob", "a100-1g10gb", 1)),
        None,
        None,
    ),
    (
        "without metering the budget is not judged",
        "h100-single",
        "vision",
        usage(hours=None),
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("slug", "team", "team_usage", "reason", "text"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_preview_blocks_with_admissions_reason_and_message(
    slug: str, team: str, team_usage: TeamUsage, reason: str | None, text: str | None
) -> None:
    shown = preview(slug, team, team_usage)
    decided = admission(CATALOG, slug, team, team_usage)
    assert shown.blocked_reason == reason
    if reason is None:
        assert shown.blocked is None
        assert decided.admitted
    else:
        assert not decided.admitted
        assert shown.blocked == decided.message, "the preview says what admission will say"
        assert text is not None
        assert text in shown.blocked


def test_without_metering_only_the_budget_goes_unjudged() -> None:
    full = usage(Holding("bob", H100, 8), hours=None)
    assert preview("h100-single", "vision", full).blocked_reason == "gpu-quota"
    assert preview("h100-single", "vision", usage(hours=None)).blocked is None


def test_this_machines_free_gpus_come_after_what_waiting_cannot_cure_in_local_mode() -> None:
    over_budget = usage(hours="2000")
    shown = preview("h100-single", "vision", over_budget, machine_free={H100: 0})
    assert shown.blocked_reason == "budget", "admission refuses it before the allocator is asked"
    full = usage(Holding("bob", H100, 8))
    first = preview("h100-single", "vision", full, machine_free={H100: 0})
    assert first.blocked_reason == NO_FREE_GPU, "then the machine, before the team's quota"
    assert first.blocked is not None
    assert first.blocked.startswith("this machine has no free NVIDIA H100 80GB now")
    two = preview("h100-quad", "nlp", usage(), machine_free={H100: 2})
    assert two.blocked is not None
    assert two.blocked.startswith("this machine has 2 NVIDIA H100 80GB free now")
    enough = preview("h100-single", "vision", over_budget, machine_free={H100: 1})
    assert enough.blocked_reason == "budget", "enough on the machine: admission decides"


def test_the_numbers_next_to_a_profile() -> None:
    shown = preview(
        "h100-single",
        "vision",
        usage(Holding("ada", H100, 1), Holding("bob", H100, 2), Holding("ada", "l4", 1)),
    )
    assert (shown.gpus_quota, shown.gpus_free, shown.user_gpus_left) == (8, 5, 2)
    assert shown.price_per_hour == Decimal("4.10")


def grid() -> list[tuple[str, str, TeamUsage]]:
    """Every profile with GPUs, for each team, on usages around each limit."""
    cases = []
    for team, entry in CATALOG.teams.items():
        quota = entry.quota
        budget = quota.monthly_gpu_hours or Decimal(0)
        hours = [None, Decimal(0), budget - Decimal("0.001"), budget, budget + 1]
        cap = quota.gpus_per_user or 0
        for profile in CATALOG.profiles:
            if profile.gpu is None:
                continue
            allowed = quota.gpus.get(profile.gpu.type, 0)
            holdings: list[tuple[Holding, ...]] = [
                (),
                (Holding("bob", profile.gpu.type, max(allowed - profile.gpu.count, 0)),),
                (Holding("bob", profile.gpu.type, max(allowed - profile.gpu.count + 1, 0)),),
                (Holding("ada", "l4", max(cap - profile.gpu.count, 0)),),
                (Holding("ada", "l4", max(cap - profile.gpu.count + 1, 0)),),
                (Holding("ada", profile.gpu.type, 1), Holding("bob", profile.gpu.type, 1)),
            ]
            for held, used in itertools.product(holdings, hours):
                cases.append((profile.slug, team, TeamUsage("ada", held, used)))
    return cases


def test_preview_and_admission_agree_on_a_grid_of_usages() -> None:
    cases = grid()
    assert len(cases) > 300
    refused = set()
    for slug, team, team_usage in cases:
        shown = preview(slug, team, team_usage)
        decided = admission(CATALOG, slug, team, team_usage)
        where = f"{slug} for {team} on {team_usage}"
        assert (shown.blocked is None) == decided.admitted, where
        if not decided.admitted:
            assert (shown.blocked, shown.blocked_reason) == (decided.message, decided.reason), where
            refused.add(decided.reason)
    assert refused == {"budget", "gpu-quota", "user-cap"}, "the grid reaches every refusal"


def test_budget_preview_shares_admissions_rules() -> None:
    for used, exhausted in [("0", False), ("1599", False), ("1600", False), ("2000", True)]:
        team_usage = usage(hours=used)
        budget = budget_preview(CATALOG, "vision", team_usage, NOW)
        decided = admission(CATALOG, "h100-single", "vision", team_usage)
        assert budget.exhausted is exhausted
        assert budget.exhausted is (decided.reason == "budget")
        if not exhausted:
            assert budget.warning == decided.warning, "the budget line warns as admission does"
    assert budget_preview(CATALOG, "vision", usage(hours=None), NOW).warning is None
    warned = budget_preview(CATALOG, "vision", usage(hours="1700"), NOW)
    assert warned.warning == (
        "team 'vision' has used 85% of its 2000 GPU-hours this month (resets 2026-12-01)"
    )
    assert (warned.left, warned.percent_used) == (Decimal(300), 85)
