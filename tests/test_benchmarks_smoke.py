"""The benchmarks still run: their code paths with tiny sizes, on SQLite only. No timings are
checked here; benchmarks print figures, tests do not assert on them."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from benchmarks import admission
from spawner_ext.catalog import load_catalog
from spawner_ext.ledger.admission import Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger


def test_admission_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = admission.main(
        ["--rows", "200", "--backends", "sqlite", "--decisions", "20", "--explain"]
    )
    assert code == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| sqlite | 200 |")]
    assert [row.split(" | ")[2] for row in rows] == ["shipped"]
    assert "queries of one admission" in err
    assert "EXPLAIN" not in out


def test_decisions_are_a_mix_of_admitted_and_refused(tmp_path: Path) -> None:
    (result,) = admission.run_case("sqlite", 300, 40, None, tmp_path, warmup=0)
    assert sum(result.outcomes.values()) == 40
    assert result.outcomes["admitted"] > 0
    assert set(result.outcomes) - {"admitted", "admitted, warned"}, "some must be refused"


def test_bulk_fill_stores_times_as_the_ledger_does(tmp_path: Path) -> None:
    """The SQLite fill bypasses the ORM; its time strings must sort and compare like the
    ledger's own, or the month's range queries would silently miss rows."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    times = [datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 24, 12, 30, 5, 123, tzinfo=UTC)]
    clock = admission.StepClock(times[0])
    ledger = Ledger.open(url, clock=clock)
    try:
        for now in times:
            clock.now = now
            cpu = Request("ada", "", None, "cpu-small", None, 0, Decimal(0), "USD", "v1")
            ledger.admit(load_catalog(admission.EXAMPLE_CATALOG), cpu)
    finally:
        ledger.engine.dispose()
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as connection:
        stored = [r[0] for r in connection.execute("SELECT requested_at FROM usage_sessions")]
    assert stored == [admission.sqlite_time(t) for t in times]


async def test_monthly_totals_after_the_migration_match_the_history(tmp_path: Path) -> None:
    """The benchmark fills at schema 0002 and migrates; the totals the ledger then reads must be
    what summing the history gives, or the timings would be of a wrong answer."""
    from sqlalchemy import select

    from spawner_ext.ledger.models import UsageSession
    from spawner_ext.ledger.rules import Span, gpu_seconds_between, month_start

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    plans = admission.plan_teams(4)
    upgrade(url, "0002")
    admission.fill_sqlite(
        str(tmp_path / "ledger.sqlite"), admission.history(2000, plans, admission.NOW)
    )
    upgrade(url)
    ledger = Ledger.open(url, clock=lambda: admission.NOW)
    catalog = admission.bench_catalog(plans)
    try:
        expected = {}
        with ledger.engine.connect() as db:
            for plan in plans:
                rows = db.execute(
                    select(
                        UsageSession.user,
                        UsageSession.gpu_type,
                        UsageSession.gpu_count,
                        UsageSession.started_at,
                        UsageSession.ended_at,
                    ).where(UsageSession.team == plan.key)
                )
                seconds = gpu_seconds_between(
                    (Span(*r) for r in rows), month_start(admission.NOW), admission.NOW
                )
                expected[plan.key] = (Decimal(seconds) / 3600).quantize(Decimal("0.001"))
        for plan in plans:
            usage = ledger.team_usage(catalog, plan.key, "nobody")
            assert usage.gpu_hours_this_month == expected[plan.key], plan.key
    finally:
        ledger.engine.dispose()


def test_reports_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import reports

    assert reports.main(["--rows", "2000", "--backends", "sqlite", "--repeat", "1"]) == 0
    out, _ = capsys.readouterr()
    timed = [line for line in out.splitlines() if line.startswith("| sqlite | 2,000 | month")]
    assert len(timed) == 2
    (export,) = [
        line
        for line in out.splitlines()
        if line.startswith("| sqlite | 2,000 | ") and "month" not in line
    ]
    assert int(export.split(" | ")[2].replace(",", "")) > 0, "the export streamed rows"


