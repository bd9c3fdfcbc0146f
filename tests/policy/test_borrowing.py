"""Table tests of the borrowing decisions (policy/borrowing.py): whose quota a spawn uses, what a
lender may lend, when GPUs are reclaimed, which borrowed servers give them, and when a
borrowed server becomes own. Each row's expectation is worked out by hand from the rules in the
module's docstring.

Broken once each (then restored): `fits_own` counting lent GPUs as held made row "lender with
all lent, own spawn" a borrow; `choose_reclaims` without the idle pass first chose the busy old
server in "idle before busy"; without the `min_runtime` filter "too young" chose the young one;
`reclaim_need` not subtracting the free GPUs reclaimed one in "a free GPU serves it"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spawner_ext.catalog import parse_catalog
from spawner_ext.policy.admission import Decision, Holding, TeamUsage, decide_with_borrowing
from spawner_ext.policy.borrowing import (
    BorrowedServer,
    Loan,
    Placement,
    Refusal,
    Share,
    Wanting,
    choose_reclaims,
    conversions,
    lendable,
    place,
    reclaim_need,
    withdraw_reclaims,
)
from spawner_ext.policy.borrowing_text import borrow_offer
from spawner_ext.policy.identity import Identity
from spawner_ext.policy.profiles import most_gpus, visible_profiles

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)


def shares(*items: Share) -> dict[str, Share]:
    return {s.team: s for s in items}


@pytest.mark.parametrize(
    ("share", "expected"),
    [
        (Share("a", quota=4), 4),
        (Share("a", quota=4, own=1), 3),
        (Share("a", quota=4, own=1, lent=2), 1),
        (Share("a", quota=4, own=5), 0),  # over its quota (a reload lowered it): lends nothing
        (Share("a", quota=4, lend_limit=2), 2),
        (Share("a", quota=4, lend_limit=2, lent=2), 0),
        (Share("a", quota=4, lend_limit=3, lent=1, own=2), 1),
        (Share("a", quota=4, lend_limit=0), 0),
        (Share("a", quota=0), 0),
    ],
)
def test_what_a_team_may_lend(share: Share, expected: int) -> None:
    assert lendable(share) == expected


@pytest.mark.parametrize(
    ("label", "teams", "team", "gpus", "expected"),
    [
        (
            "within its own quota",
            [Share("a", 4, own=2, borrow_limit=4), Share("b", 4)],
            "a",
            2,
            Placement(borrowed=False),
        ),
        (
            "lender with all lent, own spawn: still own (take_back gives it back)",
            [Share("a", 2, lent=2), Share("b", 0, borrowed=2, borrow_limit=4)],
            "a",
            1,
            Placement(borrowed=False),
        ),
        (
            "over its quota: borrows the whole server",
            [Share("a", 2, own=1, borrow_limit=4), Share("b", 4, own=1)],
            "a",
            2,
            Placement(borrowed=True, loans=(Loan("b", 2),)),
        ),
        (
            "the most lendable first, then by key",
            [Share("a", 0, borrow_limit=8), Share("b", 4, own=3), Share("c", 4), Share("d", 4)],
            "a",
            6,
            Placement(borrowed=True, loans=(Loan("c", 4), Loan("d", 2))),
        ),
        (
            "lend_limit caps a lender",
            [Share("a", 0, borrow_limit=8), Share("b", 8, lend_limit=1), Share("c", 2)],
            "a",
            3,
            Placement(borrowed=True, loans=(Loan("c", 2), Loan("b", 1))),
        ),
        (
            "borrow_limit",
            [Share("a", 1, own=1, borrowed=1, borrow_limit=2), Share("b", 8)],
            "a",
            2,
            Refusal("borrow-limit", ""),
        ),
        (
            "no borrowing allowed (limit 0)",
            [Share("a", 1, own=1), Share("b", 8)],
            "a",
            1,
            Refusal("borrow-limit", ""),
        ),
        (
            "not enough lendable in the cohort",
            [Share("a", 0, borrow_limit=8), Share("b", 2, own=1), Share("c", 2, lent=1)],
            "a",
            3,
            Refusal("gpu-quota", ""),
        ),
    ],
)
def test_whose_quota_a_spawn_uses(
    label: str, teams: list[Share], team: str, gpus: int, expected: Placement | Refusal
) -> None:
    got = place(shares(*teams), team, gpus)
    if isinstance(expected, Refusal):
        assert isinstance(got, Refusal), label
        assert got.reason == expected.reason, label
        assert got.message, label
    else:
        assert got == expected, label


def test_refusals_say_what_is_free() -> None:
    got = place(shares(Share("a", 2, own=2, borrow_limit=4), Share("b", 2, own=1)), "a", 2)
    assert got == Refusal(
        "gpu-quota", "team 'a' has 0 of its own quota free and other teams lend 1 now; 2 needed"
    )


def borrowed(
    id: str,
    team: str,
    loans: dict[str, int],
    age: timedelta,
    idle: bool = False,
) -> BorrowedServer:
    return BorrowedServer(
        id=id,
        team=team,
        gpus=sum(loans.values()),  # whose quota does not choose: any borrowed server may go
        started_at=NOW - age,
        idle=idle,
    )


@pytest.mark.parametrize(
    ("label", "teams", "waiting", "free", "reclaiming", "expected"),
    [
        (
            "a lender waits, nothing free, a borrower runs",
            [Share("a", 2, own=1, lent=1), Share("x", 0, borrowed=1)],
            [Wanting("a", 1)],
            0,
            0,
            (1, "a"),
        ),
        (
            "a free GPU serves it: nothing reclaimed",
            [Share("a", 2, own=1, lent=1), Share("x", 0, borrowed=1)],
            [Wanting("a", 1)],
            1,
            0,
            (0, None),
        ),
        (
            "already being reclaimed",
            [Share("a", 2, own=1, lent=1), Share("x", 0, borrowed=1)],
            [Wanting("a", 1)],
            0,
            1,
            (0, None),
        ),
        (
            "over its own quota: it waits for its quota, reclaims nothing",
            [Share("a", 1, own=1), Share("x", 0, borrowed=2)],
            [Wanting("a", 1)],
            0,
            0,
            (0, None),
        ),
        (
            "within quota, counted in order, the rest over it",
            [Share("a", 3, own=1), Share("b", 1, own=1), Share("x", 0, borrowed=4)],
            [Wanting("b", 1), Wanting("a", 1), Wanting("a", 1), Wanting("a", 1)],
            0,
            0,
            (2, "a"),
        ),
        (
            "never more than borrowers hold",
            [Share("a", 8), Share("x", 0, borrowed=1)],
            [Wanting("a", 4)],
            0,
            0,
            (1, "a"),
        ),
        (
            "no borrowed server: nothing to reclaim",
            [Share("a", 8, own=8), Share("b", 8)],
            [Wanting("b", 2)],
            0,
            0,
            (0, None),
        ),
        ("nobody waits", [Share("a", 2), Share("x", 0, borrowed=2)], [], 0, 0, (0, None)),
        (
            "a team not in the cohort",
            [Share("x", 0, borrowed=2)],
            [Wanting("z", 1)],
            0,
            0,
            (0, None),
        ),
    ],
)
def test_when_gpus_are_reclaimed(
    label: str,
    teams: list[Share],
    waiting: list[Wanting],
    free: int,
    reclaiming: int,
    expected: tuple[int, str | None],
) -> None:
    assert reclaim_need(shares(*teams), waiting, free, reclaiming) == expected, label


@pytest.mark.parametrize(
    ("label", "servers", "gpus", "chosen"),
    [
        (
            "idle before busy",
            [
                borrowed("busy-old", "x", {"a": 1}, 5 * HOUR),
                borrowed("idle-new", "x", {"a": 1}, 2 * HOUR, idle=True),
            ],
            1,
            ["idle-new"],
        ),
        (
            "too young: min_runtime protects it",
            [
                borrowed("young-idle", "x", {"a": 1}, HOUR - timedelta(seconds=1), idle=True),
                borrowed("old-busy", "x", {"a": 1}, 3 * HOUR),
            ],
            1,
            ["old-busy"],
        ),
        (
            "exactly min_runtime old may be reclaimed",
            [borrowed("s", "x", {"a": 1}, HOUR)],
            1,
            ["s"],
        ),
        (
            "the longest running first among equals",
            [
                borrowed("b", "x", {"a": 1}, 2 * HOUR),
                borrowed("a", "y", {"a": 1}, 4 * HOUR),
                borrowed("c", "x", {"a": 1}, 3 * HOUR),
            ],
            2,
            ["a", "c"],
        ),
        (
            "one server that covers it, the smallest: fewest stopped",
            [
                borrowed("four", "x", {"a": 4}, 9 * HOUR, idle=True),
                borrowed("two", "x", {"a": 2}, 2 * HOUR, idle=True),
                borrowed("one", "x", {"a": 1}, 8 * HOUR, idle=True),
            ],
            2,
            ["two"],
        ),
        (
            "none covers it: the biggest first",
            [
                borrowed("one", "x", {"a": 1}, 8 * HOUR, idle=True),
                borrowed("two", "x", {"a": 2}, 2 * HOUR, idle=True),
                borrowed("one-b", "x", {"a": 1}, 3 * HOUR, idle=True),
            ],
            3,
            ["two", "one"],
        ),
        (
            "whoever lent it: any borrowed server of the type",
            [
                borrowed("from-b", "x", {"b": 1}, 9 * HOUR, idle=True),
                borrowed("from-a", "y", {"a": 1}, 2 * HOUR, idle=True),
            ],
            1,
            ["from-b"],
        ),
        (
            "idle ones do not cover it: busy ones too",
            [
                borrowed("idle", "x", {"a": 1}, 2 * HOUR, idle=True),
                borrowed("busy", "x", {"a": 1}, 2 * HOUR),
            ],
            2,
            ["idle", "busy"],
        ),
        ("nothing eligible", [borrowed("s", "x", {"a": 1}, 10 * timedelta(minutes=1))], 1, []),
        ("nothing needed", [borrowed("s", "x", {"a": 1}, 2 * HOUR)], 0, []),
    ],
)
def test_which_borrowed_servers_are_reclaimed(
    label: str, servers: list[BorrowedServer], gpus: int, chosen: list[str]
) -> None:
    got = choose_reclaims(servers, gpus, NOW, min_runtime=HOUR)
    assert [s.id for s in got] == chosen, label


MINUTE = timedelta(minutes=1)


def due_in(server: BorrowedServer, minutes: int) -> tuple[BorrowedServer, datetime]:
    """A choice: `server`, chosen, its stop due `minutes` from now."""
    return server, NOW + minutes * MINUTE


@pytest.mark.parametrize(
    ("label", "chosen", "gpus", "withdrawn"),
    [
        (
            "the one due sooner stays, though the later one alone would cover it",
            [
                due_in(borrowed("one", "x", {"a": 1}, 2 * HOUR), 5),
                due_in(borrowed("two", "x", {"a": 2}, 3 * HOUR), 9),
            ],
            2,
            [],
        ),
        (
            "fewer needed: the later one goes",
            [
                due_in(borrowed("one", "x", {"a": 1}, 2 * HOUR), 5),
                due_in(borrowed("two", "x", {"a": 2}, 3 * HOUR), 9),
            ],
            1,
            ["two"],
        ),
        (
            "the sooner one stays though it stops more than needed",
            [
                due_in(borrowed("two", "x", {"a": 2}, 2 * HOUR), 5),
                due_in(borrowed("one", "x", {"a": 1}, 3 * HOUR, idle=True), 9),
            ],
            1,
            ["one"],
        ),
        (
            "the two due soonest cover it; the later bigger one goes",
            [
                due_in(borrowed("big", "x", {"a": 2}, 5 * HOUR, idle=True), 14),
                due_in(borrowed("first", "x", {"a": 1}, 2 * HOUR), 3),
                due_in(borrowed("second", "y", {"a": 1}, 2 * HOUR), 7),
            ],
            2,
            ["big"],
        ),
        (
            "a bigger server for a smaller need stays chosen",
            [due_in(borrowed("pair", "x", {"a": 2}, 2 * HOUR), 10)],
            1,
            [],
        ),
        (
            "same time: an idle one and a busy one chosen together both stay",
            [
                due_in(borrowed("idle", "x", {"a": 1}, 2 * HOUR, idle=True), 10),
                due_in(borrowed("busy", "x", {"a": 2}, 3 * HOUR), 10),
            ],
            2,
            [],
        ),
        (
            "same time, fewer needed: the one choose_reclaims would choose stays (idle)",
            [
                due_in(borrowed("busy-old", "x", {"a": 1}, 5 * HOUR), 10),
                due_in(borrowed("idle-new", "x", {"a": 1}, 2 * HOUR, idle=True), 10),
            ],
            1,
            ["busy-old"],
        ),
        (
            "same time: one that covers it rather than two",
            [
                due_in(borrowed("a", "x", {"a": 1}, 2 * HOUR), 10),
                due_in(borrowed("b", "x", {"a": 1}, 2 * HOUR), 10),
                due_in(borrowed("c", "x", {"a": 2}, 2 * HOUR), 10),
            ],
            2,
            ["a", "b"],
        ),
        (
            "sooner ones all kept, then the same-time group chosen among",
            [
                due_in(borrowed("soon", "x", {"a": 1}, 2 * HOUR), 2),
                due_in(borrowed("late-old", "x", {"a": 1}, 6 * HOUR), 12),
                due_in(borrowed("late-new", "x", {"a": 1}, 3 * HOUR), 12),
            ],
            2,
            ["late-new"],
        ),
        (
            "all still needed",
            [
                due_in(borrowed("a", "x", {"a": 1}, 2 * HOUR), 4),
                due_in(borrowed("b", "x", {"a": 1}, 2 * HOUR), 8),
            ],
            2,
            [],
        ),
        (
            "nothing needed: all withdrawn, in the order given",
            [
                due_in(borrowed("b", "x", {"a": 1}, 2 * HOUR), 8),
                due_in(borrowed("a", "x", {"a": 1}, 2 * HOUR), 4),
            ],
            0,
            ["b", "a"],
        ),
        ("no choices", [], 1, []),
    ],
)
def test_which_choices_are_withdrawn(
    label: str, chosen: list[tuple[BorrowedServer, datetime]], gpus: int, withdrawn: list[str]
) -> None:
    """Broken once (the old rule: keep what `choose_reclaims` chooses among the choices for what
    is still needed, withdraw the rest): 4 rows failed, among them "the one due sooner stays"
    (withdrew "one", due 4 min before "two") and "the two due soonest cover it" (withdrew
    "first" and "second" for "big")."""
    got = withdraw_reclaims(chosen, gpus, NOW)
    assert [s.id for s in got] == withdrawn, label


def test_a_borrowed_server_becomes_own_when_its_quota_has_room_oldest_first() -> None:
    servers = [
        borrowed("new", "x", {"a": 1}, HOUR),
        borrowed("old", "x", {"a": 2}, 3 * HOUR),
        borrowed("mid", "x", {"a": 1}, 2 * HOUR),
        borrowed("other-team", "y", {"a": 1}, 9 * HOUR),
    ]
    got = conversions(Share("x", quota=4, own=1, borrowed=4), servers)
    # room for 3: "old" (2) then "mid" (1); "new" no longer fits
    assert [s.id for s in got] == ["old", "mid"]
    assert conversions(Share("x", quota=1, own=1, borrowed=4), servers) == ()


def test_the_offer_names_the_lenders_and_the_terms() -> None:
    catalog = parse_catalog(
        """\
