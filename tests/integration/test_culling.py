"""GPU-aware culling end to end on one machine: a real hub (`gpuhub up` with simulated GPUs),
the gpuhub service and real jupyterhub-singleuser servers whose notebook extension samples the
fake NVML (built from spawner_ext/fakenvml/fake_nvml.c) through unmodified pynvml.

ada's GPU idles: she is warned, then culled (culled-gpu-idle in the ledger, waste recorded);
lin's GPU is busy: kept; grace's GPU idles but her kernel runs a long cell: kept. A server near
its max_age is warned in JupyterLab without Keep, with why, when and whom to ask."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect

from spawner_ext.fakenvml import FakeGPU, FakeNVML, write_config
from spawner_ext.ledger.models import IdleGPUDay, ServerActivity, UsageSession

from .conftest import Hub, needs_local_hub, wait_for

pytestmark = pytest.mark.integration

GIB = 2**30
ARTIFACTS = Path(os.environ.get("GPUHUB_ARTIFACTS", "/tmp/gpuhub-artifacts"))
CULLING = """culling:
  idle_timeout: 1h
  gpu_idle_timeout: 70s
  gpu_utilization_percent: 5
  warn_before: 60s
  interval: 2s
"""
MAX_AGE = 100
"""Seconds a cpu-small server may run on the culling hub (its profile's max_age)."""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_local_hub()
    workdir = tmp_path_factory.mktemp("culling")
    example = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
    start, end = example.index("culling:"), example.index("kubernetes:")
    catalog = workdir / "catalog.yaml"
    text = example[:start] + CULLING + "\n" + example[end:]
    cpu = "    slug: cpu-small\n"
    catalog.write_text(text.replace(cpu, f"{cpu}    max_age: {MAX_AGE}s\n"))
    started = Hub(workdir, "3xh100-80gb", "--config", str(catalog))
    with started.extra_config.open("a") as config:
        config.write('c.Spawner.environment = {"GPUHUB_SAMPLE_SECONDS": "1"}\n')
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def session_of(hub: Hub, user: str) -> UsageSession:
    ledger = hub.ledger()
    try:
        with Session(ledger.engine) as db:
            query = select(UsageSession).where(UsageSession.user == user)
            return list(db.scalars(query.order_by(UsageSession.id)))[-1]
    finally:
        ledger.engine.dispose()


def activity_of(hub: Hub, session_id: int) -> tuple[ServerActivity | None, int]:
    ledger = hub.ledger()
    try:
        with Session(ledger.engine) as db:
            row = db.get(ServerActivity, session_id)
            days = db.scalars(select(IdleGPUDay).where(IdleGPUDay.session_id == session_id))
            return row, sum(d.gpu_seconds for d in days)
    finally:
        ledger.engine.dispose()


def lab_status(hub: Hub, user: str) -> dict[str, Any]:
    """What JupyterLab reads from the server's extension."""
    response = requests.get(
        f"{hub.url}user/{user}/gpuhub/status",
        headers={"Authorization": f"token {hub.token_for(user)}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def run_long_cell(hub: Hub, user: str, seconds: int) -> None:
    """Start a kernel on the user's server and send it a cell that sleeps `seconds`."""
    token = hub.token_for(user)
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{hub.url}user/{user}/api/kernels", headers=headers, timeout=60)
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    url = f"{hub.url.replace('http', 'ws')}user/{user}/api/kernels/{kernel_id}/channels"

    async def send() -> None:
        connection = await websocket_connect(HTTPRequest(url, headers=headers))
        message = {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": "execute_request",
                "username": user,
                "session": uuid.uuid4().hex,
                "version": "5.3",
                "date": "",
            },
            "parent_header": {},
            "metadata": {},
            "content": {"code": f"import time; time.sleep({seconds})", "silent": False},
            "channel": "shell",
        }
        await connection.write_message(json.dumps(message))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the kernel says it is busy
            reply = await connection.read_message()
            if reply is None:
                break
            data = json.loads(reply)
            if data.get("msg_type") == "status" and data["content"]["execution_state"] == "busy":
                break
        connection.close()

    IOLoop(make_current=False).run_sync(send)


def test_idle_gpus_are_warned_then_culled_busy_ones_and_busy_kernels_kept(hub: Hub) -> None:
    for user, options in (
        ("ada", {"profile": "h100-single"}),
        ("lin", {"profile": "h100-single", "team": "vision"}),
        ("grace", {"profile": "h100-single"}),
    ):
        hub.start_server(user, options)
    held = {u: hub.server_env(u)["GPUHUB_SIMULATED_DEVICES"] for u in ("ada", "lin", "grace")}
    assert hub.server_env("ada")["GPUHUB_SERVICE_URL"].endswith("/services/gpu-usage/")
    config = hub.state_dir / "fake-nvml.conf"
    gpus = tuple(
        FakeGPU(u, "NVIDIA H100 80GB", 80 * GIB, utilization=90 if u == held["lin"] else 0)
        for u in sorted(held.values())
    )
    write_config(config, FakeNVML(gpus=gpus))  # lin trains; ada's and grace's GPUs idle
    # The activity API as a server calls it: a bad body is 400, a token of no user is 403.
    activity_url = hub.server_env("ada")["GPUHUB_SERVICE_URL"] + "api/v1/activity"
    bad = requests.post(
        activity_url,
        headers={"Authorization": f"token {hub.token_for('ada')}"},
        json={"gpus": [{"utilization": 3}]},
        timeout=30,
    )
    assert bad.status_code == 400 and "has no 'uuid'" in bad.json()["message"], bad.text
    service = requests.post(
        activity_url, headers={"Authorization": f"token {hub.token}"}, json={}, timeout=30
    )
    assert service.status_code == 403, service.text
    # The extension's own polling (and JupyterLab's poll of its status) is not activity.
    headers = {"Authorization": f"token {hub.token_for('grace')}"}
    status = f"{hub.url}user/grace/api/status"
    before = requests.get(status, headers=headers, timeout=30).json()["last_activity"]
    for _ in range(3):
        lab_status(hub, "grace")
        time.sleep(1)
    after = requests.get(status, headers=headers, timeout=30).json()["last_activity"]
    assert after == before, "polling and sampling an idle GPU count as no activity"
    run_long_cell(hub, "grace", 600)

    ada = session_of(hub, "ada")
    grace = session_of(hub, "grace")

    def grace_busy() -> int | None:
        row, waste = activity_of(hub, grace.id)
        return waste + 1 if row is not None and row.kernel_busy else None

    waste_before = wait_for("grace's busy kernel reported", grace_busy, 30, 1) - 1
    warned = wait_for(
        "ada's warning",
        lambda: lab_status(hub, "ada").get("warning") or None,
        60,
        1,
    )
    assert "will be stopped in" in warned["message"], warned
    assert "its GPU has been idle for" in warned["message"], warned
    assert warned["reason"] == "culled-gpu-idle"
    wait_for("lin's GPU busy", lambda: lab_status(hub, "lin")["activity"] == "busy", 30, 1)
    wait_for("lin's warning gone", lambda: lab_status(hub, "lin")["warning"] is None, 30, 1)

    wait_for("ada's cull", lambda: "" not in hub.user("ada")["servers"], 120, 1)
    culled = session_of(hub, "ada")
    assert culled.id == ada.id and culled.end_reason == "culled-gpu-idle", culled.end_reason
    row, waste = activity_of(hub, ada.id)
    assert row is not None and waste > 0, "ada's idle GPU-seconds are recorded as waste"
    browser_session, _ = hub.login("ada")  # JupyterLab is gone: the hub's page says why
    home = browser_session.get(f"{hub.url}hub/home", timeout=60).text
    assert 'data-reason="culled-gpu-idle"' in home, home
    assert "was stopped: its GPU has been idle for" in home
    # lin's training and grace's long cell: kept, and long past ada's cull time
    time.sleep(8)
    assert hub.user("lin")["servers"][""]["ready"], hub.log()
    assert hub.user("grace")["servers"][""]["ready"], hub.log()
    for user in ("lin", "grace"):
        session = session_of(hub, user)
        assert session.ended_at is None and session.stop_reason is None
    grace_row, grace_waste = activity_of(hub, grace.id)
    assert grace_row is not None and grace_row.kernel_busy
    assert grace_waste == waste_before, "no waste while the kernel computes"
    for user in ("lin", "grace"):
        hub.stop_server(user)


@pytest.mark.browser
def test_jupyterlab_warns_and_keep_keeps(hub: Hub, browser: Any) -> None:
    """The warning in JupyterLab (the labextension built by scripts/bootstrap), and its button."""
    hub.start_server("ada", {"profile": "h100-single"})
    session = session_of(hub, "ada")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(90_000)
    page = context.new_page()
    try:
        page.goto(f"{hub.url}hub/login?next=/user/ada/lab")
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", hub.password)
        page.keyboard.press("Enter")
        warning = page.get_by_text("will be stopped in", exact=False)
        warning.first.wait_for()
        assert "its GPU has been idle for" in warning.first.inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "culling-warning.png"))
        page.get_by_role("button", name="Keep it").first.click()
        page.get_by_text("Kept: its idle time starts again", exact=False).first.wait_for()
        row, _ = activity_of(hub, session.id)
        assert row is not None and row.kept_at is not None and row.warning is None
    finally:
        context.close()
    assert session_of(hub, "ada").ended_at is None, "kept, not culled"
    hub.stop_server("ada")


