"""The usage page in a real browser (Debian's Chromium driven by Playwright): a team lead sees
the chart and the table, changes the grouping and downloads the CSV, whose rows are the API's;
a lead of another team gets 403 for that team; a plain user sees only their own usage; an admin
sees every team and the catalog's last reload error after a bad edit. Screenshots are saved in
$GPUHUB_ARTIFACTS (default /tmp/gpuhub-artifacts)."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .borrowed import add_borrowed_session
from .conftest import Hub, usage_hub, wait_for
from .measured import BUSY_SECONDS, HELD_SECONDS, add_measured_session

ROOT = Path(__file__).parents[2]
ARTIFACTS = Path(os.environ.get("GPUHUB_ARTIFACTS", "/tmp/gpuhub-artifacts"))
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with usage_hub(tmp_path_factory.mktemp("usage-page")) as started:
        yield started


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def open_usage(page: Any, hub: Hub, user: str, query: str = "") -> Any:
    """Log in through the hub's form and open the usage page; the page's response."""
    password = hub.admin_password if user == "admin" else hub.password
    page.goto(f"{hub.url}hub/login?next=/services/gpu-usage/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_selector("#gpuhub-usage")
    response = page.goto(f"{hub.url}services/gpu-usage/{query}") if query else None
    return response


def loaded(page: Any, after: str = "") -> str:
    """Wait until the page's script has drawn everything once more; its stamp."""
    page.wait_for_function(
        "a => document.body.dataset.gpuhubLoaded && document.body.dataset.gpuhubLoaded !== a",
        arg=after,
    )
    stamp: str = page.evaluate("document.body.dataset.gpuhubLoaded")
    return stamp


def table(page: Any, selector: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = page.evaluate(
        """s => {
          const t = document.querySelector(s);
          const names = [...t.tHead.rows[0].cells].map(c => c.textContent.replace(/ /g, "_"));
          return [...t.tBodies[0].rows].filter(r => r.cells.length === names.length)
            .map(r => Object.fromEntries(names.map((n, i) => [n, r.cells[i].textContent])));
        }""",
        selector,
    )
    return found


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"usage-{name}.png"), full_page=True)


def test_a_lead_sees_the_chart_and_table_regroups_and_downloads_the_csv(
    page: Any, hub: Hub
) -> None:
    open_usage(page, hub, "ada")
    stamp = loaded(page)
    assert page.evaluate("Chart.getChart('gpuhub-chart') !== undefined"), (
        page.inner_text("#gpuhub-problem") + page.evaluate("String(window.Chart)")[:200]
    )
    rows = table(page, "#gpuhub-usage-table")
    assert [(r["team"], r["user"]) for r in rows] == [("vision", "ada"), ("vision", "lin")]
    assert "vision" in page.inner_text("#gpuhub-budget") and "2000" in page.inner_text(
        "#gpuhub-budget"
    )
    assert [r["user"] for r in table(page, "#gpuhub-allocations")] == ["lin"]
    shot(page, "lead")
    # group by profile and day instead of user, with the keyboard-reachable controls
    page.uncheck("#gpuhub-by-user")
    page.check("#gpuhub-by-profile")
    page.check("#gpuhub-by-day")
    page.focus("#gpuhub-show")
    page.keyboard.press("Enter")
    loaded(page, stamp)
    rows = table(page, "#gpuhub-usage-table")
    assert rows and all(set(r) >= {"day", "profile"} and "user" not in r for r in rows)
    with page.expect_download() as download:
        page.click("#gpuhub-download-csv")
    text = Path(download.value.path()).read_text()
    downloaded = list(csv.DictReader(io.StringIO(text)))
    shown = [(r["team"], r["day"], r["profile"]) for r in rows]
    assert [(r["team"], r["day"], r["profile"]) for r in downloaded] == shown
    api = page.evaluate(
        "url => fetch(url, {headers: {'X-XSRFToken': gpuhubSettings.xsrf}}).then(r => r.json())",
        page.get_attribute("#gpuhub-download-json", "href"),
    )
    assert [(r["team"], r["day"], r["profile"]) for r in api["rows"]] == shown
    # sortable: the GPU-hours column, descending after two presses
    header = page.locator("#gpuhub-usage-table").get_by_role("button", name="gpu hours", exact=True)
    header.click()
    header.click()
    values = [float(r["gpu_hours"]) for r in table(page, "#gpuhub-usage-table")]
    assert values == sorted(values, reverse=True)
    shot(page, "lead-by-day")


def test_a_lead_of_another_team_gets_403_for_it(page: Any, hub: Hub) -> None:
    response = open_usage(page, hub, "grace", "?team=vision")
    assert response.status == 403
    assert "you may not read the usage of team 'vision'" in page.inner_text("#gpuhub-error")
    shot(page, "other-lead-403")


def test_a_plain_user_sees_only_their_own_usage(page: Any, hub: Hub) -> None:
    open_usage(page, hub, "lin")
    loaded(page)
    shot(page, "member")
    page.goto(f"{hub.url}hub/home")
    assert page.locator('a[href$="/services/gpu-usage/"]').count() >= 1, "in the Services menu"
    page.go_back()
    loaded(page)
    assert page.eval_on_selector_all("#gpuhub-team option", "os => os.map(o => o.textContent)") == [
        "my own usage"
    ]
    assert {r["user"] for r in table(page, "#gpuhub-usage-table")} == {"lin"}


