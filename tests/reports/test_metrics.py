"""The service's Prometheus metrics from a real ledger and catalog: the figures, bounded labels
(no user names unless asked), counters that never go down (a session reconciliation closes
earlier than a scrape saw it run, a ledger restored from an older backup), and `promtool check
metrics` (Debian's prometheus package) accepts the exposition."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spawner_ext.catalog.store import CatalogStore
from spawner_ext.clock import utcnow
from spawner_ext.ledger.engine import upgrade
from spawner_ext.service.app import GPUHubService
from spawner_ext.service.metering import reconcile_once
from spawner_ext.service.metrics import exposition, metrics_registry, never_less
from spawner_ext.service.runtimes import LocalRuntime
from tests.ledger.conftest import FakeClock
from tests.reports.conftest import add_session
from tests.sqlite_backup import sqlite_backup

ROOT = Path(__file__).parents[2]


def new_service(tmp_path: Path, clock: FakeClock | None = None) -> GPUHubService:
    """A service on a fresh SQLite ledger (tmp_path/ledger.sqlite) and the example catalog."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    store = CatalogStore(ROOT / "hub_config" / "catalog.yaml")
    return GPUHubService(
        store,
        url,
        hub=None,  # type: ignore[arg-type]
        runtime=LocalRuntime(list),
        clock=clock or utcnow,
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[GPUHubService]:
    made = new_service(tmp_path)
    now = utcnow()
    engine = made.ledger().engine
    add_session(engine, "ada", now - timedelta(hours=1), None, gpus=2, price="8.20")
    add_session(engine, "lin", now - timedelta(minutes=30), None)
    add_session(engine, "grace", now - timedelta(hours=3), now - timedelta(hours=2), team="nlp")
    for _ in range(2):
        made.ledger().count_refusal("vision", "h100-80gb", "gpu-quota", now)
    yield made
    made.ledger().engine.dispose()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_allocations_quotas_usage_and_budgets(service: GPUHubService) -> None:
    found = samples(exposition(metrics_registry(service)).decode())
    vision_h100 = (("gpu_type", "h100-80gb"), ("team", "vision"))
    assert found[("gpuhub_gpus_allocated", vision_h100)] == 3
    assert found[("gpuhub_gpu_quota", vision_h100)] == 8
    nlp = (("gpu_type", "h100-80gb"), ("team", "nlp"))
    assert found[("gpuhub_gpu_seconds_total", nlp)] == 3600
    assert found[("gpuhub_cost_total", (("currency", "USD"), ("team", "nlp")))] == pytest.approx(
        4.1
    )
    # vision's servers run: not billed yet (the counter is at 0, not absent); so far, 2 GPUs for
    # an hour and one for half an hour (within a second of the scrape)
    assert found[("gpuhub_gpu_seconds_total", vision_h100)] == 0
    running = found[("gpuhub_running_gpu_seconds", vision_h100)]
    assert running == pytest.approx(2 * 3600 + 1800, abs=3)
    vision_usd = (("currency", "USD"), ("team", "vision"))
    assert found[("gpuhub_cost_total", vision_usd)] == 0
    assert found[("gpuhub_running_cost", vision_usd)] == pytest.approx(8.2 + 4.1 / 2, abs=0.01)
    assert found[("gpuhub_running_gpu_seconds", nlp)] == 0, "the counters' label sets"
    ratio = found[("gpuhub_budget_used_ratio", (("team", "vision"),))]
    assert ratio == pytest.approx(2.5 / 2000, rel=0.01) or utcnow().day == 1
    assert found[("gpuhub_catalog_reload_ok", ())] == 1
    refused = (*vision_h100[:1], ("reason", "gpu-quota"), vision_h100[1])
    assert found[("gpuhub_admissions_refused_total", refused)] == 2
    assert found[("gpuhub_service_tick_failing", ())] == 0
    assert not any("user" in dict(labels) for _, labels in found), "no user names by default"


def test_user_labels_only_when_asked(service: GPUHubService) -> None:
    found = samples(exposition(metrics_registry(service, user_labels=True)).decode())
    ada = (("gpu_type", "h100-80gb"), ("team", "vision"), ("user", "ada"))
    assert found[("gpuhub_gpus_allocated", ada)] == 2


def test_promtool_accepts_the_exposition(service: GPUHubService) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/bootstrap installs Debian's prometheus package")
    text = exposition(metrics_registry(service))
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_the_grafana_dashboard_queries_only_metrics_that_exist(
    service: GPUHubService, tmp_path: Path
) -> None:
    """Every panel's PromQL parses (`promtool check rules`), names only metrics the service
    exposes, and takes counters (only) through rate() or increase()."""
    import json
    import re

    import yaml

    dashboard = json.loads((ROOT / "dashboards" / "gpuhub-usage.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exposed = {
        s.name
        for f in text_string_to_metric_families(exposition(metrics_registry(service)).decode())
        for s in f.samples
    }
    for expr in exprs:
        for name in re.findall(r"\bgpuhub_[a-z_]+", expr):
            assert name in exposed, f"{name} in {expr!r} is not a metric of the service"
            # a counter's value means nothing on a graph: its rate or increase does
            counted = re.search(rf"\b(rate|increase)\({name}\b", expr)
            assert bool(counted) == name.endswith("_total"), f"{name} in {expr!r}"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel{i}", "expr": e.replace("$team", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool is not None
    checked = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def assert_no_counter_went_down(before: Samples, after: Samples) -> None:
    for (name, labels), value in before.items():
        if name.endswith("_total"):
            assert (name, labels) in after, f"{name}{dict(labels)} vanished"
            assert after[(name, labels)] >= value, f"{name}{dict(labels)} went down"


@pytest.mark.parametrize(
    ("exported", "found", "exports"),
    [
        ({}, {("a",): 1.0}, {("a",): 1.0}),  # first scrape: as found
        ({("a",): 1.0}, {("a",): 3.0}, {("a",): 3.0}),  # up: as found
        ({("a",): 3.0}, {("a",): 1.0}, {("a",): 3.0}),  # down (a restore): held
        ({("a",): 3.0}, {}, {("a",): 3.0}),  # gone from the ledger: held, not dropped
        ({("b",): 1.0}, {("a",): 0.0}, {("a",): 0.0, ("b",): 1.0}),  # sorted by labels
    ],
)
def test_a_counter_exports_never_less_than_before(
    exported: dict[tuple[str, ...], float],
    found: dict[tuple[str, ...], float],
    exports: dict[tuple[str, ...], float],
) -> None:
    assert never_less(exported, found) == exports
    assert list(never_less(exported, found)) == sorted(exports)


def test_a_session_closed_earlier_than_a_scrape_saw_it_run_lowers_no_counter(
    tmp_path: Path,
) -> None:
    """The measured bug: a server killed 10 s after its start ran on in the metrics until the
    hub noticed (31 s); reconciliation then closed its session at its last sighting, and the
    GPU-seconds counter fell from 31 to 10. Now only the running gauge goes down."""
    clock = FakeClock(utcnow().replace(microsecond=0))
    service = new_service(tmp_path, clock)
    registry = metrics_registry(service)
    ledger = service.ledger()
    start = clock.now
    session = add_session(ledger.engine, "ada", start, None)  # vision, 1 H100 at 4.10 an hour
    ledger.seen([session], start + timedelta(seconds=10))  # last seen; then killed
    clock.advance(seconds=31)
    before = samples(exposition(registry).decode())
    vision_h100 = (("gpu_type", "h100-80gb"), ("team", "vision"))
    vision_usd = (("currency", "USD"), ("team", "vision"))
    assert before[("gpuhub_gpu_seconds_total", vision_h100)] == 0
    assert before[("gpuhub_running_gpu_seconds", vision_h100)] == 31
    assert before[("gpuhub_cost_total", vision_usd)] == 0
    assert before[("gpuhub_running_cost", vision_usd)] == pytest.approx(0.035, abs=0.001)

    reconcile_once(ledger, [], observed_at=clock.now, tick=timedelta(seconds=1))
    closed = ledger.session(session)
    assert closed is not None and closed.ended_at == start + timedelta(seconds=10)
    after = samples(exposition(registry).decode())
    assert after[("gpuhub_gpu_seconds_total", vision_h100)] == 10, "the ledger's bill"
    assert after[("gpuhub_cost_total", vision_usd)] == pytest.approx(0.011, abs=0.001)
    assert after[("gpuhub_running_gpu_seconds", vision_h100)] == 0
    assert after[("gpuhub_running_cost", vision_usd)] == 0
    assert after[("gpuhub_reconcile_closed_total", ())] == 0, "the service's own: no tick ran"
    assert_no_counter_went_down(before, after)


def test_a_ledger_restored_from_an_older_backup_lowers_no_counter(tmp_path: Path) -> None:
    """The restore takes a closed session and refusals out of the ledger: this process keeps
    exporting what it exported (a new process would start from the ledger's figures, as after
    any restart), and the counters follow the ledger again once it has billed past them."""
    clock = FakeClock(utcnow().replace(microsecond=0))
    service = new_service(tmp_path, clock)
    registry = metrics_registry(service)
    ledger = service.ledger()
    live, backup = tmp_path / "ledger.sqlite", tmp_path / "backup.sqlite"
    now = clock.now
    add_session(
        ledger.engine, "grace", now - timedelta(hours=3), now - timedelta(hours=2), team="nlp"
    )
    ledger.count_refusal("vision", "h100-80gb", "gpu-quota", now)
    sqlite_backup(live, backup)
    add_session(ledger.engine, "ada", now - timedelta(hours=1), now - timedelta(minutes=30))
    for reason in ("gpu-quota", "gpu-quota", "budget"):
        ledger.count_refusal("vision", "h100-80gb", reason, now)
    before = samples(exposition(registry).decode())
    vision_h100 = (("gpu_type", "h100-80gb"), ("team", "vision"))
    vision_usd = (("currency", "USD"), ("team", "vision"))
    refused = "gpuhub_admissions_refused_total"

    def refusals(reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (refused, (("gpu_type", "h100-80gb"), ("reason", reason), ("team", "vision")))

    assert before[("gpuhub_gpu_seconds_total", vision_h100)] == 1800
    assert before[refusals("gpu-quota")] == 3 and before[refusals("budget")] == 1

    sqlite_backup(backup, live)
    assert [t.team for t in ledger.billed_totals()] == ["nlp"], "the restore took ada's out"
    after = samples(exposition(registry).decode())
    assert_no_counter_went_down(before, after)
    assert after[("gpuhub_gpu_seconds_total", vision_h100)] == 1800
    assert after[("gpuhub_cost_total", vision_usd)] == pytest.approx(2.05)
    assert after[refusals("gpu-quota")] == 3
    assert after[refusals("budget")] == 1, "gone from the ledger, still exported"
    fresh = samples(exposition(metrics_registry(service)).decode())
    assert fresh[("gpuhub_gpu_seconds_total", vision_h100)] == 0, "a new process: the ledger"
    assert (refusals("budget")) not in fresh

    clock.advance(minutes=50)
    add_session(ledger.engine, "lin", now, now + timedelta(minutes=45))
    caught_up = samples(exposition(registry).decode())
    assert_no_counter_went_down(after, caught_up)
    assert caught_up[("gpuhub_gpu_seconds_total", vision_h100)] == 2700, "the ledger's again"


def test_the_waitlist_metrics_count_waiting_turns_and_ends(tmp_path: Path) -> None:
    """Requests waiting per team and type, the time to the turn (the clock moved by a known
    10 minutes), and requests cancelled. Broken once (waits measured to the hold's end instead
    of the turn): 20 minutes, and the 900 s bucket held 0."""
    from datetime import UTC, datetime

    from spawner_ext.end_reason import EndReason
    from spawner_ext.ledger.admission import Request
    from spawner_ext.ledger.store import Ledger
    from spawner_ext.ledger.waitlist import JoinRequest

    clock = FakeClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    service = GPUHubService(
        CatalogStore(ROOT / "hub_config" / "catalog.yaml"),
        url,
        hub=None,  # type: ignore[arg-type]
        runtime=LocalRuntime(list),
        install="local",
        clock=clock,
    )
    catalog = service.store.catalog
    ledger = Ledger.open(url, clock=clock, install="local")
    ledger.set_capacity("h100-80gb", 1)
    first = ledger.admit(
        catalog, Request("n0", "", "nlp", "h100-single", "h100-80gb", 1, 4, "USD", "v")
    )

    def join(user: str) -> str:
        profile = "h100-single"
        return ledger.join(
            catalog,
            JoinRequest(user, "", "vision", profile, "h100-80gb", 1, {"profile": profile}),
        ).id

    ada = join("ada")
    clock.advance(minutes=1)
    join("lin")
    clock.advance(minutes=1)
    bob = join("bob")
    clock.advance(minutes=8)  # ada has waited 10 minutes
    ledger.close(first.session_id, EndReason.STOPPED)
    ledger.serve(catalog)
    ledger.cancel(catalog, bob)
    found = samples(exposition(metrics_registry(service)).decode())
    labels = (("gpu_type", "h100-80gb"), ("team", "vision"))
    assert found["gpuhub_waitlist_waiting", labels] == 1  # lin
    assert found["gpuhub_waitlist_cancelled_total", labels] == 1
    assert found["gpuhub_waitlist_wait_seconds_count", labels] == 1
    assert found["gpuhub_waitlist_wait_seconds_sum", labels] == 600

    def bucket(le: str) -> float:
        return found["gpuhub_waitlist_wait_seconds_bucket", (labels[0], ("le", le), labels[1])]

    assert (bucket("300.0"), bucket("900.0"), bucket("+Inf")) == (0, 1, 1)
    assert ledger.get(catalog, ada).state == "held"  # type: ignore[union-attr]
    ledger.engine.dispose()
    service.ledger().engine.dispose()


def test_utilisation_counters_add_up_busy_and_measured_gpu_seconds(tmp_path: Path) -> None:
    """Two vision H100 sessions (one of 2 GPUs) and an nlp one with GPU use as the ledger keeps
    it: busy GPU-seconds as reported, measured = seconds with a known utilisation x the
    session's GPUs; a MIG session observed without utilisation adds to neither. Worked out by
    hand. broken once: measured not multiplied by the session's GPUs (vision read 4600)."""
    from datetime import date

    from sqlalchemy.orm import Session

    from spawner_ext.ledger.models import UTILIZATION_COLUMNS, SessionGPUUse

    made = new_service(tmp_path)
    engine = made.ledger().engine
    now = utcnow()
    pair = add_session(engine, "ada", now - timedelta(hours=2), now, gpus=2, price="8.20")
    one = add_session(engine, "lin", now - timedelta(hours=1), None)
    nlp = add_session(engine, "grace", now - timedelta(hours=1), now, team="nlp")
    mig = add_session(engine, "eve", now - timedelta(hours=1), now, gpu_type="a100-1g10gb")
    zeros = dict.fromkeys(UTILIZATION_COLUMNS, 0)
    for session, day, known, busy in (
        (pair, date(2026, 11, 30), 1000, 300),  # 2 GPUs: 2000 GPU-s measured
        (pair, date(2026, 12, 1), 1000, 700),
        (one, date(2026, 12, 1), 2600, 0),  # measured and never busy
        (nlp, date(2026, 12, 1), 500, 500),
        (mig, date(2026, 12, 1), 0, 0),  # NVML: no utilisation for a slice
    ):
        with Session(engine) as db, db.begin():
            db.add(
                SessionGPUUse(
                    session_id=session,
                    day=day,
                    reports=1,
                    observed_seconds=known or 3600,
                    busy_seconds=busy,
                    busy_gpu_seconds=busy,
                    utilization_unknown=not known,
                    peak_memory_mib=0,
                    memory_total_mib=0,
                    peak_gpus_in_use=1,
                    **{**zeros, "util_00": known},
                )
            )
    found = samples(exposition(metrics_registry(made)).decode())
    engine.dispose()
    vision = (("gpu_type", "h100-80gb"), ("team", "vision"))
    nlp_h100 = (("gpu_type", "h100-80gb"), ("team", "nlp"))
    mig_labels = (("gpu_type", "a100-1g10gb"), ("team", "vision"))
    assert found[("gpuhub_gpu_busy_seconds_total", vision)] == 300 + 700 + 0
    assert found[("gpuhub_gpu_measured_seconds_total", vision)] == 2 * 1000 + 2 * 1000 + 2600
    assert found[("gpuhub_gpu_busy_seconds_total", nlp_h100)] == 500
    assert found[("gpuhub_gpu_measured_seconds_total", nlp_h100)] == 500
    assert found[("gpuhub_gpu_measured_seconds_total", mig_labels)] == 0
    # a catalog quota's label set is there at 0 before any report (increase() counts from it)
    assert found[("gpuhub_gpu_busy_seconds_total", (("gpu_type", "l4"), ("team", "vision")))] == 0
