"""The three personas end to end, in a real browser: a hub on the Kubernetes test bed with
GPUKubeSpawner and the gpuhub service, logging in through Dex (a real OIDC provider, whose groups
are the teams), in headless Chromium.

1. A data scientist logs in at Dex's form, sees only their team's profiles with price and quota,
   starts a 1-GPU profile, JupyterLab opens (a real server, on the process kubelet), a cell
   runs, they stop it; the usage page and the ledger show its GPU-seconds.
2. A second member of the team asks for more GPUs than are left and is refused, with who holds
   them and what to do.
3. An admin edits the catalog: a new profile appears without a restart; a typo is shown on the
   usage page's catalog section with file:line, and the old catalog stays in force.
4. The team's lead sees both members on the usage page and exports CSV; another team's lead
   cannot read that team.
Screenshots of each step go to $GPUHUB_ARTIFACTS (e2e-*.png)."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hub import HubError, K8sHub, delete_namespaces, ensure_namespace
from testbed import ControlPlane, ProcessKubelet

from spawner_ext.ledger.store import Ledger
from tests.dex import Dex, DexClient, DexUser, dex_binary, log_in_in_browser

pytestmark = [pytest.mark.k8s, pytest.mark.e2e, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "hub_config" / "oidc_example.py"
ARTIFACTS = Path(os.environ.get("GPUHUB_ARTIFACTS", "/tmp/gpuhub-artifacts"))
TIMEOUT_MS = 120_000

MIRA = DexUser("mira", ("vision",))
NOOR = DexUser("noor", ("vision",))
VERA = DexUser("vera", ("vision-leads",))  # leads vision
NILS = DexUser("nils", ("nlp-leads",))  # leads nlp
ROOT = DexUser("root", ("hub-admins",))
USERS = [MIRA, NOOR, VERA, NILS, ROOT]


def catalog(prefix: str) -> dict[str, Any]:
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "metering": {"currency": "USD", "reconcile_interval": "2s"},
        # Profiles cull after an hour of idle GPUs, l4-short after 40 s (scenario 5); the
        # warning comes 30 s before.
        "culling": {"gpu_idle_timeout": "1h", "interval": "2s", "warn_before": "30s"},
        "kubernetes": {"namespace_template": f"{prefix}-{{team}}"},
        "gpu_types": {
            "l4": {
                "display_name": "NVIDIA L4 24GB",
                "resource": "nvidia.com/gpu",
                "price_per_hour": 0.70,
                "node_selector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                "tolerations": tolerations,
            },
        },
        "teams": {
            "vision": {
                "display_name": "Computer Vision Lab",
                "groups": ["vision"],
                "leads": {"groups": ["vision-leads"]},
                "quota": {"gpus": {"l4": 1}, "gpus_per_user": 1},
            },
            "nlp": {
                "display_name": "Language Models",
                "groups": ["nlp"],
                "leads": {"groups": ["nlp-leads"]},
                "quota": {"gpus": {"l4": 1}},
            },
        },
        "profiles": [
            {"display_name": "CPU only", "slug": "cpu-small", "default": True},
            {"display_name": "One L4", "slug": "l4-single", "gpu": {"type": "l4", "count": 1}},
            {
                "display_name": "One L4, culled soon",
                "slug": "l4-short",
                "gpu": {"type": "l4", "count": 1},
                "gpu_idle_timeout": "40s",
            },
            {
                "display_name": "Two L4 (NLP)",
                "slug": "l4-pair",
                "allowed_teams": ["nlp"],
                "gpu": {"type": "l4", "count": 2},
            },
        ],
    }


@pytest.fixture(scope="module")
def bed(
    control_plane: ControlPlane,
    process_kubelet: ProcessKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[K8sHub, Dex]]:
    binary = dex_binary()  # skips, saying how to build it, when Dex is not built
    prefix = f"e2e-{secrets.token_hex(3)}"
    workdir = tmp_path_factory.mktemp("e2e")
    hub = K8sHub(
        control_plane,
        workdir,
        namespace=f"{prefix}-hub",
        catalog=catalog(prefix),
        start_timeout=90,
        extra_config=f"load_subconfig({str(EXAMPLE)!r})  # noqa: F821\n"
        # Where notebook pods (the process kubelet's, on this machine) report GPU activity.
        "import os\nc.GPUKubeSpawner.activity_url = os.environ['E2E_ACTIVITY_URL']\n",
    )
    client = DexClient("gpuhub", "e2e-" + hub.token, f"{hub.url}hub/oauth_callback")
    dex = Dex(workdir, client, binary)
    ensure_namespace(control_plane, hub.namespace)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUHUB_OIDC_ISSUER", dex.issuer)
        env.setenv("GPUHUB_OIDC_CLIENT_ID", client.client_id)
        env.setenv("GPUHUB_OIDC_CLIENT_SECRET", client.client_secret)
        env.setenv("GPUHUB_OIDC_CALLBACK_URL", client.redirect_uri)
        env.setenv("GPUHUB_OIDC_ADMIN_GROUPS", "hub-admins")
        env.setenv("GPUHUB_OIDC_LOGIN_SERVICE", "Dex")
        env.setenv("GPUHUB_CATALOG", str(hub.catalog_path))
        env.setenv("E2E_ACTIVITY_URL", f"http://127.0.0.1:{hub.service_port}/services/gpu-usage/")
        try:
            dex.start(USERS)
            hub.start()
            yield hub, dex
        finally:
            hub.stop()
            dex.stop()
            delete_namespaces(control_plane, [f"{prefix}-{n}" for n in ("hub", "vision", "nlp")])


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"e2e-{name}.png"), full_page=True)


def log_in(page: Any, hub: K8sHub, dex: Dex, user: DexUser, step: str) -> None:
    log_in_in_browser(page, hub.url, dex, user, shot, step)


def start_on_form(page: Any, profile: str) -> None:
    page.check(f"#profile-item-{profile}")
    page.click("button[type=submit]")


def open_lab(page: Any, hub: K8sHub, user: str) -> None:
    """Wait for the spawn to end in JupyterLab."""
    page.wait_for_url(f"{hub.url}user/{user}/lab**", timeout=TIMEOUT_MS)
    page.wait_for_selector("#jp-main-dock-panel", timeout=TIMEOUT_MS)


def run_a_cell(page: Any, code: str) -> None:
    """A new notebook from the launcher; once its kernel is idle, `code` in its first cell, run
    (Ctrl+Enter) until it runs. On a loaded machine JupyterLab may take the run for one with no
    kernel yet and clear the cell instead ("[ ]", nothing sent): a person would run it again, and
    so does this, three times at most. A kernel that never runs it still fails the test."""
    page.click(".jp-LauncherCard[data-category='Notebook']")
    page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=TIMEOUT_MS
    )
    editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
    try:
        editor.click()
        page.keyboard.type(code)
        page.wait_for_function(
            "code => document.querySelector('.jp-Notebook .jp-Cell .cm-content')"
            "?.textContent === code",
            arg=code,
            timeout=TIMEOUT_MS,
        )
        for _ in range(3):
            editor.click()
            page.keyboard.press("Control+Enter")
            if _started(page, prompt):
                break
        page.wait_for_selector(".jp-Notebook .jp-OutputArea-output", timeout=TIMEOUT_MS)
    except Exception:
        shot(page, "failed-cell")
        raise


def _started(page: Any, prompt: Any, seconds: float = 15) -> bool:
    """Whether the cell's prompt left "[ ]" (running "[*]", or run "[1]") within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if prompt.inner_text().strip() not in ("[ ]:", "[ ]"):
            return True
        page.wait_for_timeout(250)
    return False


