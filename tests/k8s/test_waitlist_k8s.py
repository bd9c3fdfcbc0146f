"""The wait-list on the Kubernetes test bed: the gpuhub service counts a GPU type's free GPUs from
the matching kwok nodes and the pods bound there (another workload's pod is someone else's GPU),
a spawn finding none free is refused with the offer to wait, and the turn starts the person's
pod when a GPU frees; a borrowed pod reclaimed with notice for a lender's person in line, whose
pod then starts on the GPU it freed; and the wait-list in a real browser (Debian's Chromium
driven by Playwright, logged in through the hub's dummy authenticator). Pods are read from the
API server, independently of the ledger."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from hub import K8sHub, delete_namespaces, ensure_namespace, running_hub
from playwright.sync_api import Expect
from testbed import (
    GPU_TOLERATIONS,
    H100,
    POOL_LABEL,
    ControlPlane,
    GpuNodeSpec,
    Json,
    pooled_h100_type,
)

from spawner_ext.catalog import load_catalog
from spawner_ext.ledger.store import Ledger

pytestmark = pytest.mark.k8s

TICK = 1
INSTALL = "wl"
RECLAIM_NOTICE = 6
BROWSER_TIMEOUT_MS = 150_000  # a wait in the browser: a pod's start on the test bed at most
expect = Expect()  # this module's own, waiting as long as the pods may take
expect.set_options(timeout=BROWSER_TIMEOUT_MS)


def catalog(pool: str) -> Json:
    return {
        "metering": {"currency": "USD", "reconcile_interval": f"{TICK}s", "start_grace": "60s"},
        "waitlist": {"hold": "2m"},
        "gpu_types": {"h100-80gb": pooled_h100_type(pool)},
        "teams": {
            "vision": {"users": ["ada", "lin"], "quota": {"gpus": {"h100-80gb": 4}}},
            # borrowing (test_a_borrowed_pod_is_reclaimed_for_the_lender_in_line): sam's team
            # has no H100 quota of its own and may borrow one; grace's lends its one
            "teaching": {
                "users": ["sam"],
                "quota": {"gpus": {"h100-80gb": 0}, "borrow_limit": {"h100-80gb": 1}},
            },
            "nlp": {"users": ["grace"], "quota": {"gpus": {"h100-80gb": 1}}},
        },
        "borrowing": {"reclaim_notice": f"{RECLAIM_NOTICE}s", "min_runtime": "1s"},
        "profiles": [
            {"display_name": "CPU only", "slug": "cpu-small", "default": True},
            {
                "display_name": "One H100 80GB",
                "slug": "h100-single",
                "gpu": {"type": "h100-80gb", "count": 1},
            },
        ],
    }


@dataclasses.dataclass
class Bed:
    pool: str
    hub: K8sHub
    other: str
    """The namespace of another workload holding one of the node's GPUs."""
    h100_node: str


