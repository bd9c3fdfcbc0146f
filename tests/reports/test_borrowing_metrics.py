"""The borrowing metrics from a real ledger on SQLite and PostgreSQL: a pair borrowed from two
lenders and reclaimed, and a single GPU borrowed and running, admitted with Request(borrow=True)
at known times; the gauges and counters against figures worked out by hand (every zero checked).

Broken once (then restored): the lent GPU-seconds not divided by the session's GPUs (the
session's GPU-seconds times the loan's GPUs: each lender of the pair read 10,800, not 5,400)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spawner_ext.catalog import Catalog, parse_catalog
from spawner_ext.catalog.store import CatalogStore
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.engine import upgrade
from spawner_ext.service.app import GPUHubService
from spawner_ext.service.metrics import exposition, metrics_registry
from spawner_ext.service.runtimes import LocalRuntime
from tests.ledger.conftest import FakeClock
from tests.reports.test_borrowing_report import CATALOG, at, run


@pytest.fixture
def service(db_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[GPUHubService]:
    upgrade(db_url)
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    made = GPUHubService(
        CatalogStore(tmp_path / "catalog.yaml"),
        db_url,
        hub=None,  # type: ignore[arg-type]
        runtime=LocalRuntime(list),
        install="local",
        clock=clock,
    )
    yield made
    made.ledger().engine.dispose()


def test_borrowed_and_lent_gpus_now_gpu_seconds_and_reclaims(
    service: GPUHubService, clock: FakeClock
) -> None:
    """24 Nov: tutor holds teaching's own H100 and v1 one of vision's 2, so vision and nlp lend
    1 each. p (teaching) borrows a pair at 10:00 (one from each), reclaimed at 11:30: 5,400 s x
    2 GPUs borrowed, 5,400 GPU-s lent by each. s1 (teaching) borrows one at 12:00 (nlp, by
    key) and runs at the scrape (13:00)."""
    catalog: Catalog = parse_catalog(CATALOG, "catalog.yaml")
    ledger = service.ledger()
    ledger.set_capacity("h100", 8)
    run(ledger, catalog, clock, "tutor", "teaching", at(24, 10))
    run(ledger, catalog, clock, "v1", "vision", at(24, 10))
    pair = run(ledger, catalog, clock, "p", "teaching", at(24, 10), borrow=True, gpus=2)
    clock.now = at(24, 11).replace(minute=30)
    ledger.close(pair, EndReason.RECLAIMED)
    run(ledger, catalog, clock, "s1", "teaching", at(24, 12), borrow=True)
    clock.now = at(24, 13)
    text = exposition(metrics_registry(service)).decode()
    found = {
        (s.name, s.labels["team"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("gpuhub_gpus_borrowed", "gpuhub_gpus_lent"))
        or "borrowed_gpu_seconds" in s.name
        or "lent_gpu_seconds" in s.name
        or s.name.startswith("gpuhub_reclaims")
        if s.labels.get("gpu_type") == "h100"
    }
    teams = ("nlp", "teaching", "vision")

    def of(name: str) -> tuple[float, ...]:
        return tuple(found[(name, team)] for team in teams)

    #                                               nlp   teaching  vision
    assert of("gpuhub_gpus_borrowed") == (0, 1, 0)
    assert of("gpuhub_gpus_lent") == (1, 0, 0)
    assert of("gpuhub_borrowed_gpu_seconds_total") == (0, 2 * 5400, 0)
    assert of("gpuhub_lent_gpu_seconds_total") == (5400, 0, 5400)
    assert of("gpuhub_reclaims_total") == (0, 1, 0)