@pytest.fixture(autouse=True)
def no_server_left(bed: tuple[K8sHub, Dex]) -> Iterator[None]:
    """A scenario that fails midway leaves nothing running into the next."""
    yield
    hub, _ = bed
    for user in USERS:
        with contextlib.suppress(HubError):  # a user who never logged in
            if hub.server(user.name) is not None:
                hub.stop_server(user.name)


def ledger_sessions(hub: K8sHub, user: str) -> list[Any]:
    assert hub.ledger_url
    ledger = Ledger.open(hub.ledger_url)
    try:
        with ledger._reads() as db:
            from spawner_ext.ledger.models import UsageSession

            return list(db.query(UsageSession).filter(UsageSession.user == user))
    finally:
        ledger.engine.dispose()


def test_1_a_data_scientist_runs_a_cell_on_a_gpu_and_sees_it_billed(
    bed: tuple[K8sHub, Dex], page: Any
) -> None:
    hub, dex = bed
    log_in(page, hub, dex, MIRA, "1-1")
    page.wait_for_url(f"{hub.url}hub/spawn**")
    page.wait_for_selector("#gpuhub-profile-l4-single")
    shot(page, "1-2-spawn-form")
    text = page.inner_text("body")
    assert "Computer Vision Lab" in text
    assert "0.70" in text, "the profile's price per hour"
    assert re.search(r"1 of 1 NVIDIA L4 24GB free", text), text
    assert page.query_selector("#gpuhub-profile-l4-pair") is None, "another team's profile"
    start_on_form(page, "l4-single")
    open_lab(page, hub, "mira")
    # A notebook, one cell.
    run_a_cell(page, "print(6 * 7, 'from', __import__('os').environ['JUPYTERHUB_USER'])")
    page.wait_for_selector("text=42 from mira", timeout=TIMEOUT_MS)
    shot(page, "1-3-jupyterlab-cell")
    pod = hub.server("mira")
    assert pod is not None and pod["state"]["namespace"].endswith("-vision")
    # Stop it from the hub's home page, as a person does.
    page.goto(f"{hub.url}hub/home")
    page.click("#stop")
    page.wait_for_selector("#start", timeout=TIMEOUT_MS)
    shot(page, "1-4-stopped")
    hub.wait(
        "mira's session to close",
        lambda: all(s.ended_at for s in ledger_sessions(hub, "mira")),
        timeout=60,
    )
    (session,) = [s for s in ledger_sessions(hub, "mira") if s.started_at]
    lived = (session.ended_at - session.started_at).total_seconds()
    assert session.gpu_seconds == int(lived) * 1 and session.gpu_seconds > 0
    assert session.end_reason == "stopped"
    page.goto(f"{hub.url}services/gpu-usage/")
    page.wait_for_selector("#gpuhub-usage-table tbody tr")
    shot(page, "1-5-usage-page")
    assert "mira" in page.inner_text("#gpuhub-usage-table")
    # The figures the page shows, as its API gives them to the browser: the ledger's seconds.
    answer = page.goto(f"{hub.url}services/gpu-usage/api/v1/usage?by=user,session")
    assert answer is not None and answer.ok
    (row,) = answer.json()["rows"]
    assert (row["user"], row["session"]) == ("mira", session.uid)
    assert row["gpu_hours"] == round(session.gpu_seconds / 3600, 4)


