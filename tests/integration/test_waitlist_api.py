"""The wait-list API of the gpuhub service under a real hub with two simulated H100s and an L4,
with real JupyterHub tokens, as a script would use it: a join that finds a GPU free is held at
once, the next waits with a place; whatever a spawn refuses is a 400 with the spawn's message;
another user's join is 403 unless an admin's; a second join is 409; reading another's request is
404; a cancel answers the same final object when repeated; a team's line is for its leads; a
held request starts its server through the hub, and a cancel after the start stops it; the page
lists and joins with its login cookie.

One hub for the module (hubs are slow to start): the tests run in order and share its state."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from .conftest import Hub, needs_local_hub, wait_for

ROOT = Path(__file__).parents[2]
API = "services/gpu-usage/api/v1/"
H100 = {"profile": "h100-single"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """lin's server holds one of the two H100s (charged to vision), so one is free; one L4."""
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("waitlist-api")
    catalog = workdir / "catalog.yaml"
    catalog.write_text((ROOT / "hub_config" / "catalog.yaml").read_text())
    started = Hub(workdir, "2xh100-80gb,1xl4", "--config", str(catalog), "--no-culling")
    try:
        started.start()
        started.start_server("lin", {**H100, "team": "vision"})
        wait_for("the hub to record its GPUs", lambda: capacity(started).get("h100-80gb"), 30)
        yield started
    finally:
        started.cleanup()


def capacity(hub: Hub) -> dict[str, tuple[int, int]]:
    from spawner_ext.ledger.store import Ledger

    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}", install="local")
    try:
        return ledger.capacities()
    finally:
        ledger.engine.dispose()


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:
    return {name: hub.token_for(name) for name in ("ada", "grace", "lin", "tutor", "admin")}


def call(
    hub: Hub, token: str, method: str, path: str = "waitlist", body: Any = None
) -> requests.Response:
    return requests.request(
        method,
        f"{hub.url}{API}{path}",
        headers={"Authorization": f"token {token}"},
        json=body,
        timeout=60,
    )