@pytest.mark.browser
def test_a_max_age_stop_is_warned_without_keep_saying_why_when_and_whom_to_ask(
    hub: Hub, browser: Any
) -> None:
    """lin's CPU server (charged to vision) nears its profile's max_age: JupyterLab warns with
    no Keep button, and its banner says why, at what time, and names vision's leads; Keep
    through the API (as an old JupyterLab would offer it) leaves the warning in place."""
    hub.start_server("lin", {"profile": "cpu-small", "team": "vision"})
    session = session_of(hub, "lin")
    assert session.started_at is not None
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(MAX_AGE * 1000)
    page = context.new_page()
    try:
        page.goto(f"{hub.url}hub/login?next=/user/lin/lab")
        page.fill("input[name=username]", "lin")
        page.fill("input[name=password]", hub.password)
        page.keyboard.press("Enter")
        banner = page.locator("#gpuhub-notices .gpuhub-stop-notice[data-reason=max-age]")
        banner.wait_for()
        stop_at = session.started_at + timedelta(seconds=MAX_AGE)
        text = banner.inner_text()
        assert f"(at {stop_at:%H:%M} UTC)" in text, text
        assert f"it will have run for {MAX_AGE} seconds, the longest allowed" in text, text
        assert "Keep cannot delay this" in text, text
        assert "ask ada or a member of vision-leads (the leads of Computer Vision Lab)" in text
        toast = page.get_by_text("the longest allowed", exact=False).first
        toast.wait_for()
        assert page.get_by_role("button", name="Keep it").count() == 0, "Keep would not help"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "max-age-warning.png"))
        kept = requests.post(
            f"{hub.url}user/lin/gpuhub/keep",
            headers={"Authorization": f"token {hub.token_for('lin')}"},
            timeout=30,
        )
        assert kept.status_code == 200, kept.text
        warning = kept.json()["warning"]
        assert warning is not None and warning["reason"] == "max-age", kept.text
        assert warning["keep"] is False
        row, _ = activity_of(hub, session.id)
        assert row is not None and row.cull_reason == "max-age", "Keep leaves the warning"
    finally:
        context.close()
    hub.stop_server("lin")


