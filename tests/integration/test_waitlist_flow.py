"""The wait-list end to end in local mode, with a real hub, the gpuhub service and real servers
on two simulated H100s: a refusal that offers the line, a turn that starts the person's server
on the GPU that freed, a held GPU nobody else gets and that goes on when not used, a cancel while
starting, and SIGKILLs of the service and the hub while turns are given and servers started.

What is checked is measured apart from the wait-list's own records: which simulated device each
server process holds (its environment, read from /proc by the ProcessWatcher), the hub's own
list of servers, and the ledger's sessions."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.faultdriver import ProcessWatcher, service_pid, service_ticked_since

from .conftest import Hub, Person, devices_of, needs_local_hub, stop_all, wait_for, waitlist_catalog

TICK = 2  # seconds between the service's ticks (reconciliation, turns) in this catalog
HOLD = 45  # seconds a GPU is held (longer than a killed service takes to come back)
H100 = ["GPU-sim-00000000-h100-80gb", "GPU-sim-00000001-h100-80gb"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("waitlist")
    catalog = waitlist_catalog(workdir, TICK, HOLD)
    started = Hub(workdir, "2xh100-80gb", "--config", str(catalog), "--no-culling")
    config = started.extra_config
    config.write_text(config.read_text() + "\nc.JupyterHub.allow_named_servers = True\n")
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def wait_state(person: Person, uid: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        f"request {uid} to be {states}",
        lambda: (r := person.request(uid)) and r["state"] in states and r,
        timeout,
        0.5,
    )


def gpus_in_use(watcher: ProcessWatcher) -> list[str]:
    """The simulated devices of the live server processes, as /proc shows their environment."""
    return sorted(d for devices in watcher.devices().values() for d in devices)


@pytest.mark.integration
def test_a_refusal_offers_the_line_and_the_turn_starts_the_server_on_the_freed_gpu(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    hub.start_server("ada", {"profile": "h100-single"})
    hub.start_server("grace", {"profile": "h100-single"})
    refused = hub.spawn("lin", {"profile": "h100-single", "team": "vision"})
    assert refused.status_code == 400
    message = refused.json()["message"]
    assert "2 in all, 0 free, held by ada/ (1), grace/ (1)" in message
    assert "You can wait for a GPU instead of trying again: you would be 1st in line" in message
    assert "/services/gpu-usage/waitlist?server=&options=" in message

    lin = Person(hub, "lin")
    joined = lin.join({"profile": "h100-single", "team": "vision"}, "auto")
    assert (joined["state"], joined["position"]) == ("waiting", 1)
    freed = devices_of(hub, "ada")
    hub.stop_server("ada")
    wait_for(
        "lin's server to start from the line",
        lambda: (s := hub.user("lin")["servers"].get("")) is not None and s["ready"],
        90,
        0.5,
    )
    assert devices_of(hub, "lin") == freed
    started = wait_state(lin, joined["id"], {"started"})
    assert started["position"] is None
    assert gpus_in_use(watcher) == sorted(H100)  # grace's and lin's: no third holder
    ledger = hub.ledger()
    try:
        (session,) = [s for s in ledger.open_sessions() if s.user == "lin"]
        request = ledger.get(hub_catalog(hub), joined["id"])
        assert request is not None and request.session == session.uid
    finally:
        ledger.engine.dispose()
    stop_all(hub)


def hub_catalog(hub: Hub) -> Any:
    from spawner_ext.catalog import load_catalog

    return load_catalog(hub.workdir / "catalog.yaml")


@pytest.mark.integration
def test_a_held_gpu_goes_to_nobody_else_and_then_to_the_next_person(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    ada = Person(hub, "ada")
    asked = ada.join({"profile": "h100-single"}, "ask")
    hub.stop_server("lin")
    held = wait_state(ada, asked["id"], {"held"}, 30)
    # Nobody else takes it: grace's second server is refused, naming the hold.
    refused = hub.spawn("grace", {"profile": "h100-single"}, "second")
    assert refused.status_code == 400, refused.text
    assert "set aside for people in line: ada/ (1)" in refused.json()["message"]
    assert gpus_in_use(watcher) == [devices_of(hub, "grace")[0]]
    # Not started within the hold: it ends, and the GPU is anyone's again.
    hold_until = datetime.fromisoformat(held["hold_until"].replace("Z", "+00:00"))
    assert 0 < (hold_until - datetime.now(UTC)).total_seconds() <= HOLD
    expired = wait_state(ada, asked["id"], {"expired"}, HOLD + 10 * TICK)
    assert "went to the next person" in expired["message"]
    hub.start_server("grace", {"profile": "h100-single"}, "second")
    assert len(gpus_in_use(watcher)) == 2
    stop_all(hub)


@pytest.mark.integration
def test_a_cancel_while_starting_leaves_no_server_and_no_bill(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    hub.start_server("grace", {"profile": "h100-single"})
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    ada = Person(hub, "ada")
    joined = ada.join({"profile": "h100-single"}, "auto")
    hub.stop_server("lin")
    wait_state(ada, joined["id"], {"starting", "started"}, 30)
    cancelled = ada.call("DELETE", f"/{joined['id']}")
    assert cancelled.status_code == 200, cancelled.text
    final = cancelled.json()
    if final["state"] == "started":
        pytest.skip("the server was ready before the cancel: it is the person's to stop now")
    assert final["state"] == "cancelled"
    again = ada.call("DELETE", f"/{joined['id']}")
    assert again.status_code == 200 and again.json() == final
    wait_for("ada to have no server", lambda: not hub.user("ada")["servers"], 60, 0.5)
    wait_for("ada's server process to end", lambda: "ada" not in _users(watcher), 60, 0.5)
    ledger = hub.ledger()
    try:
        assert [s for s in ledger.open_sessions() if s.user == "ada"] == []
    finally:
        ledger.engine.dispose()
    stop_all(hub)


def _users(watcher: ProcessWatcher) -> set[str]:
    return {key.split("/", 1)[0] for key in watcher.devices()}


@pytest.mark.integration
@pytest.mark.faults
def test_a_turn_given_by_a_service_that_died_before_asking_the_hub_is_started_by_the_next(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    """The service is SIGKILLed; a GPU frees; the turn is given as the dead service would have
    given it (the ledger's serve, committed, from this process) and the hub is never asked.
    The next service finds the request starting with its hold unused and starts the server.
    Broken once (only turns given in the same pass were started): the request stayed starting
    until its hold ran out, then failed."""
    from spawner_ext.ledger.store import Ledger

    hub.start_server("grace", {"profile": "h100-single"})
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    ada = Person(hub, "ada")
    joined = ada.join({"profile": "h100-single"}, "auto")
    pid = wait_for("the gpuhub service", lambda: service_pid(hub.state_dir), 120, 0.2)
    moment = datetime.now(UTC).isoformat()
    os.kill(pid, signal.SIGKILL)
    hub.stop_server("lin")
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}", install="local")
    try:
        given = ledger.serve(hub_catalog(hub)).given
    finally:
        ledger.engine.dispose()
    assert [(r.id, r.state) for r in given] == [(joined["id"], "starting")]
    wait_for("a new service to tick", lambda: service_ticked_since(hub.url, moment), 120, 0.5)
    started = wait_state(ada, joined["id"], {"started", "failed", "expired"}, 60)
    assert started["state"] == "started", started
    assert hub.user("ada")["servers"][""]["ready"]
    assert len(gpus_in_use(watcher)) == 2
    stop_all(hub)


@pytest.mark.integration
@pytest.mark.faults
def test_sigkills_of_the_service_and_the_hub_lose_no_request_and_serve_none_twice(
    hub: Hub, watcher: ProcessWatcher
) -> None:
    """Four requests wait for two H100s while GPUs free up one by one, and the service is
    SIGKILLed right after each GPU frees (while it gives turns and starts servers), the hub once
    while a server starts. Afterwards every request started exactly once, on its own GPU, and no
    two live processes ever held the same device (the watcher saw every process)."""
    hub.start_server("grace", {"profile": "h100-single"})
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    people = {name: Person(hub, name) for name in ("ada", "grace", "lin")}
    vision = {"profile": "h100-single", "team": "vision"}
    joined = [
        (people["ada"], people["ada"].join({"profile": "h100-single"}, "auto", "w1")),
        (people["grace"], people["grace"].join({"profile": "h100-single"}, "auto", "w2")),
        (people["lin"], people["lin"].join(vision, "auto", "w3")),
        (people["ada"], people["ada"].join({"profile": "h100-single"}, "auto", "w4")),
    ]

    def kill_service() -> None:
        pid = wait_for("the gpuhub service", lambda: service_pid(hub.state_dir), 120, 0.2)
        moment = datetime.now(UTC).isoformat()
        os.kill(pid, signal.SIGKILL)
        wait_for("a new service to tick", lambda: service_ticked_since(hub.url, moment), 120, 0.5)

    def states() -> dict[str, str]:
        return {r["id"]: p.request(r["id"])["state"] for p, r in joined}

    done: set[tuple[str, str]] = set()
    to_free = [("grace", ""), ("lin", "")]
    for round_ in range(len(joined)):
        user, server = to_free.pop(0)
        hub.stop_server(user, server)
        time.sleep(TICK / 2)
        if round_ == 1:
            hub.crash()  # the hub dies while the service asks it to start a server
            hub.start()
        else:
            kill_service()
        now = wait_for(
            f"{round_ + 1} requests to have started",
            lambda n=round_ + 1: (
                (found := states()) and sum(v == "started" for v in found.values()) >= n and found
            ),
            120,
            0.5,
        )
        assert not {"failed", "expired", "cancelled"} & set(now.values()), now
        assert sum(v == "started" for v in now.values()) == round_ + 1, now
        newest = next(
            (p.name, r["server_name"])
            for p, r in joined
            if now[r["id"]] == "started" and (p.name, r["server_name"]) not in done
        )
        done.add(newest)
        to_free.append(newest)
        assert len(gpus_in_use(watcher)) <= 2
    ledger = hub.ledger()
    catalog = hub_catalog(hub)
    try:
        requests_ = [ledger.get(catalog, r["id"]) for _, r in joined]
        sessions = [r.session for r in requests_ if r is not None]
        by_server = {
            (s.user, s.server_name): s.uid
            for s in ledger.open_sessions()
            if s.server_name.startswith("w")
        }
    finally:
        ledger.engine.dispose()
    # each request started exactly one session, the one its server runs now or ran
    assert len(sessions) == len(joined) == len(set(sessions))
    assert watcher.shared() == []
    assert set(by_server.values()) <= set(sessions)
    stop_all(hub)