def ok(response: requests.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def refused(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["status"] == status
    assert words in response.json()["message"], response.json()["message"]


def the_one(hub: Hub, token: str, query: str = "") -> dict[str, Any]:
    (request,) = ok(call(hub, token, "GET", "waitlist" + query))["requests"]
    return request


@pytest.mark.integration
def test_a_join_with_a_gpu_free_gets_it_held(hub: Hub, tokens: dict[str, str]) -> None:
    held = ok(call(hub, tokens["ada"], "POST", body={"profile": "h100-single"}), 201)
    assert (held["user"], held["server_name"], held["team"], held["start"]) == (
        "ada",
        "",
        "vision",
        "ask",
    )
    assert (held["state"], held["position"], held["gpu_type"], held["gpu_count"]) == (
        "held",
        None,
        "h100-80gb",
        1,
    )
    assert held["hold_until"] is not None and held["hold_until"].endswith("Z")
    assert held["options"] == {"profile": "h100-single", "team": "vision"}
    assert the_one(hub, tokens["ada"]) == held


@pytest.mark.integration
def test_a_join_with_no_gpu_free_waits_with_its_place(hub: Hub, tokens: dict[str, str]) -> None:
    query = urlencode({"options": json.dumps({**H100, "image": "pytorch"}), "server": ""})
    preview = ok(call(hub, tokens["grace"], "GET", f"waitlist/preview?{query}"))
    assert (preview["position"], preview["team"], preview["gpu_type_name"]) == (
        1,
        "nlp",
        "NVIDIA H100 80GB",
    )
    body = {"options": {"image": "pytorch"}, "profile": "h100-single", "start": "auto"}
    waiting = ok(call(hub, tokens["grace"], "POST", body=body), 201)
    assert (waiting["state"], waiting["position"], waiting["team"]) == ("waiting", 1, "nlp")
    assert waiting["options"] == {"profile": "h100-single", "image": "pytorch", "team": "nlp"}
    assert ok(call(hub, tokens["grace"], "GET", f"waitlist/{waiting['id']}")) == waiting
    assert the_one(hub, tokens["grace"])["id"] == waiting["id"]


@pytest.mark.integration
def test_a_second_join_for_the_same_server_is_409(hub: Hub, tokens: dict[str, str]) -> None:
    again = call(hub, tokens["grace"], "POST", body={"profile": "h100-single"})
    refused(again, 409, "already waiting in line")
    running = call(hub, tokens["lin"], "POST", body={"profile": "h100-single", "team": "nlp"})
    refused(running, 409, "is running or starting")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"profile": "cpu-small"}, "needs no GPU: start it directly"),
        ({}, "needs no GPU"),  # the default profile is a CPU one
        ({"profile": "h100-single"}, "team 'teaching' may not use profile 'h100-single'"),
        ({"profile": "h100-quadruple"}, "unknown profile 'h100-quadruple'"),
        ({"profile": "l4-single", "team": "vision"}, "you are not in team 'vision'"),
        ({"options": {"profile": "l4-single", "image": 3}}, "option 'image' must be text"),
        ({"options": {"profile": "l4-single", "image": "nope"}}, "image"),
        ({"options": "l4-single"}, "'options' must be a JSON object"),
        ({"profile": "l4-single", "options": {"profile": "mig-slice"}}, "options.profile"),
        ({"team": "teaching", "options": {"profile": "l4-single", "team": "x"}}, "options.team"),
        ({"profile": "l4-single", "start": "later"}, "'start' must be 'auto'"),
        ({"profile": "l4-single", "when": "now"}, "unknown field 'when'"),
        ({"profile": "l4-single", "options": {"waitlist": "x"}}, "set by the service"),
        ({"profile": "l4-single", "server_name": "a/b"}, "may not hold '/'"),
    ],
)
def test_what_a_spawn_refuses_is_400_with_its_message(
    hub: Hub, tokens: dict[str, str], body: dict[str, Any], words: str
) -> None:
    refused(call(hub, tokens["tutor"], "POST", body=body), 400, words)


@pytest.mark.integration
def test_a_person_in_two_teams_must_choose_one(hub: Hub, tokens: dict[str, str]) -> None:
    answer = call(hub, tokens["lin"], "POST", body={"profile": "a100-single"})
    refused(answer, 400, "you are in several teams; choose the one to charge")


@pytest.mark.integration
def test_only_an_admin_joins_for_someone_else(hub: Hub, tokens: dict[str, str]) -> None:
    body = {"user": "tutor", "profile": "l4-single"}
    refused(call(hub, tokens["lin"], "POST", body=body), 403, "only for yourself")
    assert ok(call(hub, tokens["tutor"], "GET"))["requests"] == []
    # the admin's token has JupyterHub's `servers` scope; tutor's teams come from the hub
    joined = ok(call(hub, tokens["admin"], "POST", body=body), 201)
    assert (joined["user"], joined["team"], joined["state"], joined["start"]) == (
        "tutor",
        "teaching",
        "held",
        "ask",
    )
    assert the_one(hub, tokens["tutor"])["id"] == joined["id"]
    refused(
        call(hub, tokens["admin"], "POST", body={"user": "nobody-here", "profile": "l4-single"}),
        400,
        "there is no JupyterHub user 'nobody-here'",
    )