def test_culling_fleet_simulation_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import culling_fleet

    assert culling_fleet.main(["--sessions", "60"]) == 0
    out = capsys.readouterr().out
    assert "| gpuhub |" in out
    for stock in culling_fleet.STOCK:
        assert f"| {stock.label} |" in out and f"gpuhub / {stock.label}:" in out


def test_a_silent_training_run_survives_gpuhub_but_not_the_stock_rule() -> None:
    """The simulation feeds decide_cull what the extension reports: a busy GPU is kept."""
    import random

    from benchmarks import culling_fleet

    run = culling_fleet.silent_training(random.Random(3), culling_fleet.START)
    assert culling_fleet.run_ours(run)[2] is False, "no busy work lost"
    for stock in culling_fleet.STOCK:
        assert culling_fleet.run_stock(run, stock)[1:] == (True, True), stock.label


def test_stock_culls_as_idle_culler_decides() -> None:
    """The stock rule is jupyterhub-idle-culler's: inactive >= --timeout, or age >= --max-age
    (0: none), looked at only on the multiples of --cull-every since the trace's start."""
    from benchmarks import culling_fleet
    from benchmarks.culling_fleet import START, Session, StockSettings, run_stock

    days = 4 * 24 * 60
    polled = [m % 5 == 0 for m in range(days)]  # an open tab, never idle for an hour
    tab = Session("tab", START, 1, polled, [False] * days, [False] * days, [False] * days)
    assert run_stock(tab, culling_fleet.STOCK_Z2JH) == (days, False, False), "no max age"
    assert run_stock(tab, culling_fleet.STOCK_MATCHED)[:2] == (3 * 24 * 60, True)

    idle = Session("idle", START + culling_fleet.MINUTE * 3, 1, [False] * 200, *[[False] * 200] * 3)
    every_10 = StockSettings("every 10 min", timeout=60, every=10, max_age=0)
    assert run_stock(idle, every_10)[:2] == (67, True), "the first cycle on the clock after 1 h"


def test_sampler_overhead_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import sampler_overhead

    sampler_overhead.CYCLES = 20
    assert sampler_overhead.main([]) == 0
    assert "| 8 |" in capsys.readouterr().out


@pytest.mark.integration
def test_culling_cycle_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import culling_cycle

    assert culling_cycle.main(["--servers", "5", "12"]) == 0
    assert "| 12 |" in capsys.readouterr().out


def test_waitlist_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import waitlist

    assert waitlist.main(["--quick"]) == 0
    out = capsys.readouterr().out
    totals = [line.split(" | ")[4] for line in out.splitlines() if line.startswith("| **all** |")]
    assert totals == ["stock", "wait-list", "wait-list, stock's patience"]
    assert "| sqlite | join, 50 waiting: the transaction (type's lock held) | 10 |" in out
    assert "| sqlite | join, 50 waiting: with its place read after | 10 |" in out
    assert "| sqlite | admit H100, refused (50 waiting) |" in out


