"""The wait-list's decisions as tables: a line of one GPU type at an injected `now` -> the decayed
usage, the fair order, who is served, who may start directly, and estimated starts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from spawner_ext.policy.waitlist import (
    Line,
    Running,
    TeamStanding,
    Waiting,
    decayed_gpu_hours,
    estimates,
    expected_end,
    fair_order,
    may_start_directly,
    positions,
    turns,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
TYPICAL = 60 * MIN


def req(
    id: str, team: str, waited: int, gpus: int = 1, user: str = "", held: bool = False
) -> Waiting:
    """A request of `team` that joined `waited` minutes before NOW."""
    return Waiting(
        id=id,
        user=user or f"{team}-user",
        server_name="",
        team=team,
        gpu_type="h100",
        gpu_count=gpus,
        joined_at=NOW - waited * MIN,
        held=held,
    )


def team(
    name: str,
    quota: int = 4,
    held: int = 0,
    recent: float = 0.0,
    blocked: str | None = None,
    user_cap: int | None = None,
    user_held: Mapping[str, int] | None = None,
) -> TeamStanding:
    return TeamStanding(name, quota, held, recent, blocked, user_cap, dict(user_held or {}))


def line(
    waiting: Sequence[Waiting],
    teams: Sequence[TeamStanding] = (),
    free: int | None = 4,
    capacity: int | None = None,
) -> Line:
    return Line(
        gpu_type="h100",
        free=free,
        waiting=tuple(waiting),
        teams={t.team: t for t in teams} or {"a": team("a"), "b": team("b")},
        reserve_after=30 * MIN,
        now=NOW,
        capacity=capacity,
    )


# --- decayed GPU-hours ---------------------------------------------------------------------


def numeric(spans: Sequence[tuple[datetime, datetime | None, int]], half_life: float) -> float:
    """The decayed GPU-hours by a midpoint sum over 10-second steps: the truth, measured
    without the closed form."""
    step = 10 / 3600
    total = 0.0
    for started, ended, gpus in spans:
        end = min(ended or NOW, NOW)
        t = (started - NOW) / HOUR  # hours, negative in the past
        stop = (end - NOW) / HOUR
        while t < stop - 1e-12:
            width = min(step, stop - t)
            total += gpus * 2 ** ((t + width / 2) / half_life) * width
            t += width
    return total


@pytest.mark.parametrize(
    ("name", "spans", "half_life"),
    [
        ("one GPU for two hours, ending now", [(NOW - 2 * HOUR, NOW, 1)], 24),
        ("four GPUs, long ago", [(NOW - 8 * HOUR, NOW - 5 * HOUR, 4)], 24),
        ("still running, short half-life", [(NOW - 3 * HOUR, None, 2)], 1),
        ("ends in the future: counted up to now", [(NOW - HOUR, NOW + 5 * HOUR, 1)], 2),
        (
            "several",
            [(NOW - 30 * HOUR, NOW - 20 * HOUR, 1), (NOW - 90 * MIN, None, 8)],
            24,
        ),
    ],
)
def test_decay_is_the_integral(
    name: str, spans: list[tuple[datetime, datetime | None, int]], half_life: float
) -> None:
    got = decayed_gpu_hours(spans, NOW, half_life * HOUR)
    assert got == pytest.approx(numeric(spans, half_life), rel=1e-6), name
    assert got > 0


@pytest.mark.parametrize(
    ("name", "spans"),
    [
        ("no sessions", []),
        ("no GPUs", [(NOW - HOUR, NOW, 0)]),
        ("starts after now", [(NOW + HOUR, None, 1)]),
        ("ended before it started", [(NOW - HOUR, NOW - 2 * HOUR, 1)]),
    ],
)
def test_no_usage_is_zero(name: str, spans: list[tuple[datetime, datetime | None, int]]) -> None:
    assert decayed_gpu_hours(spans, NOW, 24 * HOUR) == 0.0, name


@pytest.mark.parametrize(
    ("half_life", "later"),
    [(24 * HOUR, 0 * HOUR), (24 * HOUR, 5 * HOUR), (HOUR, 30 * MIN), (7 * 24 * HOUR, 3 * HOUR)],
)
def test_a_half_life_later_usage_weighs_half(half_life: timedelta, later: timedelta) -> None:
    spans = [(NOW - 3 * HOUR, NOW, 2)]
    before = decayed_gpu_hours(spans, NOW + later, half_life)
    after = decayed_gpu_hours(spans, NOW + later + half_life, half_life)
    assert after == pytest.approx(before / 2, rel=1e-12)


def test_a_fresh_hour_weighs_about_an_hour_and_forever_weighs_h_over_ln2() -> None:
    assert decayed_gpu_hours([(NOW - HOUR, NOW, 1)], NOW, 24 * HOUR) == pytest.approx(1.0, rel=0.02)
    forever = decayed_gpu_hours([(NOW - 5000 * HOUR, None, 1)], NOW, 24 * HOUR)
    assert forever == pytest.approx(24 / math.log(2), rel=1e-9)
    with pytest.raises(ValueError, match="half_life"):
        decayed_gpu_hours([], NOW, timedelta(0))


# --- fair order ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "waiting", "teams", "order"),
    [
        (
            "lower usage per GPU of quota first, though it joined later",
            [req("a1", "a", 50), req("b1", "b", 5)],
            [team("a", quota=4, recent=8.0), team("b", quota=1, recent=1.0)],
            ["b1", "a1"],
        ),
        (
            "the same usage weighs less on a bigger quota",
            [req("a1", "a", 5), req("b1", "b", 50)],
            [team("a", quota=4, recent=4.0), team("b", quota=1, recent=4.0)],
            ["a1", "b1"],
        ),
        (
            "GPUs held now are charged as a typical session each",
            [req("a1", "a", 50), req("b1", "b", 5)],
            [team("a", quota=1, held=2), team("b", quota=1, recent=1.5)],
            ["b1", "a1"],
        ),
        (
            "first come, first served within a team",
            [req("a2", "a", 20), req("a3", "a", 10), req("a1", "a", 30)],
            [team("a")],
            ["a1", "a2", "a3"],
        ),
        (
            "equals: the earlier request",
            [req("a1", "a", 10), req("b1", "b", 20)],
            [team("a"), team("b")],
            ["b1", "a1"],
        ),
        (
            "equals joined at once: the lower id",
            [req("y", "a", 10), req("x", "b", 10), req("z", "c", 10)],
            [team("a"), team("b"), team("c")],
            ["x", "y", "z"],
        ),
        (
            "a team without quota comes last, whatever its usage",
            [req("z1", "z", 60), req("a1", "a", 5), req("z2", "z", 50)],
            [team("z", quota=0), team("a", quota=1, recent=100.0)],
            ["a1", "z1", "z2"],
        ),
        (
            "a team without a standing counts as one without quota",
            [req("x1", "x", 60), req("a1", "a", 5)],
            [team("a", recent=50.0)],
            ["a1", "x1"],
        ),
        (
            "held requests are not in the order",
            [req("a1", "a", 60, held=True), req("a2", "a", 30), req("b1", "b", 10)],
            [team("a", held=1), team("b", held=1)],
            ["a2", "b1"],
        ),
    ],
)
def test_fair_order(
    name: str, waiting: list[Waiting], teams: list[TeamStanding], order: list[str]
) -> None:
    assert [w.id for w in fair_order(line(waiting, teams))] == order, name


def many(gpus: int = 1) -> list[Waiting]:
    """Four requests of team a (joined 60..57 minutes ago), then four of team b (30..27)."""
    return [req(f"a{i}", "a", 61 - i, gpus) for i in range(1, 5)] + [
        req(f"b{i}", "b", 31 - i) for i in range(1, 5)
    ]


@pytest.mark.parametrize(
    ("name", "waiting", "teams", "order"),
    [
        (
            "equal quotas take turns",
            many(),
            [team("a", quota=2), team("b", quota=2)],
            "a1 b1 a2 b2 a3 b3 a4 b4",
        ),
        (
            "twice the quota, about twice the turns",
            many(),
            [team("a", quota=2), team("b", quota=1)],
            "a1 b1 a2 a3 b2 a4 b3 b4",
        ),
        (
            "two-GPU requests are charged twice",
            many(gpus=2),
            [team("a", quota=2), team("b", quota=2)],
            "a1 b1 b2 a2 b3 b4 a3 a4",
        ),
        (
            "past usage first paid off, then turns",
            many(),
            [team("a", quota=1, recent=2.0), team("b", quota=1)],
            "b1 b2 a1 b3 a2 b4 a3 a4",
        ),
    ],
)
def test_two_teams_interleave(
    name: str, waiting: list[Waiting], teams: list[TeamStanding], order: str
) -> None:
    assert " ".join(w.id for w in fair_order(line(waiting, teams))) == order, name


# --- turns ---------------------------------------------------------------------------------

A, B = team("a"), team("b")


@pytest.mark.parametrize(
    ("name", "the_line", "serve", "skipped", "reserved_for"),
    [
        (
            "served in order while GPUs last",
            line([req("a1", "a", 30), req("b1", "b", 20), req("a2", "a", 10)], free=2),
            ["a1", "b1"],
            {},
            None,
        ),
        (
            "nothing free, the head has not waited long: nothing, no reservation",
            line([req("a1", "a", 10)], free=0),
            [],
            {},
            None,
        ),
        (
            "budget spent: skipped, the next one served",
            line(
                [req("a1", "a", 30), req("b1", "b", 20)],
                [team("a", blocked="budget"), B],
                free=1,
            ),
            ["b1"],
            {"a1": "budget"},
            None,
        ),
        (
            "the team's quota is full",
            line([req("a1", "a", 30), req("b1", "b", 20)], [team("a", quota=2, held=2), B]),
            ["b1"],
            {"a1": "gpu-quota"},
            None,
        ),
        (
            "the team's quota fills as its requests are served",
            line([req("a1", "a", 30), req("a2", "a", 20)], [team("a", quota=2, held=1)]),
            ["a1"],
            {"a2": "gpu-quota"},
            None,
        ),
        (
            "the user's cap is full; another user of the team is served",
            line(
                [req("ann", "a", 30, user="ann"), req("bob", "a", 20, user="bob")],
                [team("a", user_cap=1, user_held={"ann": 1})],
            ),
            ["bob"],
            {"ann": "user-cap"},
            None,
        ),
        (
            "the user's cap fills as the user's requests are served",
            line(
                [req("ann1", "a", 30, user="ann"), req("ann2", "a", 20, user="ann")],
                [team("a", user_cap=1)],
            ),
            ["ann1"],
            {"ann2": "user-cap"},
            None,
        ),
        (
            "backfill: a smaller request passes a large head that has waited < reserve_after",
            line([req("a1", "a", 29, gpus=2), req("b1", "b", 20)], free=1),
            ["b1"],
            {},
            None,
        ),
        (
            "reserved: once the head has waited reserve_after, GPUs are set aside for it",
            line([req("a1", "a", 30, gpus=2), req("b1", "b", 20)], free=1),
            [],
            {},
            "a1",
        ),
        (
            "reserved, and skips after it still recorded",
            line(
                [req("a1", "a", 40, gpus=2), req("b1", "b", 20)],
                [A, team("b", blocked="budget")],
                free=1,
            ),
            [],
            {"b1": "budget"},
            "a1",
        ),
        (
            "a skipped head reserves nothing",
            line(
                [req("a1", "a", 40, gpus=2), req("b1", "b", 20)],
                [team("a", blocked="budget"), B],
                free=1,
            ),
            ["b1"],
            {"a1": "budget"},
            None,
        ),
        (
            "only the first that does not fit may reserve",
            line(
                [req("a1", "a", 10, gpus=2), req("b1", "b", 50, gpus=3), req("c1", "c", 5)],
                [team("a"), team("b", recent=9.0), team("c", recent=20.0)],
                free=1,
            ),
            ["c1"],
            {},
            None,
        ),
        (
            "autoscaled: unlimited free, the quota still applies",
            line(
                [req("a1", "a", 30, gpus=2), req("a2", "a", 20, gpus=2), req("a3", "a", 10)],
                [team("a", quota=4, held=1)],
                free=None,
            ),
            ["a1", "a3"],
            {"a2": "gpu-quota"},
            None,
        ),
        (
            "autoscaled: a large request is served at once",
            line([req("a1", "a", 1, gpus=16)], [team("a", quota=16)], free=None),
            ["a1"],
            {},
            None,
        ),
        (
            "more than the capacity: skipped, never reserves",
            line([req("a1", "a", 60, gpus=8), req("b1", "b", 20)], free=1, capacity=4),
            ["b1"],
            {"a1": "capacity"},
            None,
        ),
        (
            "held requests are not served again",
            line([req("a1", "a", 60, held=True), req("b1", "b", 20)], [team("a", held=1), B]),
            ["b1"],
            {},
            None,
        ),
    ],
)
def test_turns(
    name: str,
    the_line: Line,
    serve: list[str],
    skipped: dict[str, str],
    reserved_for: str | None,
) -> None:
    got = turns(the_line)
    assert ([w.id for w in got.serve], dict(got.skipped), got.reserved_for) == (
        serve,
        skipped,
        reserved_for,
    ), name


@pytest.mark.parametrize(
    ("name", "blocked", "unblocked", "b"),
    [
        ("budget", team("a", blocked="budget"), A, B),
        (
            "quota full",
            team("a", quota=2, held=2),
            team("a", quota=2, recent=2.0),  # the same charge as two held GPUs
            team("b", quota=2, recent=2.0),
        ),
        ("user cap", team("a", user_cap=1, user_held={"a-user": 1}), A, B),
    ],
)
def test_a_skipped_request_keeps_its_place(
    name: str, blocked: TeamStanding, unblocked: TeamStanding, b: TeamStanding
) -> None:
    waiting = [req("a1", "a", 30), req("b1", "b", 20), req("a2", "a", 10), req("b2", "b", 5)]
    free = line(waiting, [unblocked, b])
    stuck = line(waiting, [blocked, b])
    assert positions(stuck) == positions(free) == {"a1": 1, "b1": 2, "a2": 3, "b2": 4}, name
    assert set(turns(stuck).skipped) == {"a1", "a2"}, name
    assert [w.id for w in turns(stuck).serve] == ["b1", "b2"], name
    assert [w.id for w in turns(free).serve] == ["a1", "b1", "a2", "b2"], name


def test_positions_leave_out_held_requests_and_charge_their_gpus() -> None:
    waiting = [req("a1", "a", 30, held=True), req("a2", "a", 20), req("b1", "b", 10)]
    assert positions(line(waiting, [team("a", held=1), B])) == {"b1": 1, "a2": 2}


# --- direct spawns -------------------------------------------------------------------------

CANDIDATE = req("new", "a", 0, user="cat")


@pytest.mark.parametrize(
    ("name", "the_line", "candidate", "allowed"),
    [
        ("empty line, a GPU free", line([], free=1), CANDIDATE, True),
        ("empty line, nothing free", line([], free=0), CANDIDATE, False),
        ("empty line, too few free", line([], free=1), replace(CANDIDATE, gpu_count=2), False),
        ("empty line, autoscaled", line([], free=None), CANDIDATE, True),
        (
            "a request of the team ahead takes the GPU",
            line([req("a1", "a", 5)], free=1),
            CANDIDATE,
            False,
        ),
        (
            "another team's request ahead takes it",
            line([req("b1", "b", 5)], free=1),
            CANDIDATE,
            False,
        ),
        (
            "enough free for the line and the candidate",
            line([req("b1", "b", 5)], free=2),
            CANDIDATE,
            True,
        ),
        (
            "the candidate's team is far below its share: it goes first",
            line([req("b1", "b", 50)], [team("a"), team("b", recent=40.0)], free=1),
            CANDIDATE,
            True,
        ),
        (
            "the candidate joins now, whatever its joined_at says",
            line([req("b1", "b", 5)], free=1),
            replace(CANDIDATE, joined_at=NOW - 10 * HOUR),
            False,
        ),
        (
            "backfill past a large young head",
            line([req("b1", "b", 10, gpus=2)], free=1),
            CANDIDATE,
            True,
        ),
        (
            "no backfill past a head that has waited reserve_after",
            line([req("b1", "b", 45, gpus=2)], free=1),
            CANDIDATE,
            False,
        ),
        (
            "the team's quota is full",
            line([], [team("a", quota=1, held=1)], free=3),
            CANDIDATE,
            False,
        ),
        (
            "the team's budget is spent",
            line([], [team("a", blocked="budget")], free=3),
            CANDIDATE,
            False,
        ),
    ],
)
def test_may_start_directly(name: str, the_line: Line, candidate: Waiting, allowed: bool) -> None:
    assert may_start_directly(the_line, candidate) is allowed, name


# --- estimates -----------------------------------------------------------------------------


def ends(*minutes: int, team: str | None = None) -> list[Running]:
    return [Running(1, NOW + m * MIN, team, None) for m in minutes]


@pytest.mark.parametrize(
    ("name", "the_line", "running", "expected"),
    [
        ("nothing waits", line([], free=0), ends(10), {}),
        (
            "GPUs free now: now",
            line([req("a1", "a", 30), req("b1", "b", 20)], free=2),
            [],
            {"a1": 0, "b1": 0},
        ),
        (
            "one server ends at T: the first at T, the next when that one's typical run ends",
            line([req("a1", "a", 30), req("b1", "b", 20)], free=0),
            ends(30),
            {"a1": 30, "b1": 30 + 60},
        ),
        (
            "a 2-GPU request after two 1-GPU servers end",
            line([req("a1", "a", 30, gpus=2)], free=0),
            ends(45, 20),
            {"a1": 45},
        ),
        (
            "a server past its expected end frees its GPUs now",
            line([req("a1", "a", 30)], free=0),
            ends(-5),
            {"a1": 0},
        ),
        (
            "never servable (more than free plus all running): None, the line goes on",
            line([req("a1", "a", 60, gpus=4), req("b1", "b", 20)], free=1),
            ends(10),
            {"a1": None, "b1": 0},
        ),
        (
            "more than the line's capacity: None",
            line([req("a1", "a", 60, gpus=3)], free=1, capacity=2),
            ends(10, 20, 30),
            {"a1": None},
        ),
        (
            "budget spent: None, and the others go on",
            line(
                [req("a1", "a", 30), req("b1", "b", 20)], [team("a", blocked="budget"), B], free=1
            ),
            [],
            {"a1": None, "b1": 0},
        ),
        (
            "reserved head: served when enough is free, the small one after it",
            line([req("a1", "a", 40, gpus=2), req("b1", "b", 20)], free=1),
            ends(30, 100),
            {"a1": 30, "b1": 30 + 60},
        ),
        (
            "young head: the small one backfills now; the head waits for two GPUs at once",
            line([req("a1", "a", 10, gpus=2), req("b1", "b", 5)], free=1),
            ends(100, 120),
            {"a1": 100, "b1": 0},
        ),
        (
            "quota full: served when the team's own server ends",
            line([req("a1", "a", 30)], [team("a", quota=1, held=1)], free=3),
            ends(50, team="a"),
            {"a1": 50},
        ),
        (
            "quota full and nobody's server ends: None",
            line([req("a1", "a", 30)], [team("a", quota=1, held=1)], free=3),
            ends(50),
            {"a1": None},
        ),
        (
            "autoscaled: now, or when the team's quota frees",
            line(
                [req("a1", "a", 30), req("a2", "a", 20), req("b1", "b", 10)],
                [team("a", quota=2, held=1), B],
                free=None,
            ),
            ends(25, team="a"),
            {"a1": 0, "a2": 25, "b1": 0},
        ),
        (
            "held requests have their GPUs: no estimate",
            line([req("a1", "a", 30, held=True), req("b1", "b", 20)], free=0),
            ends(15),
            {"b1": 15},
        ),
    ],
)
def test_estimates(
    name: str, the_line: Line, running: list[Running], expected: dict[str, int | None]
) -> None:
    got = estimates(the_line, running, TYPICAL)
    assert {
        rid: None if at is None else int((at - NOW) / MIN) for rid, at in got.items()
    } == expected, name
    for w in turns(the_line).serve:
        assert got[w.id] == NOW, f"{name}: served now by turns, estimated now"


# --- expected end --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "started", "max_age", "idle_since", "idle_timeout", "cull_at", "end"),
    [
        ("typical only", -10, None, None, None, None, 50),
        ("max age first", -10, 30 * MIN, None, None, None, 20),
        ("typical before max age", -10, 8 * HOUR, None, None, None, 50),
        ("idle deadline first", -10, None, NOW - 5 * MIN, 15 * MIN, None, 10),
        ("not idle: no idle deadline", -10, None, None, 1 * MIN, None, 50),
        ("no idle timeout: idleness ends nothing", -10, None, NOW - 5 * MIN, None, None, 50),
        ("the culler's announced stop first", -10, None, None, None, NOW + 3 * MIN, 3),
        ("the earliest of all", -10, 40 * MIN, NOW, 20 * MIN, NOW + 25 * MIN, 20),
        ("past every deadline: now", -600, 8 * HOUR, NOW - HOUR, 30 * MIN, None, 0),
    ],
)
def test_expected_end(
    name: str,
    started: int,
    max_age: timedelta | None,
    idle_since: datetime | None,
    idle_timeout: timedelta | None,
    cull_at: datetime | None,
    end: int,
) -> None:
    got = expected_end(
        NOW + started * MIN,
        max_age=max_age,
        idle_since=idle_since,
        idle_timeout=idle_timeout,
        cull_at=cull_at,
        typical=TYPICAL,
        now=NOW,
    )
    assert got == NOW + end * MIN, name


@pytest.mark.parametrize(
    ("age_min", "lengths_min", "expected_in_min"),
    [
        (10, [30, 60, 90], 50),  # all ran longer: median of 20, 50, 80 beyond its age
        (45, [30, 60, 90], 30),  # those that ran past 45 min: 15 and 45 more, median 30
        (100, [30, 60, 90], 0),  # older than every recent session: likely ends now
        (0, [20], 20),  # just started, one sample
    ],
)
def test_expected_end_uses_the_residual_life_at_the_servers_age(
    age_min: int, lengths_min: list[int], expected_in_min: int
) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    end = expected_end(
        now - timedelta(minutes=age_min),
        max_age=None,
        typical=timedelta(hours=5),  # not used once lengths are given
        now=now,
        lengths=[60.0 * m for m in lengths_min],
    )
    assert end == now + timedelta(minutes=expected_in_min)


def test_expected_end_with_lengths_still_honours_max_age_and_a_cull() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    started = now - timedelta(minutes=10)
    lengths = [60.0 * 600]  # sessions run ten hours
    assert expected_end(
        started, max_age=timedelta(minutes=30), typical=HOUR_, now=now, lengths=lengths
    ) == started + timedelta(minutes=30)
    cull = now + timedelta(minutes=5)
    assert (
        expected_end(started, max_age=None, typical=HOUR_, now=now, lengths=lengths, cull_at=cull)
        == cull
    )


HOUR_ = timedelta(hours=1)
