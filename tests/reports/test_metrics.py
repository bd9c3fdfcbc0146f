"""The service's Prometheus metrics from a real ledger and catalog: the figures, bounded labels
(no user names unless asked), and `promtool check metrics` (Debian's prometheus package) accepts
the exposition."""

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
from spawner_ext.service.metrics import exposition, metrics_registry
from spawner_ext.service.runtimes import LocalRuntime
from tests.reports.conftest import add_session

ROOT = Path(__file__).parents[2]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[GPUHubService]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    store = CatalogStore(ROOT / "hub_config" / "catalog.yaml")
    made = GPUHubService(store, url, hub=None, runtime=LocalRuntime(list))  # type: ignore[arg-type]
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
    # 2 GPUs for an hour and one for half an hour (within a second of the scrape)
    assert found[("gpuhub_gpu_seconds_total", vision_h100)] == pytest.approx(2 * 3600 + 1800, abs=3)
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
    """Every panel's PromQL parses (`promtool check rules`) and names only metrics the service
    exposes."""
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