def test_an_admin_sees_every_team_and_the_last_reload_error(page: Any, hub: Hub) -> None:
    catalog = hub.workdir / "catalog.yaml"
    good = catalog.read_text()
    catalog.write_text(good.replace("gpus_per_user: 4", "gpus_per_user: four"))
    try:
        wait_for(
            "the service to notice the bad edit",
            lambda: hub.api("GET", "/services/gpu-usage").ok,  # the hub still answers
            10,
        )
        time.sleep(4)  # the service checks the file every 2 s
        open_usage(page, hub, "admin")
        assert page.locator("#gpuhub-team option").last.inner_text() == "every team"
        page.select_option("#gpuhub-team", "")
        stamp = loaded(page)
        page.click("#gpuhub-show")
        loaded(page, stamp)
        teams = {r["team"] for r in table(page, "#gpuhub-usage-table")}
        assert teams == {"nlp", "vision"}
        error = page.inner_text("#gpuhub-catalog-error")
        assert "catalog.yaml:" in error and "gpus_per_user" in error
        shot(page, "admin-reload-error")
    finally:
        catalog.write_text(good)


def test_the_home_page_shows_a_running_servers_gpus_and_cost_and_links_the_usage_page(
    page: Any, hub: Hub
) -> None:
    open_usage(page, hub, "lin")
    page.goto(f"{hub.url}hub/home")
    row = table(page, "#gpuhub-running")
    assert [(r["Server"], r["GPUs"], r["Team_charged"]) for r in row] == [
        ("default", "1 \N{MULTIPLICATION SIGN} NVIDIA H100 80GB", "Computer Vision Lab")
    ]
    assert row[0]["Cost_so_far"].endswith(" USD"), row
    assert page.locator("#stop").is_visible(), "JupyterHub's own buttons are still there"
    page.screenshot(path=str(ARTIFACTS / "home-running-servers.png"), full_page=True)
    page.get_by_role("link", name="GPU usage", exact=True).first.click()
    page.wait_for_selector("#gpuhub-usage")


def test_a_lead_sees_utilisation_and_a_right_sizing_hint(page: Any, hub: Hub) -> None:
    """ben's measured session last month (tests/integration/measured.py): 200 of 7200 seconds
    busy, at most 6 GiB; the lead picks last month and reads the utilisation and the hint.
    broken once: usage.js without the hints call (the hints table stayed empty)."""
    measured = add_measured_session(hub)
    open_usage(page, hub, "ada")
    stamp = loaded(page)
    page.fill("#gpuhub-since", measured.since.isoformat())
    page.fill("#gpuhub-until", measured.until.isoformat())
    page.click("#gpuhub-show")
    loaded(page, stamp)
    (ben,) = [r for r in table(page, "#gpuhub-usage-table") if r["user"] == "ben"]
    assert ben["utilization"] == f"{100 * BUSY_SECONDS / HELD_SECONDS:.1f} %"
    assert float(ben["measured_gpu_hours"]) == HELD_SECONDS / 3600
    (hint,) = [r for r in table(page, "#gpuhub-hints") if r["user"] == "ben"]
    assert hint["profile"] == "h100-single" and hint["busy_percent"] == "3 %"
    assert "`mig-slice` would have cost 0.30 USD/h instead of 4.10 USD/h" in hint["hint"]
    assert hint["possible_saving"] == f"{(4.10 - 0.30) * HELD_SECONDS / 3600:.2f}"
    page.locator("#gpuhub-hints").scroll_into_view_if_needed()
    shot(page, "lead-utilisation-and-hints")


@pytest.fixture(scope="module")
def borrowed(hub: Hub) -> Any:
    return add_borrowed_session(hub)


def test_leads_see_what_their_teams_borrowed_and_lent(page: Any, hub: Hub, borrowed: Any) -> None:
    """kim (vision) ran one H100 on nlp's quota for 3 h last month, reclaimed
    (tests/integration/borrowed.py): vision's lead reads kim's borrowed and reclaimed hours,
    nlp's lead the hours nlp lent, with no borrower named. broken once: usage.js without the
    borrowing call (the table stayed empty, without even its header)."""
    for user, expected in (
        ("ada", {"team": "vision", "user": "kim", "borrowed_gpu_hours": "3", "reclaims": "1"}),
        ("grace", {"team": "nlp", "user": "(lent)", "lent_gpu_hours": "3", "reclaims": "0"}),
    ):
        open_usage(page, hub, user)
        stamp = loaded(page)
        page.fill("#gpuhub-since", borrowed.since.isoformat())
        page.fill("#gpuhub-until", borrowed.until.isoformat())
        page.click("#gpuhub-show")
        loaded(page, stamp)
        (row,) = table(page, "#gpuhub-borrowing")
        assert {name: row[name] for name in expected} == expected, row
        assert "kim" not in page.inner_text("#gpuhub-borrowing") or user == "ada"
        page.locator("#gpuhub-borrowing").scroll_into_view_if_needed()
        shot(page, f"borrowing-{user}")
        page.context.clear_cookies()