def test_2_a_second_member_asking_for_more_than_is_left_is_told_who_holds_it(
    bed: tuple[K8sHub, Dex], page: Any
) -> None:
    hub, dex = bed
    response = hub.spawn("mira", {"profile": "l4-single"})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("mira")
    log_in(page, hub, dex, NOOR, "2-1")
    page.wait_for_selector("#gpuhub-profile-l4-single")
    assert re.search(r"0 of 1 NVIDIA L4 24GB free", page.inner_text("body"))
    start_on_form(page, "l4-single")
    message = page.wait_for_selector("text=holds 1 (mira: 1)")
    assert message is not None
    shot(page, "2-2-refused")
    body = page.inner_text("body")
    assert "team 'vision' may hold 1 NVIDIA L4 24GB at once" in body
    assert hub.server("noor") is None
    hub.stop_server("mira")


def test_3_an_admins_catalog_edit_applies_live_and_a_typo_keeps_the_last_good(
    bed: tuple[K8sHub, Dex], page: Any
) -> None:
    hub, dex = bed
    good = yaml.safe_load(hub.catalog_path.read_text())
    edited = copy.deepcopy(good)
    edited["profiles"].append({"display_name": "Big CPU", "slug": "cpu-big"})
    hub.catalog_path.write_text(yaml.safe_dump(edited, sort_keys=False))
    log_in(page, hub, dex, NOOR, "3-1")

    def shows_new_profile() -> bool:
        page.goto(f"{hub.url}hub/spawn")
        return page.query_selector("#gpuhub-profile-cpu-big") is not None

    hub.wait("the new profile on the form", shows_new_profile, timeout=60)
    shot(page, "3-2-new-profile")
    typo = yaml.safe_dump(edited, sort_keys=False).replace(
        "price_per_hour: 0.7", "price_per_hour: O.7"
    )
    hub.catalog_path.write_text(typo)
    admin = page.context.browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        view = admin.new_page()
        view.set_default_timeout(TIMEOUT_MS)
        log_in(view, hub, dex, ROOT, "3-3")

        def reports_the_typo() -> bool:
            view.goto(f"{hub.url}services/gpu-usage/")
            found = view.wait_for_selector("#gpuhub-catalog", state="attached")
            return found is not None and "catalog.yaml:" in view.inner_text("#gpuhub-catalog")

        hub.wait("the typo on the usage page", reports_the_typo, timeout=60)
        shot(view, "3-4-typo-shown")
        assert "price_per_hour" in view.inner_text("#gpuhub-catalog")
    finally:
        admin.close()
    page.goto(f"{hub.url}hub/spawn")
    assert page.query_selector("#gpuhub-profile-cpu-big") is not None, "the last good stays"
    hub.catalog_path.write_text(yaml.safe_dump(good, sort_keys=False))


