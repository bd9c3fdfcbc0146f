"""The wait-list as people use it, in a real browser (Debian's Chromium driven by Playwright)
against a real hub with one simulated H100: a refusal on the spawn form turned into a place in
line; a place that goes down by itself as the person ahead gets their turn; the turn, with a
desktop notification, the server starting and JupyterLab opening; a cancel; a lead reading the
team's line and a member refused it.

grace's server holds the only H100 in each test (started through the REST API), so every
request waits. Each test leaves nothing behind: its requests are cancelled and its servers
stopped at its end, whatever happened, so they run alone or in any order. Screenshots are saved
in $GPUHUB_ARTIFACTS (default /tmp/gpuhub-artifacts).

Broken on purpose once each in waitlist.js, to see the tests fail: with the page's polling
stopped (its `setInterval(refresh, ...)` removed) the place stayed "2nd in line"; with `notify()`
returning at once no notification was recorded; with the Cancel button's action a no-op the
request stayed in the list; with Cancel offered on a team's line too, the lead saw a button.
Found here and fixed: the page notified only if one of its looks fell while the request was
held or starting, so a server started between two looks (a background tab's slowed timers, a
dropped connection) gave no notification (the test of it failed without the fix); and a failed
look left its warning on the page after the next look succeeded."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from playwright.sync_api import Expect

from .conftest import Hub, Person, needs_local_hub, wait_for, waitlist_catalog

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(os.environ.get("GPUHUB_ARTIFACTS", "/tmp/gpuhub-artifacts"))
TICK = 2  # seconds between the service's ticks (turns, places) in this catalog
HOLD = 45  # seconds a GPU is held for an "ask me first" request
TIMEOUT_MS = 60_000  # one wait in the browser: a few ticks and polls, or a server's start
LAB_TIMEOUT_MS = 180_000  # JupyterLab's first load on a busy machine
H100 = "NVIDIA H100 80GB"
USERS = ("ada", "grace", "lin")

expect = Expect()  # this module's own: its assertions wait as long as its other waits
expect.set_options(timeout=TIMEOUT_MS)

# Records every desktop notification the page shows (title and body) in window.__notifications,
# and still shows it.
RECORD_NOTIFICATIONS = """
(() => {
  window.__notifications = [];
  const Real = window.Notification;
  if (!Real) return;
  function Recorded(title, options) {
    window.__notifications.push({ title, body: (options || {}).body || "" });
    return new Real(title, options);
  }
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  Recorded.requestPermission = (...args) => Real.requestPermission(...args);
  Recorded.prototype = Real.prototype;
  window.Notification = Recorded;
})();
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("waitlist-browser")
    catalog = waitlist_catalog(workdir, TICK, HOLD)
    started = Hub(workdir, "1xh100-80gb", "--config", str(catalog), "--no-culling")
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Pages in browser contexts of their own (one per person); `notifications=True` grants
    the permission and records what the page shows. All are closed at the test's end."""
    contexts: list[Any] = []

    def make(notifications: bool = False) -> Any:
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        if notifications:
            context.grant_permissions(["notifications"])
            context.add_init_script(RECORD_NOTIFICATIONS)
        return context.new_page()

    try:
        yield make
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def people(hub: Hub) -> Iterator[dict[str, Person]]:
    """ada, grace and lin with API tokens of their own; after the test, every request of theirs
    still live is cancelled and every server of theirs stopped."""
    found = {name: Person(hub, name) for name in USERS}
    try:
        yield found
    finally:
        tidy(hub, found)


def tidy(hub: Hub, people: dict[str, Person]) -> None:
    # Cancel first: a GPU freed while someone still waits would be given to them.
    for person in people.values():
        for request in person.call("GET").json()["requests"]:
            assert person.call("DELETE", f"/{request['id']}").status_code == 200
    for name in USERS:
        for server in list(hub.user(name)["servers"]):
            hub.stop_server(name, server)
    for person in people.values():
        assert person.call("GET").json()["requests"] == []


def join_link(options: dict[str, str], server: str = "") -> str:
    """The wait-list page with a spawn's options to join, as a refusal's offer links to it."""
    query = urlencode({"server": server, "options": json.dumps(options)})
    return f"/services/gpu-usage/waitlist?{query}"


def log_in(page: Any, hub: Hub, user: str, next_path: str) -> None:
    page.goto(f"{hub.url}hub/login?next={quote(next_path, safe='')}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", hub.password)
    page.keyboard.press("Enter")


def open_waitlist(page: Any, hub: Hub, user: str, path: str) -> None:
    """Log in and open a wait-list page (`path`: its URL's path and query)."""
    log_in(page, hub, user, path)
    page.wait_for_selector("#gpuhub-waitlist")
    expect(page.locator("#gpuhub-updated")).to_contain_text("Last update:")


