"""The borrowing report on SQLite and PostgreSQL: borrowed sessions admitted through the real
ledger (Request(borrow=True): the ledger chooses the lenders), started and closed at known times
by a fake clock; the GPU-hours each team borrowed, lent and lost to reclaim, against figures
worked out by hand below (every zero checked, not skipped).

Broken once each (then restored): lent hours multiplied by the session's GPUs instead of its
loan's (the split pair lent 2 h to each lender, not 1); reclaims counted on every day a reclaimed
session was billed on (teaching read 1 reclaim on the 24th as well); the user filter letting lent
hours through (s1's own report carried vision's lent row)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, parse_catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger
from spawner_ext.reports.borrowing import borrowing_rows
from spawner_ext.reports.borrowing_query import read_borrowing
from spawner_ext.reports.query import Dimension, Period, ReportError, UsageQuery
from tests.ledger.conftest import FakeClock

CATALOG = """\
gpu_types:
  h100:
    display_name: NVIDIA H100
    price_per_hour: 4
profiles:
  - display_name: One H100
    slug: h100-single
    gpu: {type: h100, count: 1}
  - display_name: Two H100s
    slug: h100-pair
    gpu: {type: h100, count: 2}
teams:
  teaching:
    quota:
      gpus: {h100: 1}
      borrow_limit: {h100: 2}
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
NOVEMBER = Period(date(2026, 11, 1), date(2026, 12, 1))
TEAMS = ("nlp", "teaching", "vision")


def at(day: int, hour: int) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(CATALOG, "catalog.yaml")


@pytest.fixture
def ledger(db_url: str, clock: FakeClock) -> Iterator[Ledger]:
    upgrade(db_url)
    opened = Ledger.open(db_url, clock=clock, install="local")
    opened.set_capacity("h100", 8)
    yield opened
    opened.engine.dispose()


def run(
    ledger: Ledger,
    catalog: Catalog,
    clock: FakeClock,
    user: str,
    team: str,
    start: datetime,
    *,
    borrow: bool = False,
    gpus: int = 1,
) -> int:
    """Admit and start a server at `start` (the clock moves there); its session id."""
    clock.now = start
    profile = "h100-pair" if gpus == 2 else "h100-single"
    admitted = ledger.admit(
        catalog,
        Request(
            user, "", team, profile, "h100", gpus, Decimal(4 * gpus), "USD", "v", borrow=borrow
        ),
    )
    ledger.mark_started(admitted.session, f"local:{user}", at=start)
    return admitted.session_id


