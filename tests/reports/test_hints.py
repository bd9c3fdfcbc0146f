"""Right-sizing hints per team, user and profile, on the example catalog: the suggestion for the
group's merged use, only among the profiles the team may start, and the period's possible saving
worked out by hand here (each session's own price, only the measured sessions' hours); then the
same read from a real ledger (SQLite and PostgreSQL), a session cut at the period's edge."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.ledger.models import UTILIZATION_COLUMNS, SessionGPUUse
from spawner_ext.ledger.store import Ledger
from spawner_ext.policy.gpu_use import GPUUse
from spawner_ext.reports.hint_query import read_hints
from spawner_ext.reports.hints import HeldSession, HintRow, hint_rows, memory_mib
from spawner_ext.reports.query import Period, UsageQuery
from tests.reports.conftest import add_session

ROOT = Path(__file__).parents[2]
GIB = 1024


@pytest.fixture(scope="module")
def example() -> Catalog:
    return load_catalog(ROOT / "hub_config" / "catalog.yaml")


def used(observed: int, busy: int, peak_gib: float, total_gib: int = 80) -> GPUUse:
    """`observed` seconds with the utilisation known, `busy` of them busy (bucket 19, the rest
    in bucket 0), at most `peak_gib` GiB in use on a GPU of `total_gib`."""
    histogram = [0] * 20
    histogram[0], histogram[19] = observed - busy, busy
    return GPUUse(
        reports=observed // 10,
        observed_seconds=observed,
        busy_seconds=busy,
        busy_gpu_seconds=busy,
        utilization_seconds=tuple(histogram),
        peak_memory_mib=int(peak_gib * GIB),
        memory_total_mib=total_gib * GIB,
        peak_gpus_in_use=1,
    )


def held(
    id: int,
    user: str,
    seconds: int,
    *,
    team: str = "vision",
    profile: str = "h100-single",
    gpu_type: str = "h100-80gb",
    price: str = "4.10",
) -> HeldSession:
    return HeldSession(id, team, user, profile, gpu_type, 1, Decimal(price), "USD", seconds)


def suggested(row: HintRow) -> tuple[str | None, Decimal]:
    return (row.suggestion.profile if row.suggestion else None, row.possible_saving)


def test_memory_per_gpu_type_comes_from_the_catalog(example: Catalog) -> None:
    assert memory_mib(example) == {
        "h100-80gb": 80 * GIB,
        "a100-40gb": 40 * GIB,
        "a100-1g10gb": 10 * GIB,
        "l4": 24 * GIB,
    }


def test_hints_per_user_and_profile_with_the_periods_possible_saving(example: Catalog) -> None:
    """broken once: the saving taken over every session of the group (unmeasured ones too):
    ada's read 14.50."""
    sessions = [
        held(1, "ada", 7200),  # 2 h at 4.10, measured: peak 6 GB, busy 3 %
        held(2, "ada", 3600, price="5.00"),  # 1 h at 5.00 (a price change), peak 10 GB
        held(3, "ada", 3600),  # 1 h, never reported
        held(4, "bob", 3600),  # busy all the time, peak 30 GB
        held(5, "lin", 600, profile="a100-single", gpu_type="a100-40gb", price="1.80"),
        held(6, "grace", 3600, team="nlp"),  # light, 6 GB; nlp may start H100s and A100s only
    ]
    uses = {
        1: used(7200, 216, 6),
        2: used(3600, 108, 10),
        4: used(3600, 3600, 30),
        5: used(600, 0, 1, total_gib=40),
        6: used(3600, 0, 6),
    }
    rows = hint_rows(sessions, uses, example)
    found = [
        (r.team, r.user, r.profile, r.sessions, r.measured_sessions, r.gpu_hours, *suggested(r))
        for r in rows
    ]
    # ada: 10 GB peak needs 12.5 GB (a MIG slice's 10 GB is too little): l4-single at 0.70;
    # saved (4.10 - 0.70) x 2 h + (5.00 - 0.70) x 1 h, the unmeasured hour not at all
    ada_saving = Decimal("3.40") * 2 + Decimal("4.30") * 1
    # grace: the cheapest her team may start with 7.5 GB: a100-single at 1.80, for an hour
    grace_saving = Decimal("4.10") - Decimal("1.80")
    assert found == [
        ("nlp", "grace", "h100-single", 1, 1, Decimal(1), "a100-single", grace_saving),
        ("vision", "ada", "h100-single", 3, 2, Decimal(4), "l4-single", ada_saving),
        ("vision", "bob", "h100-single", 1, 1, Decimal(1), None, Decimal(0)),
        ("vision", "lin", "a100-single", 1, 1, Decimal("0.1667"), None, Decimal(0)),
    ]
    words = {r.user: r.hint for r in rows}
    assert words["ada"] == (
        "used at most 10 GB of 80 GB and was busy 3 % of the time: `l4-single` would have cost "
        "0.70 USD/h instead of 4.10 USD/h"
    )
    assert words["bob"] == "no cheaper profile the team may start would have done"
    assert words["lin"] == "too little observed to judge: 10 of at least 30 minutes"
    ada = next(r for r in rows if r.user == "ada").as_json()
    assert (ada["possible_saving"], ada["price_per_hour"], ada["busy_percent"]) == (11.1, 4.1, 3)