gpu_types:
  h100: {display_name: NVIDIA H100, price_per_hour: 4}
profiles:
  - {display_name: CPU, slug: cpu}
teams:
  nlp: {display_name: Language Models, quota: {gpus: {h100: 4}}}
  vision: {display_name: Computer Vision Labs, quota: {gpus: {h100: 4}}}
  teaching: {quota: {gpus: {h100: 1}, borrow_limit: {h100: 4}}}
borrowing: {reclaim_notice: 15m, min_runtime: 1h}
""",
        "c.yaml",
    )
    one = borrow_offer(catalog, (Loan("nlp", 1),), "h100", 1)
    assert one == (
        "You can borrow 1 NVIDIA H100 from Language Models' idle quota: a borrowed server may "
        'be reclaimed with 15m notice after it has run 1h. To borrow, tick "Borrow idle '
        'quota" on the form (or send the option "borrow": "yes") and start again; or wait '
        "for your team's own."
    )
    two = borrow_offer(catalog, (Loan("nlp", 1), Loan("vision", 2)), "h100", 3)
    assert two.startswith(
        "You can borrow 3 NVIDIA H100 GPUs from Language Models' and Computer Vision Labs' "
        "idle quota:"
    )


def test_a_profile_bigger_than_the_own_quota_is_offered_when_the_team_may_borrow_it() -> None:
    text = """\
