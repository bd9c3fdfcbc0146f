"""Borrowing at admission, on SQLite and PostgreSQL: a spawn over its team's own quota is refused
with the offer, or admitted on other teams' unallocated quota when it asks to borrow; what is
recorded (the session marked borrowed, at the borrowed price, and its loans, read back from the
tables with SQL); the limits; and two borrowers racing for the last lendable GPU.

Broken once each (then restored): admission recording no loans (the loans read back were
empty); `Holding.borrowed` ignored by `decide` (the borrower's own spawn after a borrow was
refused for its quota); the GPU type's lock removed from admission (on PostgreSQL both racing
borrowers got the one lendable GPU in 3 of 3 attempts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from sqlalchemy import text

from spawner_ext.catalog import Catalog, parse_catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import AdmissionRefused, Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger
from spawner_ext.ledger.waitlist import JoinRequest
from spawner_ext.policy.borrowing import Loan, Placement
from tests.ledger.conftest import FakeClock
from tests.ledger.conftest import race as race_of

INSTALL = "local"

CATALOG = """\
gpu_types:
  h100:
    display_name: NVIDIA H100
    price_per_hour: 4
profiles:
  - display_name: One H100
    slug: h100-single
    gpu: {type: h100, count: 1}
teams:
  teaching:
    quota:
      gpus: {h100: 1}
      borrow_limit: {h100: 2}
      monthly_gpu_hours: 100
  vision:
    quota:
      gpus: {h100: 2}
      borrow_limit: {h100: 1}
  nlp:
    quota:
      gpus: {h100: 3}
      lend_limit: {h100: 1}
borrowing:
  price_factor: 1.5