def join(page: Any, start: str) -> str:
    """On a join box that has read where the person would stand: choose how to start at the
    turn, press Join; the new request's id."""
    page.check(f"#gpuhub-start-{start}")
    page.click("#gpuhub-join-button")
    expect(page.locator("#gpuhub-join")).to_be_hidden()
    row = page.locator("#gpuhub-requests [data-request]")
    expect(row).to_have_count(1)
    uid: str | None = row.get_attribute("data-request")
    assert uid is not None
    return uid


def place(page: Any, uid: str) -> Any:
    """The line of a request that says where it stands."""
    return page.locator(f"#gpuhub-requests [data-request='{uid}'] .gpuhub-place")


def in_line(n: str) -> re.Pattern[str]:
    return re.compile(rf"^{n} in line for {H100}; (about \d+ minutes?|about a minute|no estimate)")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"waitlist-{name}.png"), full_page=True)


def test_a_refusal_on_the_form_becomes_a_place_in_line(
    hub: Hub, people: dict[str, Person], new_page: Callable[..., Any]
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})  # the machine's only H100
    page = new_page()
    log_in(page, hub, "ada", "/hub/spawn")
    page.wait_for_url(f"{hub.url}hub/spawn")
    page.check("#profile-item-h100-single")
    page.click("form button[type=submit]")

    refusal = page.locator(".spawn-error-msg")
    expect(refusal).to_contain_text("1 in all, 0 free, held by grace/ (1)")
    expect(refusal).to_contain_text(
        "You can wait for a GPU instead of trying again: you would be 1st in line"
    )
    assert hub.user("ada")["servers"] == {}
    page.locator("#gpuhub-facts-h100-single .gpuhub-wait-offer").get_by_role(
        "link", name="wait for a GPU"
    ).click()

    page.wait_for_url(re.compile(r"/services/gpu-usage/waitlist\?server=&options="))
    what = page.locator("#gpuhub-join-what")
    expect(what).to_contain_text("One H100 80GB for your server, charged to team vision.")
    expect(what).to_contain_text(f"If you join now you will be 1st in line for {H100}; ")
    # the catalog's hold of 45 s, in the page's words
    expect(page.locator("label[for=gpuhub-start-ask]")).to_have_text(
        "Ask me first (the GPU is held for me for 1 minute)"
    )
    uid = join(page, "auto")
    expect(place(page, uid)).to_have_text(in_line("1st"))
    shot(page, "joined")
    # The address no longer offers to join again; the API says what the page shows.
    assert page.url.endswith("/services/gpu-usage/waitlist")
    request = people["ada"].request(uid)
    assert (request["state"], request["position"], request["start"]) == ("waiting", 1, "auto")
    assert request["profile"] == "h100-single" and request["team"] == "vision"


def test_the_place_goes_down_by_itself_when_the_person_ahead_gets_their_turn(
    hub: Hub, people: dict[str, Person], new_page: Callable[..., Any]
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})
    ahead = people["ada"].join({"profile": "h100-single"}, "ask")
    assert ahead["position"] == 1

    page = new_page()
    open_waitlist(page, hub, "lin", join_link({"profile": "h100-single", "team": "vision"}))
    expect(page.locator("#gpuhub-join-what")).to_contain_text(
        f"If you join now you will be 2nd in line for {H100}; "
    )
    uid = join(page, "ask")
    expect(place(page, uid)).to_have_text(in_line("2nd"))
    page.evaluate("window.__sameDocument = true")

    hub.stop_server("grace")  # ada's turn: the GPU is held for her
    wait_for("ada's turn", lambda: people["ada"].request(ahead["id"])["state"] == "held", 30, 0.5)
    expect(place(page, uid)).to_have_text(in_line("1st"))
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    shot(page, "moved-up")
    assert people["lin"].request(uid)["position"] == 1


def test_the_turn_notifies_starts_the_server_and_opens_jupyterlab(
    hub: Hub, people: dict[str, Person], new_page: Callable[..., Any]
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})
    freed = hub.user("grace")["servers"][""]["state"]["gpuhub_devices"]
    page = new_page(notifications=True)
    open_waitlist(page, hub, "ada", join_link({"profile": "h100-single"}))
    page.click("#gpuhub-notify")
    expect(page.locator("#gpuhub-notify-state")).to_have_text(
        "You will be notified on this device when it is your turn."
    )
    uid = join(page, "auto")
    expect(place(page, uid)).to_have_text(in_line("1st"))
    assert page.evaluate("window.__notifications") == []

    hub.stop_server("grace")
    page.wait_for_function("window.__notifications.length > 0")
    (note,) = page.evaluate("window.__notifications")
    assert note["title"] == f"Your {H100} is ready", note
    assert note["body"] in ("Your server is starting.", "Your server started."), note
    started = page.locator(f"#gpuhub-ended [data-request='{uid}']")
    expect(started).to_have_attribute("data-state", "started", timeout=LAB_TIMEOUT_MS)
    expect(started.locator(".gpuhub-place")).to_have_text(f"Your server started with {H100}.")
    expect(page.locator("#gpuhub-requests")).to_have_text("You are not waiting for a GPU.")
    shot(page, "started")
    assert people["ada"].request(uid)["state"] == "started"
    assert hub.user("ada")["servers"][""]["state"]["gpuhub_devices"] == freed

    started.get_by_role("link", name="Open your server").click()
    page.wait_for_url(f"{hub.url}user/ada/lab**", timeout=LAB_TIMEOUT_MS)
    page.wait_for_selector("#jp-main-dock-panel", timeout=LAB_TIMEOUT_MS)
    shot(page, "lab")