def test_4_a_team_lead_sees_the_team_and_exports_csv_another_lead_cannot(
    bed: tuple[K8sHub, Dex], page: Any
) -> None:
    hub, dex = bed
    response = hub.spawn("noor", {"profile": "l4-single"})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("noor")
    hub.stop_server("noor")
    log_in(page, hub, dex, VERA, "4-1")
    page.goto(f"{hub.url}services/gpu-usage/?team=vision")
    page.wait_for_selector("#gpuhub-usage-table tbody tr")
    shot(page, "4-2-lead-usage")
    table = page.inner_text("#gpuhub-usage-table")
    assert "mira" in table and "noor" in table
    with page.expect_download() as download:
        page.click("#gpuhub-download-csv")
    csv = Path(download.value.path()).read_text()
    assert "mira" in csv and "noor" in csv, csv
    other = page.context.browser.new_context()
    try:
        view = other.new_page()
        view.set_default_timeout(TIMEOUT_MS)
        log_in(view, hub, dex, NILS, "4-3")
        view.goto(f"{hub.url}services/gpu-usage/?team=vision")
        refusal = view.wait_for_selector("#gpuhub-error")
        assert refusal is not None
        assert refusal.inner_text() == (
            "you may not read the usage of team 'vision'; you may read teams nlp and your own usage"
        ), refusal.inner_text()
        assert "mira" not in view.inner_text("#gpuhub-usage-table")
        shot(view, "4-4-other-lead-refused")
    finally:
        other.close()


def test_5_an_idle_gpu_is_warned_in_jupyterlab_then_culled_and_the_reason_shown(
    bed: tuple[K8sHub, Dex], page: Any
) -> None:
    hub, dex = bed
    log_in(page, hub, dex, NOOR, "5-1")
    page.wait_for_selector("#gpuhub-profile-l4-short")
    start_on_form(page, "l4-short")
    open_lab(page, hub, "noor")
    warning = page.get_by_text("will be stopped in", exact=False).first
    warning.wait_for(timeout=TIMEOUT_MS)
    assert "its GPU has been idle" in warning.inner_text()
    shot(page, "5-2-warning")
    hub.wait("noor's idle server to be culled", lambda: hub.server("noor") is None, timeout=120)
    last = max(ledger_sessions(hub, "noor"), key=lambda s: s.id)
    assert last.end_reason == "culled-gpu-idle"
    page.goto(f"{hub.url}services/gpu-usage/")
    page.wait_for_selector("#gpuhub-usage-table tbody tr")
    page.check("#gpuhub-by-end_reason")
    page.click("#gpuhub-show")
    page.wait_for_selector("#gpuhub-usage-table >> text=culled-gpu-idle")
    shot(page, "5-3-usage-page-reason")