ARBITER = """\
from spawner_ext.service.arbiter import GPUCullArbiter
c.IdleCuller.cull_arbiter_hook = GPUCullArbiter(catalog={catalog!r}, db_url={db_url!r})
"""
STOCK_CULLER = """\
import sys
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600",
                "--cull-every=2", "--config={config}"],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
"""


@pytest.fixture(scope="module")
def stock_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub where stock jupyterhub-idle-culler 2 culls, with gpuhub's policy as its arbiter."""
    needs_local_hub()
    import jupyterhub_idle_culler

    if int(jupyterhub_idle_culler.__version__.split(".")[0]) < 2:
        pytest.skip(
            f"jupyterhub-idle-culler {jupyterhub_idle_culler.__version__} (z2jh 4.4.0's) has no "
            "cull_arbiter_hook; the arbiter needs 2.0"
        )
    workdir = tmp_path_factory.mktemp("stock-culler")
    example = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
    start, end = example.index("culling:"), example.index("kubernetes:")
    culling = CULLING.replace("70s", "20s").replace("60s", "10s")
    catalog = workdir / "catalog.yaml"
    catalog.write_text(example[:start] + culling + "\n" + example[end:])
    started = Hub(workdir, "2xh100-80gb", "--config", str(catalog), "--no-culling")
    arbiter = workdir / "idle_culler_config.py"
    db_url = f"sqlite:///{started.state_dir / 'gpuhub-ledger.sqlite'}"
    arbiter.write_text(ARBITER.format(catalog=str(catalog), db_url=db_url))
    with started.extra_config.open("a") as config:
        config.write('c.Spawner.environment = {"GPUHUB_SAMPLE_SECONDS": "1"}\n')
        config.write(STOCK_CULLER.format(config=arbiter))
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def test_stock_idle_culler_with_our_arbiter_culls_the_idle_gpu_and_keeps_the_busy_one(
    stock_hub: Hub,
) -> None:
    hub = stock_hub
    hub.start_server("ada", {"profile": "h100-single"})
    hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    held = {u: hub.server_env(u)["GPUHUB_SIMULATED_DEVICES"] for u in ("ada", "lin")}
    gpus = tuple(
        FakeGPU(u, "NVIDIA H100 80GB", 80 * GIB, utilization=90 if u == held["lin"] else 0)
        for u in sorted(held.values())
    )
    write_config(hub.state_dir / "fake-nvml.conf", FakeNVML(gpus=gpus))
    ada = session_of(hub, "ada")
    wait_for("the stock culler to cull ada", lambda: "" not in hub.user("ada")["servers"], 90, 1)
    culled = session_of(hub, "ada")
    assert culled.id == ada.id and culled.end_reason == "culled-gpu-idle", culled.end_reason
    assert "idle-culler" in (hub.state_dir / "jupyterhub.log").read_text()
    time.sleep(5)
    assert hub.user("lin")["servers"][""]["ready"], "lin's busy GPU is kept"
    assert session_of(hub, "lin").stop_reason is None
    hub.stop_server("lin")