@pytest.mark.integration
def test_a_request_is_read_by_its_person_their_leads_and_admins(
    hub: Hub, tokens: dict[str, str]
) -> None:
    grace = the_one(hub, tokens["grace"])  # nlp's, and grace leads nlp
    path = f"waitlist/{grace['id']}"
    refused(call(hub, tokens["ada"], "GET", path), 404, "no wait-list request")  # leads vision
    refused(call(hub, tokens["lin"], "GET", path), 404, "no wait-list request")  # in nlp
    assert ok(call(hub, tokens["admin"], "GET", path))["id"] == grace["id"]
    refused(call(hub, tokens["grace"], "GET", "waitlist/0123456789abcdef"), 404, "no wait-list")
    # a team's line: its leads and admins
    assert the_one(hub, tokens["grace"], "?team=nlp")["id"] == grace["id"]
    assert the_one(hub, tokens["ada"], "?team=vision")["user"] == "ada"
    refused(call(hub, tokens["lin"], "GET", "waitlist?team=nlp"), 403, "you may not read")
    refused(call(hub, tokens["ada"], "GET", "waitlist?team=nlp"), 403, "you may not read")
    every = ok(call(hub, tokens["admin"], "GET", "waitlist?team=nlp"))["requests"]
    assert {r["user"] for r in every} == {"grace"}
    refused(call(hub, tokens["admin"], "GET", "waitlist?team=robotics"), 400, "is not a team")
    refused(call(hub, tokens["admin"], "GET", "waitlist?user=ada"), 400, "unknown parameter")
    # a lead follows a member's request but does not change it
    tutor = the_one(hub, tokens["tutor"])
    refused(call(hub, tokens["grace"], "DELETE", f"waitlist/{tutor['id']}"), 404, "no wait-list")
    anonymous = requests.get(f"{hub.url}{API}waitlist", timeout=30)
    refused(anonymous, 403, "JupyterHub API token")


@pytest.mark.integration
def test_a_cancel_answers_the_final_request_also_when_repeated(
    hub: Hub, tokens: dict[str, str]
) -> None:
    tutor = the_one(hub, tokens["tutor"])
    path = f"waitlist/{tutor['id']}"
    refused(call(hub, tokens["lin"], "DELETE", path), 404, "no wait-list request")
    cancelled = ok(call(hub, tokens["tutor"], "DELETE", path))
    assert (cancelled["state"], cancelled["position"]) == ("cancelled", None)
    assert cancelled["ended_at"] is not None and cancelled["message"]
    assert ok(call(hub, tokens["tutor"], "DELETE", path)) == cancelled
    assert ok(call(hub, tokens["tutor"], "GET", path)) == cancelled
    assert ok(call(hub, tokens["tutor"], "GET"))["requests"] == []
    # ended: it cannot be started
    refused(call(hub, tokens["tutor"], "POST", path + "/start"), 409, "has ended (cancelled)")


@pytest.mark.integration
def test_a_held_request_starts_its_server(hub: Hub, tokens: dict[str, str]) -> None:
    grace = the_one(hub, tokens["grace"])
    waiting = call(hub, tokens["grace"], "POST", f"waitlist/{grace['id']}/start")
    refused(waiting, 400, "it is not this request's turn yet")
    ada = the_one(hub, tokens["ada"])
    assert ada["state"] == "held"
    refused(call(hub, tokens["lin"], "POST", f"waitlist/{ada['id']}/start"), 404, "no wait-list")
    starting = ok(call(hub, tokens["ada"], "POST", f"waitlist/{ada['id']}/start"))
    assert starting["state"] == "starting" and starting["message"] is None, starting
    assert "" in hub.user("ada")["servers"], "asked of the hub by the API (not a later tick)"
    model = wait_for(
        "ada's server to start on her held GPU",
        lambda: (s := hub.user("ada")["servers"].get("")) is not None and s["ready"] and s,
        120,
        0.5,
    )
    assert model["state"]["gpuhub_devices"], "a simulated H100"
    assert {s.user for s in open_sessions(hub)} == {"ada", "lin"}
    again = ok(call(hub, tokens["ada"], "POST", f"waitlist/{ada['id']}/start"))
    assert again["state"] in ("starting", "started"), again
    hub.stop_server("ada")


def open_sessions(hub: Hub) -> list[Any]:
    ledger = hub.ledger()
    try:
        return list(ledger.open_sessions())
    finally:
        ledger.engine.dispose()


