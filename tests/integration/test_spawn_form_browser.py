"""The spawn form in a real browser (Debian's Chromium driven by Playwright), used with the
keyboard only: log in, choose a profile and an image, start, land in JupyterLab; see the
refusal of a bad image on the form itself; see the offer to wait for a GPU another server holds;
see the numbers follow the team to charge; and see a place in line on the home page, which
updates by itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Hub

SCREENSHOT = Path("/tmp/gpuhub-form.png")
TIMEOUT_MS = 180_000

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module")
def hub(start_hub: Any) -> Hub:
    started: Hub = start_hub("1xh100-80gb")
    return started


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def focused(page: Any, selector: str) -> bool:
    result: bool = page.evaluate(
        "s => document.activeElement !== null && document.activeElement.matches(s)", selector
    )
    return result


def tab_to(page: Any, selector: str, limit: int = 80) -> None:
    """Press Tab until the focused element matches `selector`, as a keyboard user would."""
    for _ in range(limit):
        if focused(page, selector):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"{limit} presses of Tab never reached {selector}")


def log_in(page: Any, hub: Hub, user: str) -> None:
    page.goto(f"{hub.url}hub/login")
    tab_to(page, "input[name=username]")
    page.keyboard.type(user)
    tab_to(page, "input[name=password]")
    page.keyboard.type(hub.password)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{hub.url}hub/spawn")


def test_keyboard_only_start_of_a_gpu_server(page: Any, hub: Hub) -> None:
    log_in(page, hub, "ada")
    page.wait_for_selector("#gpuhub-profile-h100-single")
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    tab_to(page, "input[name=profile]")
    assert focused(page, "#profile-item-cpu-small:checked")  # the catalog's default
    for _ in range(4):  # cpu-small, mig-slice, l4-single, a100-single, h100-single
        page.keyboard.press("ArrowDown")
    assert focused(page, "#profile-item-h100-single:checked")
    page.keyboard.press("Tab")
    image = "#profile-option-h100-single--image"
    assert focused(page, image)
    page.keyboard.press("ArrowDown")
    assert page.input_value(image) == "pytorch"
    tab_to(page, "button[type=submit]")
    page.keyboard.press("Enter")

    page.wait_for_url(f"{hub.url}user/ada/lab**", timeout=TIMEOUT_MS)
    page.wait_for_selector("#jp-main-dock-panel", timeout=TIMEOUT_MS)
    server = hub.user("ada")["servers"][""]
    assert server["user_options"] == {
        "profile": "h100-single",
        "team": "vision",
        "image": "pytorch",
    }
    assert server["state"]["gpuhub_devices"] == ["GPU-sim-00000000-h100-80gb"]
    hub.stop_server("ada")


def test_a_bad_image_is_refused_on_the_form(page: Any, hub: Hub) -> None:
    log_in(page, hub, "zed")  # in no team: CPU profiles only
    page.wait_for_selector("#gpuhub-no-team")
    select = "#profile-option-cpu-small--image"
    tab_to(page, select)
    page.keyboard.press("End")  # the last choice: "Other image..."
    assert page.input_value(select) == "--unlisted-choice"
    page.keyboard.press("Tab")
    assert focused(page, "#profile-option-cpu-small--image--unlisted-choice")
    page.keyboard.type("docker.io/evil/miner:latest")
    page.keyboard.press("Enter")

    message = page.wait_for_selector("text=Use an image from quay.io with a tag")
    assert message is not None
    page.screenshot(path=str(SCREENSHOT.with_name("gpuhub-form-refused.png")), full_page=True)
    assert "docker.io/evil/miner:latest" in page.content()
    # The form comes back as the person left it, so they can correct the value.
    assert page.input_value(select) == "--unlisted-choice"
    assert page.input_value(f"{select}--unlisted-choice") == "docker.io/evil/miner:latest"
    assert "SpawnException" not in page.content()
    assert page.url.startswith(f"{hub.url}hub/spawn")
    assert hub.user("zed")["servers"] == {}


def test_a_gpu_another_server_holds_is_refused_on_the_form(page: Any, hub: Hub) -> None:
    hub.start_server("grace", {"profile": "h100-single"})  # the machine's only H100
    log_in(page, hub, "ada")
    page.wait_for_selector("#gpuhub-profile-h100-single")
    offer = page.inner_text("#gpuhub-facts-h100-single .gpuhub-wait-offer")
    assert offer.startswith(
        "No NVIDIA H100 80GB free now: wait for a GPU \N{EM DASH} you would be 1st in line"
    ), offer
    link = page.get_attribute("#gpuhub-facts-h100-single .gpuhub-wait-offer a", "href")
    assert link is not None and link.startswith("/services/gpu-usage/waitlist?server=&options=")
    tab_to(page, "input[name=profile]")
    page.keyboard.press("End")  # the last profile: One H100 80GB
    assert focused(page, "#profile-item-h100-single:checked")
    tab_to(page, "button[type=submit]")
    page.keyboard.press("Enter")

    page.wait_for_selector("text=1 in all, 0 free, held by grace/ (1)")
    assert hub.user("ada")["servers"] == {}
    hub.stop_server("grace")


def test_the_numbers_follow_the_team_to_charge(page: Any, hub: Hub) -> None:
    # Counts, not exact numbers: another hub on this machine may hold simulated GPUs too.
    nlp = re.compile(r"^nlp: \d+ of 16 NVIDIA H100 80GB free; you may hold \d+ more GPUs$", re.M)
    vision = re.compile(
        r"^vision: \d+ of 8 NVIDIA H100 80GB free; you may hold \d+ more GPUs$", re.M
    )
    log_in(page, hub, "lin")  # in nlp and vision; the first team is selected
    facts = "#gpuhub-facts-h100-single"
    page.wait_for_selector(facts)
    shown = page.inner_text(facts)
    assert nlp.search(shown), shown
    assert "vision" not in shown, "only the selected team's numbers show"
    assert "Not offered" not in page.inner_text("#gpuhub-facts-h100-quad")

    tab_to(page, "input[name=team]")
    assert focused(page, "#gpuhub-team-nlp:checked")
    page.keyboard.press("ArrowDown")
    assert focused(page, "#gpuhub-team-vision:checked")
    shown = page.inner_text(facts)
    assert vision.search(shown), shown
    assert "nlp" not in shown
    assert "Not offered to Computer Vision Lab" in page.inner_text("#gpuhub-facts-h100-quad")
    # Local servers ignore the image: the form says so next to the choice.
    note = page.inner_text("#profile-option-h100-single--image--note")
    assert note.startswith("Kubernetes only: local servers use this machine's Python")

    page.keyboard.press("ArrowUp")
    assert focused(page, "#gpuhub-team-nlp:checked")
    assert nlp.search(page.inner_text(facts))


def test_the_home_page_shows_a_place_in_line_and_updates_itself(page: Any, hub: Hub) -> None:
    from spawner_ext.catalog import load_catalog
    from spawner_ext.ledger.store import Ledger
    from spawner_ext.ledger.waitlist import JoinRequest

    catalog = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}", install="local")
    try:
        join = JoinRequest("ada", "", "vision", "h100-single", "h100-80gb", 1, {}, "ask")
        request = ledger.join(catalog, join)
        log_in(page, hub, "ada")
        page.goto(f"{hub.url}hub/home")
        row = page.wait_for_selector(f"#gpuhub-waitlist [data-request='{request.id}']")
        assert row is not None
        # In line, or (nobody before ada and a GPU free for her) already held for her.
        assert re.search(
            r"1st in line for NVIDIA H100 80GB; |your GPU is held until \d\d:\d\d UTC: start",
            row.inner_text(),
        ), row.inner_text()
        assert page.get_attribute("#gpuhub-waitlist-link", "href") == (
            "/services/gpu-usage/waitlist"
        )
        ledger.cancel(catalog, request.id)
        # The page looks again every 15 s and, the list gone, reloads without it.
        page.wait_for_selector("#gpuhub-waitlist", state="detached", timeout=40_000)
    finally:
        ledger.engine.dispose()