def test_a_turn_that_falls_between_two_looks_of_the_page_still_notifies(
    hub: Hub, people: dict[str, Person], new_page: Callable[..., Any]
) -> None:
    """The page cannot read the line while the turn comes and the server starts (as a
    background tab whose timers the browser slows, or a network that drops): when it reads
    again, the request it last saw waiting has started, and it notifies all the same."""
    hub.start_server("grace", {"profile": "h100-single"})
    page = new_page(notifications=True)
    open_waitlist(page, hub, "ada", join_link({"profile": "h100-single"}))
    uid = join(page, "auto")
    expect(place(page, uid)).to_have_text(in_line("1st"))

    the_line = re.compile(r"/services/gpu-usage/api/v1/waitlist$")
    page.route(the_line, lambda route: route.abort())
    problem = page.locator("#gpuhub-problem")
    expect(problem).to_contain_text("Could not read the wait-list (")
    expect(problem).to_contain_text("trying again every 5 seconds.")
    hub.stop_server("grace")
    wait_for("ada's server", lambda: people["ada"].request(uid)["state"] == "started", 120, 0.5)
    assert page.evaluate("window.__notifications") == []
    page.unroute(the_line)

    page.wait_for_function("window.__notifications.length > 0")
    assert page.evaluate("window.__notifications") == [
        {"title": f"Your {H100} is ready", "body": "Your server started."}
    ]
    expect(problem).to_be_hidden()
    ended = page.locator(f"#gpuhub-ended [data-request='{uid}']")
    expect(ended).to_have_attribute("data-state", "started")
    expect(ended.get_by_role("link", name="Open your server")).to_have_attribute(
        "href", "/user/ada/"
    )


def test_a_request_cancelled_on_the_page_leaves_the_line(
    hub: Hub, people: dict[str, Person], new_page: Callable[..., Any]
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})
    page = new_page()
    open_waitlist(page, hub, "ada", join_link({"profile": "h100-single"}))
    uid = join(page, "ask")
    expect(place(page, uid)).to_have_text(in_line("1st"))

    page.locator(f"#gpuhub-requests [data-request='{uid}']").get_by_role(
        "button", name="Cancel"
    ).click()
    expect(page.locator(f"#gpuhub-requests [data-request='{uid}']")).to_have_count(0)
    expect(page.locator("#gpuhub-requests")).to_have_text("You are not waiting for a GPU.")
    ended = page.locator(f"#gpuhub-ended [data-request='{uid}']")
    expect(ended).to_have_attribute("data-state", "cancelled")
    expect(ended.get_by_role("button", name="Cancel")).to_have_count(0)
    shot(page, "cancelled")
    assert people["ada"].request(uid)["state"] == "cancelled"
    assert people["ada"].call("GET").json()["requests"] == []
    assert hub.user("ada")["servers"] == {}


def test_a_lead_sees_the_teams_line_and_a_member_is_refused_it(
    hub: Hub, people: dict[str, Person], new_page: Callable[..., Any]
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})
    lins = people["lin"].join({"profile": "h100-single", "team": "vision"}, "ask")

    lead = new_page()
    open_waitlist(lead, hub, "ada", "/services/gpu-usage/waitlist?team=vision")
    expect(lead.locator("h1")).to_have_text("Wait-list of Computer Vision Lab")
    row = lead.locator(f"#gpuhub-requests [data-request='{lins['id']}']")
    expect(row.locator(".gpuhub-place")).to_have_text(in_line("1st"))
    expect(row).to_contain_text("lin: One H100 80GB for lin's server (team vision)")
    expect(row.locator("button")).to_have_count(0)  # a lead reads the line, and changes nothing
    shot(lead, "lead")

    member = new_page()
    log_in(member, hub, "lin", "/hub/home")
    member.wait_for_url(f"{hub.url}hub/home")
    response = member.goto(f"{hub.url}services/gpu-usage/waitlist?team=vision")
    assert response is not None and response.status == 403
    expect(member.locator("#gpuhub-error")).to_contain_text(
        "you may not read the wait-list of team 'vision'"
    )
    # What lin sees instead is her own line, which has her request in it.
    expect(member.locator("#gpuhub-requests [data-request]")).to_have_count(1)
    expect(member.locator("h1")).to_have_text("Waiting for a GPU")