"""


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(CATALOG, "catalog.yaml")


@pytest.fixture
def ledger(db_url: str, clock: FakeClock) -> Iterator[Ledger]:
    upgrade(db_url)
    opened = Ledger.open(db_url, clock=clock, install=INSTALL)
    opened.set_capacity("h100", 8)
    yield opened
    opened.engine.dispose()


def spawn(user: str, team: str, *, borrow: bool = False, server: str = "") -> Request:
    return Request(
        user, server, team, "h100-single", "h100", 1, Decimal(4), "USD", "abc", borrow=borrow
    )


def loans_of(ledger: Ledger) -> list[tuple[str, str, int, bool, Decimal]]:
    """(user, lender, GPUs, borrowed, price per hour) of every loan, straight from the tables."""
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT s.user, l.lender, l.gpus, s.borrowed, s.price_per_hour "
                "FROM session_loans l JOIN usage_sessions s ON s.id = l.session_id "
                "ORDER BY s.id, l.lender"
            )
        )
        return [(r[0], r[1], int(r[2]), bool(r[3]), Decimal(r[4])) for r in rows]


def test_over_its_quota_a_spawn_is_offered_a_borrow_and_takes_it_when_asked(
    ledger: Ledger, catalog: Catalog
) -> None:
    tutor = ledger.admit(catalog, spawn("tutor", "teaching"))
    with pytest.raises(AdmissionRefused) as refused:
        ledger.admit(catalog, spawn("student", "teaching"))
    decision = refused.value.decision
    assert decision.reason == "gpu-quota"
    # nlp lends at most 1 (lend_limit), vision 2: the most lendable first
    assert decision.may_borrow == Placement(borrowed=True, loans=(Loan("vision", 1),))
    assert loans_of(ledger) == []  # a refusal records nothing

    ledger.admit(catalog, spawn("student", "teaching", borrow=True))
    assert loans_of(ledger) == [("student", "vision", 1, True, Decimal(6))]  # 4/h x 1.5
    # the team's own quota is judged on its own servers: the borrowed one is not in it
    ledger.close(tutor.session_id, EndReason.STOPPED)
    again = ledger.admit(catalog, spawn("tutor", "teaching", server="again"))
    with ledger.engine.connect() as connection:
        borrowed = connection.execute(
            text("SELECT borrowed FROM usage_sessions WHERE id = :id"), {"id": again.session_id}
        ).scalar_one()
    assert not borrowed


def test_limits_still_hold_on_borrowed_quota(ledger: Ledger, catalog: Catalog) -> None:
    for n in range(3):  # teaching: 1 own + 2 borrowed (its borrow_limit)
        ledger.admit(catalog, spawn(f"s{n}", "teaching", borrow=True))
    with pytest.raises(AdmissionRefused) as refused:
        ledger.admit(catalog, spawn("s3", "teaching", borrow=True))
    assert refused.value.decision.reason == "gpu-quota"
    assert "Borrowing: team 'teaching' may hold 1 on its own quota" in (
        refused.value.decision.message
    )
    assert [(u, lender) for u, lender, *_ in loans_of(ledger)] == [
        ("s1", "vision"),  # vision lends 2, nlp 1 (lend_limit): the most lendable first
        ("s2", "nlp"),  # then 1 each: by key
    ]


def test_a_spent_budget_is_not_cured_by_borrowing(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    first = ledger.admit(catalog, spawn("tutor", "teaching"))
    ledger.mark_started(first.session, "local:1")
    clock.advance(seconds=100 * 3600)
    ledger.close(first.session_id, EndReason.STOPPED)
    with pytest.raises(AdmissionRefused) as refused:
        ledger.admit(catalog, spawn("student", "teaching", borrow=True))
    assert refused.value.decision.reason == "budget"
    assert loans_of(ledger) == []


def test_people_waiting_for_the_type_come_before_a_borrow(ledger: Ledger, catalog: Catalog) -> None:
    ledger.set_capacity("h100", 4)
    for user, team in (("tutor", "teaching"), ("v1", "vision"), ("v2", "vision"), ("n1", "nlp")):
        ledger.admit(catalog, spawn(user, team))
    waiting = ledger.join(
        catalog,
        JoinRequest("n2", "", "nlp", "h100-single", "h100", 1, {"profile": "h100-single"}),
    )
    assert waiting.state == "waiting"
    ledger.set_capacity("h100", 5)  # a GPU frees up; the service has not served the line yet
    with pytest.raises(AdmissionRefused) as refused:
        ledger.admit(catalog, spawn("student", "teaching", borrow=True))
    assert refused.value.decision.reason == "line"
    assert "come before a borrowed server" in refused.value.decision.message
    assert loans_of(ledger) == []


def test_in_line_a_team_waits_for_its_own_quota_whatever_it_borrows(
    ledger: Ledger, catalog: Catalog
) -> None:
    """teaching runs one borrowed server and none of its own: its person in line is served on
    its own quota (1) when a GPU frees. Broken once (the line counting borrowed servers as the
    team's own): the request was skipped for the team's quota and stayed waiting."""
    ledger.set_capacity("h100", 2)
    tutor = ledger.admit(catalog, spawn("tutor", "teaching"))
    ledger.admit(catalog, spawn("s1", "teaching", borrow=True))
    ledger.close(tutor.session_id, EndReason.STOPPED)
    v1 = ledger.admit(catalog, spawn("v1", "vision"))
    joined = ledger.join(
        catalog,
        JoinRequest("t2", "", "teaching", "h100-single", "h100", 1, {"profile": "h100-single"}),
    )
    assert joined.state == "waiting"
    ledger.close(v1.session_id, EndReason.STOPPED)
    ledger.serve(catalog)
    served = ledger.get(catalog, joined.id)
    assert served is not None and served.state == "held"


# --- races: each contender has its own engine (another hub process) -------------------------


def race(db_url: str, clock: FakeClock, jobs: list[Callable[[Ledger], str]]) -> list[str]:
    def refused(exc: Exception) -> str | None:
        if isinstance(exc, AdmissionRefused):
            return exc.decision.reason or "refused"
        return None

    return race_of(db_url, clock, jobs, INSTALL, refused)


@pytest.mark.parametrize("attempt", range(3))
def test_two_borrowers_race_for_the_last_lendable_gpu(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock, attempt: int
) -> None:
    """vision holds its 2, nlp lends at most 1: teaching (own quota full) and vision (at its
    quota) both borrow at once. Exactly one gets nlp's GPU; the cohort never lends more than
    nlp's lend_limit, counted from the loans table."""
    ledger.admit(catalog, spawn("tutor", "teaching"))
    ledger.admit(catalog, spawn("v1", "vision"))
    ledger.admit(catalog, spawn("v2", "vision"))
    # vision's own 2 are held and teaching's 1, so only nlp lends: 1 (its lend_limit)

    def borrow(user: str, team: str) -> Callable[[Ledger], str]:
        return lambda own: str(own.admit(catalog, spawn(user, team, borrow=True)).session_id)

    results = race(db_url, clock, [borrow("s1", "teaching"), borrow("v3", "vision")])
    assert sorted(r.isdigit() for r in results) == [False, True], results
    assert "gpu-quota" in results
    assert [lender for _, lender, *_ in loans_of(ledger)] == ["nlp"]


@pytest.mark.parametrize("attempt", range(3))
def test_a_borrow_races_the_lenders_own_spawn_for_the_last_gpu(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock, attempt: int
) -> None:
    """One GPU is left on the machine: teaching (its own quota full) borrows it from nlp's idle
    quota while an nlp member spawns on nlp's own quota. Exactly one gets it; the machine never
    holds more servers than GPUs (counted from the sessions table). Broken once (no GPU type
    lock in admission, so only each team's own lock): on PostgreSQL both were admitted."""
    ledger.set_capacity("h100", 2)
    ledger.admit(catalog, spawn("tutor", "teaching"))

    def borrow(own: Ledger) -> str:
        return str(own.admit(catalog, spawn("s1", "teaching", borrow=True)).session_id)

    def lender(own: Ledger) -> str:
        return str(own.admit(catalog, spawn("n1", "nlp")).session_id)

    results = race(db_url, clock, [borrow, lender])
    assert sorted(r.isdigit() for r in results) == [False, True], results
    assert [r for r in results if not r.isdigit()] == ["no-free-gpu"]
    with ledger.engine.connect() as connection:
        open_gpus = connection.execute(
            text("SELECT sum(gpu_count) FROM usage_sessions WHERE ended_at IS NULL")
        ).scalar_one()
    assert open_gpus == 2