def test_the_waitlist_trace_is_seeded_and_contended() -> None:
    """The same seed gives the same trace, and its weekday peaks ask for more GPUs than there
    are (the point of the benchmark), its nights for fewer."""
    from benchmarks import waitlist

    trace = waitlist.make_trace(5, 3)
    assert trace == waitlist.make_trace(5, 3) != waitlist.make_trace(5, 4)
    demand = [0.0] * (5 * 24)
    for want in trace:
        for hour in range(int(want.at // 60), min(int((want.at + want.length) // 60) + 1, 120)):
            demand[hour] += want.gpus
    weekday_peaks = [demand[day * 24 + 15] for day in range(5)]
    nights = [demand[day * 24 + 4] for day in range(5)]
    assert max(weekday_peaks) > waitlist.CAPACITY
    assert min(nights) < waitlist.CAPACITY


def test_borrowing_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import borrowing

    assert borrowing.main(["--days", "2"]) == 0
    out = capsys.readouterr().out
    totals = [line.split(" | ")[2] for line in out.splitlines() if line.startswith("| **all** |")]
    models = ["hard quotas", "borrowing", "Kueue-like"]
    assert totals == models * 2  # people stay in line; people keep stock's patience
    targets = [t for t in out.splitlines() if t.startswith("- ") and ("✓" in t or "✗" in t)]
    assert len([t for t in targets if "within-quota servers reclaimed" in t]) == 4


def test_borrowing_benchmark_runs_with_quotas_that_partition_the_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The second scenario (quotas adding up to the pool), the what-ifs and the timelines.

    Broken once: `--quotas` parsed but not handed to the simulation (the quotas printed were
    6/4/2/2)."""
    from benchmarks import borrowing

    argv = ["--days", "2", "--quotas", "4,2,1,1", "--borrow-limit", "pool", "--what-if"]
    assert borrowing.main([*argv, "--explain"]) == 0
    out = capsys.readouterr().out
    totals = [line.split(" | ")[:3] for line in out.splitlines() if line.startswith("| **all** |")]
    models = ["hard quotas", "borrowing", "Kueue-like", "what-if: line borrows"]
    assert totals == [["| **all**", "8 of 8", m] for m in models] * 2
    assert "quotas nlp 4, vision 2, robotics 1, teaching 1" in out
    assert out.count("No quotas (every team may hold all 8 GPUs") == 2


def test_hard_quotas_in_the_borrowing_benchmark_are_the_waitlist_model() -> None:
    """The borrowing benchmark's own event loop, borrowing off, serves every request of the trace
    when and as `waitlist.run_waitlist` (written separately) does, so the borrowing models differ
    from today's wait-list only by borrowing.

    Broken once: the borrowing loop without its `max_wait` expiry (the outcomes differed)."""
    from benchmarks import borrowing, waitlist
    from spawner_ext.catalog import Borrowing

    settings = load_catalog(waitlist.EXAMPLE_CATALOG).waitlist
    wants = waitlist.make_trace(5, 2)
    hard = borrowing.policies(Borrowing())[0]
    ours = borrowing.simulate(wants, settings, hard, borrowing.activities(wants, 2))
    theirs = waitlist.run_waitlist(wants, settings, 2)
    assert any(o.joined for o in theirs.outcomes), "the trace must make people wait"
    assert {i: (o.started, o.turn, o.abandoned) for i, o in ours.outcomes.items()} == {
        o.want.id: (o.started, o.turn, o.abandoned) for o in theirs.outcomes
    }


def test_the_modelled_gpu_activity_adds_up() -> None:
    """A session's busy minutes (summed over its periods) are what sampling its busy state every
    few seconds finds, and the trace's GPUs are busy about the drawn third of the time.

    Broken once: `busy_minutes` without the last period (the sums fell short)."""
    from benchmarks import borrowing, waitlist

    wants = waitlist.make_trace(3, 5)
    found = borrowing.activities(wants, 5)
    step = 1 / 12
    for want in wants[:40]:
        activity = found[want.id]
        sampled = sum(activity.busy_at((k + 0.5) * step) for k in range(int(want.length / step)))
        assert activity.busy_minutes(want.length) == pytest.approx(sampled * step, abs=1.0)
        assert activity.after(want.length / 2).busy_minutes(want.length / 2) == pytest.approx(
            activity.busy_minutes(want.length) - activity.busy_minutes(want.length / 2)
        )
    busy = sum(found[w.id].busy_minutes(w.length) for w in wants) / sum(w.length for w in wants)
    assert 0.15 < busy < 0.55


def test_estimate_bound_runs_and_its_window_is_counted_exactly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import estimate_bound

    assert estimate_bound.main(["--states", "2", "--draws", "50", "--running", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 1. server to end |" in out and "| 2. server to end |" in out
    # waits 1, 2, 3, 10: the estimate 2 covers 1..4 (three of four); none covers more
    assert estimate_bound.best_within_two([1.0, 2.0, 3.0, 10.0]) == 0.75
    assert estimate_bound.best_within_two([5.0]) == 1.0