gpu_types:
  h100: {display_name: NVIDIA H100, price_per_hour: 4}
profiles:
  - {display_name: One H100, slug: one, gpu: {type: h100, count: 1}}
  - {display_name: Two H100s, slug: two, gpu: {type: h100, count: 2}}
teams:
  teaching: {users: [sam], quota: {gpus: {h100: 1}, borrow_limit: {h100: 2}}}
  nlp: {quota: {gpus: {h100: 4}}}
"""
    sam = Identity("sam")
    with_borrowing = parse_catalog(text + "borrowing: {}\n", "c.yaml")
    assert [p.slug for p in visible_profiles(with_borrowing, sam, "teaching")] == ["one", "two"]
    assert most_gpus(with_borrowing, "teaching", "h100") == 2  # own 1, or borrowed 2: whole
    without = parse_catalog(text.replace(", borrow_limit: {h100: 2}", ""), "c.yaml")
    assert [p.slug for p in visible_profiles(without, sam, "teaching")] == ["one"]


def test_no_borrow_is_offered_when_the_users_cap_would_refuse_it() -> None:
    """Broken once (the offer made before the cap was judged): the refusal offered a borrow that
    the next try refused for the user's cap."""
    catalog = parse_catalog(
        """\
gpu_types:
  h100: {display_name: NVIDIA H100, price_per_hour: 4}
profiles:
  - {display_name: One H100, slug: one, gpu: {type: h100, count: 1}}
teams:
  teaching: {quota: {gpus: {h100: 1}, borrow_limit: {h100: 2}, gpus_per_user: 1}}
  nlp: {quota: {gpus: {h100: 4}}}
borrowing: {}
""",
        "c.yaml",
    )
    shares = {"teaching": Share("teaching", 1, own=1, borrow_limit=2), "nlp": Share("nlp", 4)}

    def ask(holdings: tuple[Holding, ...], borrow: bool) -> Decision:
        usage = TeamUsage("sam", holdings, Decimal(0))
        return decide_with_borrowing(
            catalog, "teaching", usage, gpu_type="h100", gpu_count=1,
            now=NOW, shares=shares, borrow=borrow,
        )  # fmt: skip

    capped = ask((Holding("sam", "h100", 1),), borrow=False)
    assert (capped.reason, capped.may_borrow) == ("user-cap", None)
    offered = ask((Holding("tutor", "h100", 1),), borrow=False)
    assert offered.reason == "gpu-quota" and offered.may_borrow is not None
    taken = ask((Holding("tutor", "h100", 1),), borrow=True)
    assert taken.admitted and taken.loans == (Loan("nlp", 1),)
