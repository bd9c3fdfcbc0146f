"""Sessions' GPU use through the real activity ledger, on SQLite and PostgreSQL: reports add up
to figures worked out here from the reports' times, per day and per session; a restarted
service goes on from the stored rows; simultaneous reports lose nothing and count no second
twice; the migration builds the table the model describes."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.orm import Session

from spawner_ext.catalog import Catalog
from spawner_ext.ledger.activity import ActivityLedger
from spawner_ext.ledger.engine import make_engine
from spawner_ext.ledger.models import Base, SessionGPUUse
from spawner_ext.ledger.store import Ledger
from spawner_ext.notebook.sampler import Activity, GPUSample
from spawner_ext.policy.activity import ActivityReport
from spawner_ext.policy.gpu_use import BUCKETS, sample_use
from tests.ledger.conftest import FakeClock
from tests.ledger.test_store import request

GAP = timedelta(minutes=5)
THRESHOLD = 5
BUSY = ActivityReport(Activity.BUSY)
GIB = 1 << 30


def running(ledger: Ledger, catalog: Catalog, count: int = 2) -> int:
    admitted = ledger.admit(catalog, request(count=count, price=f"{4.10 * count:.2f}"))
    ledger.mark_started(admitted.session, "local:1")
    return admitted.session_id


def gpus(*pairs: tuple[int, float]) -> list[GPUSample]:
    """(utilisation %, GiB used) per GPU, each an 80 GiB H100 with one process."""
    return [
        GPUSample(f"GPU-{n}", "NVIDIA H100 80GB HBM3", False, u, int(g * GIB), 80 * GIB, 1)
        for n, (u, g) in enumerate(pairs)
    ]


def report(activity: ActivityLedger, at: datetime, samples: list[GPUSample]) -> None:
    use = sample_use(samples, THRESHOLD)
    assert activity.record("ada", "", BUSY, "[]", at, GAP, use=use) is not None


def test_reports_add_up_per_day_and_per_session(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """Two H100s; reports from 23:59:40 to past midnight, one repeated, one after a silence.

    broken once: counting the whole gap (no max_gap) gave 3,620 observed seconds on the
    second day instead of 320."""
    activity = ActivityLedger(ledger)
    session = running(ledger, catalog)
    night = datetime(2026, 11, 24, 23, 59, 40, tzinfo=UTC)
    s = timedelta(seconds=1)
    report(activity, night, gpus((0, 0.5), (0, 0)))  # first: no time
    report(activity, night + 10 * s, gpus((70, 20), (0, 0)))  # 10 s, one busy, in use 1
    report(activity, night + 10 * s, gpus((70, 20), (0, 0)))  # the same again: no time
    report(activity, night + 20 * s, gpus((90, 30), (40, 12)))  # 10 s, both busy
    report(activity, night + 30 * s, gpus((3, 30), (0, 12)))  # 10 s past midnight, idle
    report(activity, night + 3630 * s, gpus((100, 33), (0, 1)))  # an hour later: 300 s

    by_day = activity.gpu_use_by_day([session])[session]
    first, second = date(2026, 11, 24), date(2026, 11, 25)
    assert set(by_day) == {first, second}
    day1, day2 = by_day[first], by_day[second]
    assert (day1.reports, day1.observed_seconds, day1.busy_seconds) == (3, 10, 10)
    assert day1.busy_gpu_seconds == 10
    assert (day2.reports, day2.observed_seconds, day2.busy_seconds) == (3, 10 + 10 + 300, 310)
    assert day2.busy_gpu_seconds == 2 * 10 + 300

    use = activity.gpu_use([session])[session]
    assert use.reports == 6
    assert use.observed_seconds == 330
    assert use.busy_seconds == 320
    assert use.peak_memory_mib == 33 * 1024
    assert use.memory_total_mib == 80 * 1024
    assert use.peak_gpus_in_use == 2
    assert not use.utilization_unknown
    histogram = [0] * BUCKETS
    histogram[14] += 10  # 70 %
    histogram[18] += 10  # 90 % (the busiest of the two)
    histogram[0] += 10  # 3 %
    histogram[19] += 300  # 100 %
    assert list(use.utilization_seconds) == histogram


def test_a_mig_session_and_a_cpu_session(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    activity = ActivityLedger(ledger)
    mig = ledger.admit(
        catalog,
        request(profile="mig-slice", gpu_type="a100-1g10gb", count=1, price="0.30"),
    )
    ledger.mark_started(mig.session, "local:1")
    slice_ = [GPUSample("MIG-1", "1g.10gb", True, None, 3 * GIB, 10 * GIB, 1)]
    report(activity, clock.now, slice_)
    report(activity, clock.advance(seconds=10), slice_)
    use = activity.gpu_use([mig.session_id])[mig.session_id]
    assert use.utilization_unknown and use.observed_seconds == 10 and use.measured_seconds == 0
    assert (use.peak_memory_mib, use.memory_total_mib) == (3072, 10240)

    cpu = ledger.admit(
        catalog, request(server="cpu", profile="cpu-small", gpu_type=None, count=0, price="0")
    )
    ledger.mark_started(cpu.session, "local:2")
    assert activity.record("ada", "cpu", BUSY, "[]", clock.now, GAP, use=None) is not None
    assert activity.gpu_use([cpu.session_id]) == {}, "no GPUs, no row"


def test_a_restarted_service_goes_on_from_the_stored_rows(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """The service restarts between two reports: a new engine, the same database. The first
    report after it counts from the last one before it (at most max_gap), onto the same row."""
    session = running(ledger, catalog)
    before = ActivityLedger(ledger)
    start = clock.now
    report(before, start, gpus((50, 10), (0, 0)))
    report(before, start + timedelta(seconds=10), gpus((50, 10), (0, 0)))
    ledger.engine.dispose()

    again = Ledger.open(db_url, clock=clock)
    try:
        after = ActivityLedger(again)
        report(after, start + timedelta(seconds=100), gpus((50, 70), (0, 0)))
        use = after.gpu_use([session])[session]
    finally:
        again.engine.dispose()
    assert (use.reports, use.observed_seconds, use.busy_seconds) == (3, 100, 100)
    assert use.peak_memory_mib == 70 * 1024


def race(db_url: str, clock: FakeClock, reports: list[tuple[datetime, list[GPUSample]]]) -> None:
    """Each report from a thread and an engine of its own (as from several service replicas),
    all let go at once."""
    barrier = threading.Barrier(len(reports))
    errors: list[BaseException] = []

    def contend(at: datetime, samples: list[GPUSample]) -> None:
        own = Ledger.open(db_url, clock=clock)
        try:
            barrier.wait()
            report(ActivityLedger(own), at, samples)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.engine.dispose()

    threads = [threading.Thread(target=contend, args=pair) for pair in reports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_simultaneous_reports_lose_nothing_and_count_each_second_once(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """After a first report at t, reports at t+1 ... t+N s race. Whatever order they commit
    in, the seconds they count add up to N (each counts from the newest report before it; one
    older than the newest counts none), every report is counted, and the peak is the largest.

    broken once (PostgreSQL): without FOR UPDATE on the server_activity row, seconds were
    counted twice (observed 263 for N = 24). A read-then-write of the GPU-use row instead of
    the upsert passed too: that lock already serialises one server's reports."""
    session = running(ledger, catalog)
    start = clock.now
    report(ActivityLedger(ledger), start, gpus((50, 1), (0, 0)))
    n = 24
    race(
        db_url,
        clock,
        [(start + timedelta(seconds=k), gpus((60, k), (0, 0))) for k in range(1, n + 1)],
    )
    use = ActivityLedger(ledger).gpu_use([session])[session]
    assert use.reports == n + 1
    assert use.observed_seconds == n
    assert use.busy_seconds == n
    assert use.peak_memory_mib == n * 1024


def test_a_servers_first_reports_racing_are_all_counted(
    db_url: str, ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    """A server's first reports arrive at once (as a retry beside the original would): one
    creates the activity row, the others go on from it; none is refused, each adds its
    memory, and none counts time (they are all at the same moment).

    broken once (PostgreSQL): with the row created by a plain INSERT, 7 of 8 reports failed
    with IntegrityError and their memory was lost."""
    session = running(ledger, catalog)
    n = 8
    race(db_url, clock, [(clock.now, gpus((60, k), (0, 0))) for k in range(1, n + 1)])
    use = ActivityLedger(ledger).gpu_use([session])[session]
    assert (use.reports, use.observed_seconds) == (n, 0)
    assert use.peak_memory_mib == n * 1024


def test_the_migration_builds_the_table_the_model_describes(db_url: str, ledger: Ledger) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = [
                d for d in compare_metadata(context, Base.metadata) if "session_gpu_use" in str(d)
            ]
    finally:
        engine.dispose()
    assert differences == []
    with Session(ledger.engine) as db:
        assert db.scalars(select(SessionGPUUse)).all() == []