@pytest.fixture(scope="module")
def bed(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    pool = secrets.token_hex(3)
    labels = {POOL_LABEL: pool}
    nodes = control_plane.add_kwok_gpu_nodes(1, dataclasses.replace(H100, gpus=2, labels=labels))
    cpu_only = GpuNodeSpec(product="none", gpus=0, mig_resources={}, labels=labels, tainted=False)
    nodes += control_plane.add_kwok_gpu_nodes(1, cpu_only)
    hub_ns, other = f"wl-{pool}-hub", f"wl-{pool}-batch"
    try:
        ensure_namespace(control_plane, other)
        control_plane.api.create(
            f"/api/v1/namespaces/{other}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "training", "labels": {"app": "training"}},
                "spec": {
                    "nodeSelector": {POOL_LABEL: pool, "nvidia.com/gpu.product": H100.product},
                    "tolerations": GPU_TOLERATIONS,
                    "containers": [
                        {
                            "name": "train",
                            "image": "train:latest",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        )
        with running_hub(
            control_plane,
            tmp_path_factory.mktemp("waitlist"),
            namespace=hub_ns,
            catalog=catalog(pool),
            install=INSTALL,
            # the tests' admin service may make users' tokens (to call the API as them)
            extra_config='c.JupyterHub.load_roles[0]["scopes"].append("tokens")',
        ) as hub:
            hub.create_users(["ada", "lin", "sam", "grace"])
            yield Bed(pool, hub, other, nodes[0])
    finally:
        delete_namespaces(control_plane, [hub_ns, other])
        for node in nodes:
            control_plane.api.delete(f"/api/v1/nodes/{node}")


def token_of(hub: K8sHub, user: str) -> str:
    response = hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def waitlist(hub: K8sHub, token: str, method: str, path: str = "", **kwargs: Any) -> Any:
    return requests.request(
        method,
        f"{hub.url}services/gpu-usage/api/v1/waitlist{path}",
        headers={"Authorization": f"token {token}"},
        timeout=60,
        **kwargs,
    )


def pod_of(plane: ControlPlane, model: Json) -> Json:
    state = model["state"]
    pod: Json = plane.api.get(f"/api/v1/namespaces/{state['namespace']}/pods/{state['pod_name']}")
    return pod


def test_free_gpus_come_from_the_nodes_and_a_turn_starts_the_pod(
    bed: Bed, control_plane: ControlPlane
) -> None:
    hub = bed.hub
    assert hub.ledger_url is not None
    ledger = Ledger.open(hub.ledger_url, install=INSTALL)
    try:
        # 2 GPUs on the pool's H100 node, 1 held by the batch pod: (total, used elsewhere)
        hub.wait(
            "the service to count the node's GPUs",
            lambda: ledger.capacities().get("h100-80gb") == (2, 1),
            60,
        )
        assert hub.spawn("ada", {"profile": "h100-single"}).status_code in (201, 202)
        hub.wait_ready("ada")
        refused = hub.spawn("lin", {"profile": "h100-single"})
        assert refused.status_code == 400, refused.text
        message = refused.json()["message"]
        assert "1 in all, 0 free, held by ada/ (1)" in message
        assert "You can wait for a GPU" in message

        lin = token_of(hub, "lin")
        joined = waitlist(hub, lin, "POST", json={"profile": "h100-single", "start": "auto"})
        assert joined.status_code == 201, joined.text
        request = joined.json()
        assert (request["state"], request["position"]) == ("waiting", 1)

        hub.stop_server("ada")
        hub.wait("the service to start lin's server", lambda: hub.server("lin") is not None, 60)
        model = hub.wait_ready("lin", timeout=120)
        pod = pod_of(control_plane, model)
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] == bed.h100_node
        final = hub.wait(
            "lin's request to be started",
            lambda: (
                (r := waitlist(hub, lin, "GET", f"/{request['id']}").json())["state"] == "started"
                and r
            ),
            60,
        )
        found = ledger.get(load_catalog(hub.catalog_path), request["id"])
        assert found is not None and found.session == pod["metadata"]["labels"]["gpuhub.io/session"]
        assert final["position"] is None
        hub.stop_server("lin")
    finally:
        ledger.engine.dispose()


def test_a_borrowed_pod_is_reclaimed_for_the_lender_in_line(
    bed: Bed, control_plane: ControlPlane
) -> None:
    """sam (no H100 quota of his own) borrows the node's free H100; grace, whose team lends it,
    finds none free and waits; the service reclaims sam's pod no earlier than its notice (the
    pod is deleted, its session ends `reclaimed`) and grace's pod runs on the node."""
    hub = bed.hub
    assert hub.ledger_url is not None
    ledger = Ledger.open(hub.ledger_url, install=INSTALL)
    try:
        hub.wait(
            "the service to count the node's GPUs",
            lambda: ledger.capacities().get("h100-80gb") == (2, 1),
            60,
        )
        refused = hub.spawn("sam", {"profile": "h100-single"})
        assert refused.status_code == 400, refused.text
        assert "You can borrow 1 NVIDIA H100 80GB" in refused.json()["message"]
        assert "You can wait" not in refused.json()["message"]  # no own quota to wait for
        assert hub.spawn("sam", {"profile": "h100-single", "borrow": "yes"}).status_code in (
            201,
            202,
        )
        sam_pod = pod_of(control_plane, hub.wait_ready("sam"))
        assert sam_pod["spec"]["nodeName"] == bed.h100_node
        assert hub.spawn("grace", {"profile": "h100-single"}).status_code == 400
        grace = token_of(hub, "grace")
        joined = waitlist(hub, grace, "POST", json={"profile": "h100-single", "start": "auto"})
        assert joined.status_code == 201, joined.text

        def sam_session() -> Any:
            return next(s for s in ledger.open_sessions() if s.user == "sam")

        chosen = hub.wait("sam's pod to be chosen", lambda: sam_session().reclaim_at, 60)
        hub.wait("sam's server to be stopped", lambda: hub.server("sam") is None, 90)
        assert datetime.now(UTC) >= chosen
        gone = f"/api/v1/namespaces/{sam_pod['metadata']['namespace']}/pods"
        names = [p["metadata"]["name"] for p in control_plane.api.get(gone)["items"]]
        assert sam_pod["metadata"]["name"] not in names
        hub.wait("the service to start grace's server", lambda: hub.server("grace"), 60)
        model = hub.wait_ready("grace", timeout=150)
        assert pod_of(control_plane, model)["spec"]["nodeName"] == bed.h100_node
        ended = [s for s in ledger_sessions(ledger) if s.user == "sam"]
        assert [s.end_reason for s in ended] == ["reclaimed"]
        hub.stop_server("grace")
    finally:
        ledger.engine.dispose()


def ledger_sessions(ledger: Ledger) -> list[Any]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from spawner_ext.ledger.models import UsageSession

    with Session(ledger.engine) as db:
        return list(db.scalars(select(UsageSession).order_by(UsageSession.id)))


@pytest.mark.browser
def test_in_the_browser_a_refusal_becomes_a_place_in_line_and_the_turn_runs_the_pod(
    bed: Bed, control_plane: ControlPlane, browser: Any
) -> None:
    """lin submits the spawn form while ada holds the only free H100, follows the refusal's
    offer to the wait-list page, joins to start by herself, and sees her place; when ada stops,
    the page shows lin's server started (it reads the line by itself) and her pod runs on the
    H100 node."""
    hub = bed.hub
    assert hub.ledger_url is not None
    ledger = Ledger.open(hub.ledger_url, install=INSTALL)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    lin = token_of(hub, "lin")
    try:
        hub.wait(
            "the service to count the node's GPUs",
            lambda: ledger.capacities().get("h100-80gb") == (2, 1),
            60,
        )
        assert hub.spawn("ada", {"profile": "h100-single"}).status_code in (201, 202)
        hub.wait_ready("ada")

        page = context.new_page()
        page.goto(f"{hub.url}hub/login?next=%2Fhub%2Fspawn")
        page.fill("input[name=username]", "lin")
        page.fill("input[name=password]", "any password: the dummy authenticator")
        page.keyboard.press("Enter")
        page.wait_for_url(f"{hub.url}hub/spawn")
        page.check("#profile-item-h100-single")
        page.click("form button[type=submit]")
        refusal = page.locator(".spawn-error-msg")
        expect(refusal).to_contain_text("1 in all, 0 free, held by ada/ (1)")
        expect(refusal).to_contain_text("You can wait for a GPU instead of trying again")
        page.locator("#gpuhub-facts-h100-single .gpuhub-wait-offer").get_by_role(
            "link", name="wait for a GPU"
        ).click()

        what = page.locator("#gpuhub-join-what")
        expect(what).to_contain_text("If you join now you will be 1st in line for NVIDIA H100")
        page.check("#gpuhub-start-auto")
        page.click("#gpuhub-join-button")
        row = page.locator("#gpuhub-requests [data-request]")
        expect(row.locator(".gpuhub-place")).to_contain_text("1st in line for NVIDIA H100 80GB; ")
        uid = row.get_attribute("data-request")
        assert uid is not None

        hub.stop_server("ada")
        started = page.locator(f"#gpuhub-ended [data-request='{uid}']")
        expect(started).to_have_attribute("data-state", "started")
        expect(started.get_by_role("link", name="Open your server")).to_have_attribute(
            "href", "/user/lin/"
        )
        pod = pod_of(control_plane, hub.wait_ready("lin"))
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] == bed.h100_node
    finally:
        context.close()
        ledger.engine.dispose()
        for request in waitlist(hub, lin, "GET").json()["requests"]:
            waitlist(hub, lin, "DELETE", f"/{request['id']}")
        for user in ("ada", "lin"):
            if hub.server(user) is not None:
                hub.stop_server(user)
