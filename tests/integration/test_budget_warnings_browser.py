"""The team's budget warning as a running user sees it, with culling off (`gpuhub up
--no-culling`, as where stock jupyterhub-idle-culler culls): in JupyterLab (Debian's Chromium
driven by Playwright) and on the hub's home page, at the warning threshold and at 100 % with the
stop's deadline and the team's leads. lin runs a GPU server charged to vision, whose monthly
budget is 1 GPU-hour here; the hours vision used earlier this month are written into the ledger's
monthly totals, as sessions closed earlier would have left them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.orm import Session

from spawner_ext.clock import utcnow
from spawner_ext.ledger.models import TeamLock, TeamMonthUsage
from spawner_ext.ledger.rules import month_key

from .conftest import Hub, needs_local_hub, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path("/tmp/gpuhub-artifacts")
GRACE = timedelta(hours=2)
"""vision's stop_running_over_budget_after, as in the example catalog."""
LEADS = "ask ada or a member of vision-leads (the leads of Computer Vision Lab)"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("budget-warnings")
    example = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
    text = example.replace("monthly_gpu_hours: 2000", "monthly_gpu_hours: 1").replace(
        "reconcile_interval: 30s", "reconcile_interval: 2s"
    )
    assert text.count("monthly_gpu_hours: 1\n") == 1 and "reconcile_interval: 2s" in text
    catalog = workdir / "catalog.yaml"
    catalog.write_text(text)
    started = Hub(workdir, "1xh100-80gb", "--config", str(catalog), "--no-culling")
    with started.extra_config.open("a") as config:
        config.write('c.Spawner.environment = {"GPUHUB_SAMPLE_SECONDS": "1"}\n')
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def set_earlier_usage(hub: Hub, gpu_seconds: int) -> None:
    """vision's GPU-seconds of sessions closed earlier this month."""
    ledger = hub.ledger()
    try:
        with Session(ledger.engine) as db, db.begin():
            month = month_key(utcnow())
            row = db.get(TeamMonthUsage, ("vision", month))
            if row is None:
                db.add(TeamMonthUsage(team="vision", month=month, gpu_seconds=gpu_seconds))
            else:
                row.gpu_seconds = gpu_seconds
    finally:
        ledger.engine.dispose()


def over_budget_since(hub: Hub) -> datetime | None:
    """When the gpuhub service's tick first saw vision over budget (its own record)."""
    ledger = hub.ledger()
    try:
        with Session(ledger.engine) as db:
            lock = db.get(TeamLock, "vision")
            return lock.over_budget_since if lock is not None else None
    finally:
        ledger.engine.dispose()


def test_running_users_see_the_budget_warning_and_the_stop_deadline_with_culling_off(
    hub: Hub, browser: Any
) -> None:
    set_earlier_usage(hub, 3060)  # 0.85 GPU-hours of vision's 1
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    # With culling off the server still reports to the service (and so hears its answer).
    assert hub.server_env("lin")["GPUHUB_SERVICE_URL"].endswith("/services/gpu-usage/")
    # A member may not read the team's budget API; the notice is all the server is told.
    token = hub.token_for("lin")
    budget_api = f"{hub.url}services/gpu-usage/api/v1/budget?team=vision"
    refused = requests.get(budget_api, headers={"Authorization": f"token {token}"}, timeout=30)
    assert refused.status_code == 403, refused.text

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(120_000)
    page = context.new_page()
    try:
        page.goto(f"{hub.url}hub/login?next=/user/lin/lab")
        page.fill("input[name=username]", "lin")
        page.fill("input[name=password]", hub.password)
        page.keyboard.press("Enter")
        lab = page.locator("#gpuhub-notices .gpuhub-budget-notice[data-level=warning]")
        lab.wait_for()
        threshold = re.compile(r"Team Computer Vision Lab has used 8\d% of its 1 GPU-hour ")
        text = lab.inner_text()
        assert threshold.search(text) and LEADS in text, text
        assert "running ones are stopped 2 h later" in text, text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "budget-warning-lab.png"))

        page.goto(f"{hub.url}hub/home")
        home = page.locator(".gpuhub-budget-notice[data-team=vision][data-level=warning]")
        text = home.inner_text()
        assert threshold.search(text) and LEADS in text, text

        set_earlier_usage(hub, 3600)  # vision's whole GPU-hour
        since = wait_for("the service to see vision over", lambda: over_budget_since(hub), 60)
        deadline = f"will be stopped at {since + GRACE:%Y-%m-%d %H:%M} UTC"
        page.goto(f"{hub.url}user/lin/lab")
        lab = page.locator("#gpuhub-notices .gpuhub-budget-notice[data-level=used-up]")
        lab.wait_for()
        text = lab.inner_text()
        assert "Team Computer Vision Lab has used its 1 GPU-hour for this month" in text, text
        assert deadline in text and LEADS in text, text
        page.screenshot(path=str(ARTIFACTS / "budget-used-up-lab.png"))

        page.goto(f"{hub.url}hub/home")
        home = page.locator(".gpuhub-budget-notice[data-team=vision][data-level=used-up]")
        text = home.inner_text()
        assert deadline in text and LEADS in text, text
        page.screenshot(path=str(ARTIFACTS / "budget-used-up-home.png"), full_page=True)
    finally:
        context.close()
    assert hub.user("lin")["servers"][""]["ready"], "the deadline is 2 h away: still running"
    hub.stop_server("lin")
