"""The catalog as an admin edits it under a running hub: good edits apply on the next render of
the form without a restart, bad ones are logged and the last good catalog stays in force; and a
team's budget warns, then refuses, through the real hub."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from spawner_ext.ledger.models import UsageSession
from spawner_ext.ledger.store import Ledger

from .conftest import Hub, wait_for
from .test_local_hub import spawn_page

ROOT = Path(__file__).parents[2]
EXAMPLE = (ROOT / "hub_config" / "catalog.yaml").read_text()


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("admin") / "catalog.yaml"
    # Tiny budgets, so a few seconds of GPU time cross them: vision warns at 1 % of 36
    # GPU-seconds; nlp's budget is 3.6 GPU-seconds.
    text = EXAMPLE.replace("monthly_gpu_hours: 2000", "monthly_gpu_hours: 0.01").replace(
        "budget_warning_percent: 80", "budget_warning_percent: 1"
    )
    path.write_text(text.replace("monthly_gpu_hours: 5000", "monthly_gpu_hours: 0.001"))
    return path


@pytest.fixture(scope="module")
def hub(start_hub: Callable[..., Hub], catalog_file: Path) -> Hub:
    return start_hub("2xh100-80gb,1xl4", "--config", str(catalog_file))


@pytest.mark.integration
def test_edits_apply_without_a_restart_and_bad_edits_keep_the_last_good(
    hub: Hub, catalog_file: Path
) -> None:
    html, _ = spawn_page(hub, "ada")
    assert "4.10 USD per hour" in html
    good = catalog_file.read_text().replace("price_per_hour: 4.10", "price_per_hour: 5.25")
    catalog_file.write_text(good)
    assert wait_for("the new price", lambda: "5.25 USD per hour" in spawn_page(hub, "ada")[0], 30)

    catalog_file.write_text(good.replace("price_per_hour: 5.25", "price_per_hour: -1"))
    time.sleep(5)  # more than two reload intervals
    html, form = spawn_page(hub, "ada")
    assert "5.25 USD per hour" in html, "the last good catalog stays in force"
    assert "h100-single" in form.profiles
    assert "price_per_hour: a price cannot be negative" in hub.log()
    catalog_file.write_text(good)


@pytest.mark.integration
def test_budget_warns_then_refuses(hub: Hub) -> None:
    # nlp (grace): 3.6 GPU-seconds a month. Run one H100 for a few seconds.
    hub.start_server("grace", {"profile": "h100-single"})
    time.sleep(5)
    hub.stop_server("grace")
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        with ledger.engine.connect() as db:
            billed = db.execute(
                select(UsageSession.gpu_seconds, UsageSession.end_reason).where(
                    UsageSession.user == "grace"
                )
            ).all()
    finally:
        ledger.engine.dispose()
    assert len(billed) == 1
    assert billed[0][1] == "stopped"
    assert billed[0][0] >= 5, "a stopped server is billed until it stopped"
    refused = hub.spawn("grace", {"profile": "h100-single"})
    assert refused.status_code == 400
    message = refused.json()["message"]
    assert "team 'nlp' has used its monthly budget" in message
    assert "GPU servers can start again when it resets on" in message
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        counted = [(c.team, c.gpu_type, c.reason, c.refusals) for c in ledger.refusal_counts()]
    finally:
        ledger.engine.dispose()
    assert counted == [("nlp", "h100-80gb", "budget", 1)], "the refusal is counted for metrics"
    cpu = hub.start_server("grace", {"profile": "cpu-small"})
    assert cpu["ready"], "CPU servers still start over budget"
    hub.stop_server("grace")

    # vision (ada): warns from 1 % of 36 GPU-seconds.
    hub.start_server("ada", {"profile": "h100-single"})
    time.sleep(2)
    hub.stop_server("ada")
    html, _ = spawn_page(hub, "ada")
    assert "gpuhub-budget-warning" in html
    assert "team &#39;vision&#39; has used" in html