@pytest.fixture
def history(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> datetime:
    """The story (UTC, November 2026); the report's now (25th, 06:00).

    - tutor holds teaching's own H100 from the 24th 12:00 (not borrowed: in no figure).
    - s1 (teaching) borrows from vision (the most lendable) at 12:00; reclaimed on the 25th
      at 02:00: 12 h on the 24th, 2 h on the 25th.
    - s2 (teaching) borrows from nlp (vision and nlp lend 1 each now: by key) at 12:00;
      stopped at 15:00: 3 h.
    - v1 and v2 hold vision's own 2 from 15:00; v3 (vision) borrows from nlp at 16:00 and runs
      on: 8 h on the 24th, 6 h on the 25th by 06:00.
    """
    run(ledger, catalog, clock, "tutor", "teaching", at(24, 12))
    s1 = run(ledger, catalog, clock, "s1", "teaching", at(24, 12), borrow=True)
    s2 = run(ledger, catalog, clock, "s2", "teaching", at(24, 12), borrow=True)
    ledger.close(s2, EndReason.STOPPED, at=at(24, 15))
    run(ledger, catalog, clock, "v1", "vision", at(24, 15))
    run(ledger, catalog, clock, "v2", "vision", at(24, 15))
    run(ledger, catalog, clock, "v3", "vision", at(24, 16), borrow=True)
    clock.now = at(25, 2)
    ledger.close(s1, EndReason.RECLAIMED)
    clock.now = at(25, 6)
    return clock.now


def figures(rows: list, by: tuple[Dimension, ...]) -> list[tuple]:  # type: ignore[type-arg]
    """Each row as (its keys..., borrowed h, sessions, lent h, sessions, reclaimed h, reclaims)."""
    found = []
    for row in rows:
        data = row.as_json(by)
        keys = [data["team"], *(data[d.value] for d in by)]
        found.append(
            (
                *keys,
                data["borrowed_gpu_hours"],
                data["borrowed_sessions"],
                data["lent_gpu_hours"],
                data["lent_sessions"],
                data["reclaimed_gpu_hours"],
                data["reclaims"],
            )
        )
    return found


def test_borrowed_lent_and_reclaimed_per_team_and_day(ledger: Ledger, history: datetime) -> None:
    by = (Dimension.DAY,)
    rows = read_borrowing(ledger.engine, UsageQuery(None, NOVEMBER, by), history)
    assert figures(rows, by) == [
        # team, day, borrowed, sessions, lent, sessions, reclaimed, reclaims
        ("nlp", "2026-11-24", 0, 0, 3 + 8, 2, 0, 0),  # s2's 3 h and v3's 8 h on its quota
        ("nlp", "2026-11-25", 0, 0, 6, 1, 0, 0),
        ("teaching", "2026-11-24", 12 + 3, 2, 0, 0, 12, 0),
        ("teaching", "2026-11-25", 2, 1, 0, 0, 2, 1),  # s1 stopped for vision at 02:00
        ("vision", "2026-11-24", 8, 1, 12, 1, 0, 0),
        ("vision", "2026-11-25", 6, 1, 2, 1, 0, 0),
    ]


def test_by_user_lent_hours_name_nobody(ledger: Ledger, history: datetime) -> None:
    by = (Dimension.USER,)
    rows = read_borrowing(ledger.engine, UsageQuery(None, NOVEMBER, by), history)
    assert figures(rows, by) == [
        ("nlp", None, 0, 0, 17, 2, 0, 0),
        ("teaching", "s1", 14, 1, 0, 0, 14, 1),
        ("teaching", "s2", 3, 1, 0, 0, 0, 0),
        ("vision", "v3", 14, 1, 0, 0, 0, 0),
        ("vision", None, 0, 0, 14, 1, 0, 0),
    ]


def test_a_lenders_report_and_a_persons_own(ledger: Ledger, history: datetime) -> None:
    """nlp's lead reads what nlp lent, and none of teaching's or vision's borrowing; s1 reads
    her own borrowed server, and no team's lent hours."""
    by = (Dimension.USER, Dimension.GPU_TYPE)
    nlp = read_borrowing(ledger.engine, UsageQuery(("nlp",), NOVEMBER, by), history)
    assert figures(nlp, by) == [("nlp", None, "h100", 0, 0, 17, 2, 0, 0)]
    own = read_borrowing(ledger.engine, UsageQuery(None, NOVEMBER, by, user="s1"), history)
    assert figures(own, by) == [("teaching", "s1", "h100", 14, 1, 0, 0, 14, 1)]
    # one day: the 25th only (s1's reclaim, v3 until now)
    day = Period(date(2026, 11, 25), date(2026, 11, 26))
    teams = read_borrowing(ledger.engine, UsageQuery(TEAMS, day, ()), history)
    assert figures(teams, ()) == [
        ("nlp", 0, 0, 6, 1, 0, 0),
        ("teaching", 2, 1, 0, 0, 2, 1),
        ("vision", 6, 1, 2, 1, 0, 0),
    ]
    # a period before it all: no rows
    before = Period(date(2026, 11, 1), date(2026, 11, 24))
    assert read_borrowing(ledger.engine, UsageQuery(None, before, ()), history) == []


def test_a_server_borrowed_from_two_lenders_lends_each_its_loans_gpus(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """teaching's own H100 is held and vision holds one of its 2: vision and nlp lend 1 each,
    so a pair borrows one from each. One hour: teaching borrowed 2 GPU-hours, each lender
    lent 1."""
    run(ledger, catalog, clock, "tutor", "teaching", at(24, 10))
    run(ledger, catalog, clock, "v1", "vision", at(24, 10))
    pair = run(ledger, catalog, clock, "p", "teaching", at(24, 10), borrow=True, gpus=2)
    ledger.close(pair, EndReason.STOPPED, at=at(24, 11))
    rows = read_borrowing(ledger.engine, UsageQuery(None, NOVEMBER, ()), at(24, 12))
    assert figures(rows, ()) == [
        ("nlp", 0, 0, 1, 1, 0, 0),
        ("teaching", 2, 1, 0, 0, 0, 0),
        ("vision", 0, 0, 1, 1, 0, 0),
    ]


def test_groupings_borrowing_rows_do_not_have_are_refused() -> None:
    with pytest.raises(ReportError, match="by='profile' is not a grouping of the borrowing"):
        borrowing_rows([], UsageQuery(None, NOVEMBER, (Dimension.PROFILE,)), at(24, 12))


def test_hours_are_exact_decimals(ledger: Ledger, history: datetime) -> None:
    (teaching,) = [
        r for r in read_borrowing(ledger.engine, UsageQuery(("teaching",), NOVEMBER, ()), history)
    ]
    assert teaching.borrowed_gpu_hours == Decimal("17.0000")
    assert teaching.reclaimed_gpu_hours == Decimal("14.0000")


def test_gpuhub_report_borrowing(
    ledger: Ledger,
    history: datetime,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gpuhub report --borrowing` as a lead runs it: teaching's closed borrowed servers (the
    running one's hours would grow with the real clock) as CSV and as a table; a grouping the
    rows do not have exits 2 with the reason."""
    from spawner_ext.cli import main

    config = tmp_path / "catalog.yaml"
    config.write_text(CATALOG)
    base = ["report", "--borrowing", "--db-url", db_url, "--config", str(config)]
    period = ["--since", "2026-11-01", "--until", "2026-12-01", "--team", "teaching"]
    assert main([*base, *period, "--by", "user", "--format", "csv"]) == 0
    found = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [tuple(r.values()) for r in found] == [
        ("teaching", "s1", "14.0", "1", "0.0", "0", "14.0", "1"),
        ("teaching", "s2", "3.0", "1", "0.0", "0", "0.0", "0"),
    ]
    assert list(found[0]) == [
        "team",
        "user",
        "borrowed_gpu_hours",
        "borrowed_sessions",
        "lent_gpu_hours",
        "lent_sessions",
        "reclaimed_gpu_hours",
        "reclaims",
    ]
    assert main([*base, *period]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["teaching", "17.0", "2", "0.0", "0", "14.0", "1"]
    assert main([*base, *period, "--by", "profile"]) == 2
    assert "not a grouping of the borrowing report" in capsys.readouterr().err