def test_a_group_never_reported_is_not_measured_and_saves_nothing(example: Catalog) -> None:
    [row] = hint_rows([held(1, "ada", 3600)], {}, example)
    assert (row.suggestion, row.possible_saving, row.measured_sessions) == (None, Decimal(0), 0)
    assert row.hint == "not measured: no report from the notebook extension"
    assert row.as_json()["busy_percent"] is None and row.as_json()["peak_memory_mib"] is None


NOVEMBER = Period(date(2026, 11, 1), date(2026, 12, 1))


def test_hints_from_the_ledger_count_only_the_periods_part_of_a_session(ledger: Ledger) -> None:
    """A session from 22:00 on 30 Nov to 02:00 on 1 Dec: November's report saves 2 hours' worth;
    its GPU use counts whole (the rule judges a session by all of it)."""
    engine = ledger.engine
    start, end = datetime(2026, 11, 30, 22, tzinfo=UTC), datetime(2026, 12, 1, 2, tzinfo=UTC)
    session = add_session(engine, "ada", start, end)
    add_session(engine, "lin", start, end)  # never reported
    add_session(engine, "ada", start, end, profile="cpu-small", gpu_type=None, gpus=0, price="0")
    buckets = dict.fromkeys(UTILIZATION_COLUMNS, 0)
    with Session(engine) as db, db.begin():
        for day, seconds in ((date(2026, 11, 30), 7000), (date(2026, 12, 1), 7000)):
            db.add(
                SessionGPUUse(
                    session_id=session,
                    day=day,
                    reports=700,
                    observed_seconds=seconds,
                    busy_seconds=0,
                    busy_gpu_seconds=0,
                    utilization_unknown=False,
                    peak_memory_mib=6 * GIB,
                    memory_total_mib=80 * GIB,
                    peak_gpus_in_use=1,
                    **{**buckets, "util_00": seconds},
                )
            )
    catalog = load_catalog(ROOT / "hub_config" / "catalog.yaml")
    now = datetime(2026, 12, 2, tzinfo=UTC)
    rows = read_hints(ledger, catalog, UsageQuery(("vision",), NOVEMBER, ()), now)
    found = [(r.user, r.profile, r.gpu_hours, r.possible_saving) for r in rows]
    # 6 GB needs 7.5 GB: a MIG slice (10 GB) at 0.30 for a light session; 2 h x 3.80
    assert found == [
        ("ada", "h100-single", Decimal(2), Decimal("7.60")),
        ("lin", "h100-single", Decimal(2), Decimal(0)),
    ]
    assert rows[0].use.observed_seconds == 14000