@pytest.mark.integration
def test_an_auto_join_with_a_gpu_free_starts_and_a_cancel_stops_it(
    hub: Hub, tokens: dict[str, str]
) -> None:
    grace = the_one(hub, tokens["grace"])
    ok(call(hub, tokens["grace"], "DELETE", f"waitlist/{grace['id']}"))
    # ada's server stopped: one H100 is free, and nobody waits for it
    body = {"profile": "h100-single", "start": "auto"}
    started = ok(call(hub, tokens["grace"], "POST", body=body), 201)
    assert started["state"] == "starting" and started["message"] is None, started
    assert "" in hub.user("grace")["servers"], "asked of the hub by the API (not a later tick)"
    final = ok(call(hub, tokens["grace"], "DELETE", f"waitlist/{started['id']}"))
    if final["state"] == "started":  # the service's tick saw it run first: it is hers to stop
        hub.stop_server("grace")
        return
    assert final["state"] == "cancelled", final
    wait_for("grace's server to stop", lambda: not hub.user("grace")["servers"], 60, 0.5)
    assert "grace" not in {s.user for s in open_sessions(hub)}
    assert ok(call(hub, tokens["grace"], "DELETE", f"waitlist/{started['id']}")) == final


@pytest.mark.integration
def test_the_page_joins_and_lists_with_its_login(hub: Hub, tokens: dict[str, str]) -> None:
    session, _ = hub.login("tutor")
    page = f"{hub.url}services/gpu-usage/waitlist"
    options = json.dumps({"profile": "l4-single", "team": "teaching"})
    html = session.get(f"{page}?{urlencode({'server': '', 'options': options})}", timeout=60)
    assert html.status_code == 200, html.text
    assert 'id="gpuhub-join"' in html.text and "waitlist.js" in html.text
    assert "Ask me first (the GPU is held for me for 10 minutes)" in html.text
    found = re.search(r"window\.gpuhubSettings = (\{.*?\});</script>", html.text)
    assert found, html.text
    settings = json.loads(found.group(1))
    assert settings["join"] == {"server": "", "options": options}
    assert settings["gpu_types"]["l4"] == "NVIDIA L4 24GB"
    # what the page's script does: the API with the login cookie and the XSRF token
    headers = {"X-XSRFToken": settings["xsrf"]}
    body = {"server_name": "", "options": json.loads(options), "start": "ask"}
    joined = session.post(f"{hub.url}{API}waitlist", json=body, headers=headers, timeout=60)
    assert joined.status_code == 201, joined.text
    listed = session.get(f"{hub.url}{API}waitlist", headers=headers, timeout=60)
    assert [r["id"] for r in listed.json()["requests"]] == [joined.json()["id"]]
    forged = session.delete(f"{hub.url}{API}waitlist/{joined.json()['id']}", timeout=60)
    assert forged.status_code == 403, "no cookie login without the XSRF token"
    gone = session.delete(
        f"{hub.url}{API}waitlist/{joined.json()['id']}", headers=headers, timeout=60
    )
    assert gone.status_code == 200 and gone.json()["state"] == "cancelled"
    # a team's line: for its leads
    assert session.get(f"{page}?team=nlp", timeout=60).status_code == 403
    usage = session.get(f"{hub.url}services/gpu-usage/", timeout=60)
    assert usage.status_code == 200 and "usage.js" in usage.text, "the usage page still renders"
    lead, _ = hub.login("grace")
    team = lead.get(f"{page}?team=nlp", timeout=60)
    assert team.status_code == 200 and "Wait-list of Language Models" in team.text


@pytest.mark.integration
def test_the_openapi_description_has_the_waitlist(hub: Hub) -> None:
    paths = requests.get(f"{hub.url}{API}openapi.json", timeout=30).json()["paths"]
    assert {"/waitlist", "/waitlist/preview", "/waitlist/{id}", "/waitlist/{id}/start"} <= set(
        paths
    )
    assert set(paths["/waitlist/{id}"]) == {"get", "delete"}
