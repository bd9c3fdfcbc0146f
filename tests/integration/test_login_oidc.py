"""Login through a real OpenID Connect provider (Dex, built by scripts/build-dex) with
hub_config/oidc_example.py, the way a person meets it in Debian's Chromium: the hub's login
button, Dex's login form, the spawn form with their team's profiles; the provider's groups become
JupyterHub groups, and leaving a group at the provider loses the team at the next login. A user in
no allowed group is refused with a page that says why. Screenshots of each step are saved in
$GPUHUB_ARTIFACTS (default /tmp/gpuhub-artifacts).

The tests share one hub and one Dex and run in file order.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.dex import Dex, DexClient, DexUser, dex_binary, log_in_in_browser

from .conftest import Hub, needs_local_hub

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "hub_config" / "oidc_example.py"
ARTIFACTS = Path(os.environ.get("GPUHUB_ARTIFACTS", "/tmp/gpuhub-artifacts"))
TIMEOUT_MS = 60_000

# The example catalog: `vision` is the team of group vision (H100s among its profiles),
# `teaching` the team of group students (CPU, MIG slices and L4s only).
MIRA = DexUser("mira", ("vision",))
MIRA_MOVED = DexUser("mira", ("students",))  # removed from vision at the provider
OTTO = DexUser("otto", ("marketing",))  # in no group a team names
ROOT_USER = DexUser("root", ("hub-admins",))

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Dex]]:
    """A `gpuhub up` hub configured by the OIDC example against a running Dex."""
    needs_local_hub()
    binary = dex_binary()
    workdir = tmp_path_factory.mktemp("oidc")
    hub = Hub(workdir, "1xh100-80gb")
    hub.extra_config.write_text(
        hub.extra_config.read_text() + f"\nload_subconfig({str(EXAMPLE)!r})  # noqa: F821\n"
    )
    client = DexClient("gpuhub", "not-a-secret-" + hub.token, f"{hub.url}hub/oauth_callback")
    dex = Dex(workdir, client, binary)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPUHUB_OIDC_ISSUER", dex.issuer)
        env.setenv("GPUHUB_OIDC_CLIENT_ID", client.client_id)
        env.setenv("GPUHUB_OIDC_CLIENT_SECRET", client.client_secret)
        env.setenv("GPUHUB_OIDC_CALLBACK_URL", client.redirect_uri)
        env.setenv("GPUHUB_OIDC_ADMIN_GROUPS", "hub-admins")
        env.setenv("GPUHUB_OIDC_LOGIN_SERVICE", "Dex")
        try:
            dex.start([MIRA, OTTO, ROOT_USER])
            hub.start()
            yield hub, dex
        finally:
            hub.cleanup()
            dex.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies of the hub or of Dex)."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"login-oidc-{name}.png"), full_page=True)


def log_in(page: Any, hub: Hub, dex: Dex, user: DexUser, step: str) -> None:
    log_in_in_browser(page, hub.url, dex, user, screenshot, step)


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def test_dex_sends_groups_in_the_id_token_and_from_userinfo(oidc: tuple[Hub, Dex]) -> None:
    # What the example relies on: static password users' groups reach the hub (Dex >= 2.45),
    # from the userinfo endpoint as well as in the ID token.
    _, dex = oidc
    tokens = dex.password_grant(MIRA)
    assert claims(tokens["id_token"])["groups"] == ["vision"]
    userinfo = requests.get(
        f"{dex.issuer}/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=10,
    )
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json()["groups"] == ["vision"]
    assert userinfo.json()["preferred_username"] == "mira"


@pytest.mark.browser
def test_the_team_comes_from_the_provider_group_and_goes_with_it(
    oidc: tuple[Hub, Dex], browser: Any
) -> None:
    hub, dex = oidc
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, hub, dex, MIRA, "1-member")
        page.wait_for_url(f"{hub.url}hub/spawn**")
        page.wait_for_selector("#gpuhub-profile-h100-single")
        screenshot(page, "1-member-3-spawn-form")
        assert "Charged to Computer Vision Lab" in page.inner_text(".gpuhub-team")
        assert hub.user("mira")["groups"] == ["vision"]
        assert hub.user("mira")["admin"] is False
    finally:
        context.close()

    # At the provider, mira moves from vision to students; Dex restarts with that (memory storage).
    dex.restart([MIRA_MOVED, OTTO, ROOT_USER])
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, hub, dex, MIRA_MOVED, "2-moved")
        page.wait_for_url(f"{hub.url}hub/spawn**")
        page.wait_for_selector("#gpuhub-profile-l4-single")
        screenshot(page, "2-moved-3-spawn-form")
        assert "Charged to Data Science Course" in page.inner_text(".gpuhub-team")
        assert page.query_selector("#gpuhub-profile-h100-single") is None
        assert "Computer Vision Lab" not in page.content()
        assert hub.user("mira")["groups"] == ["students"]
    finally:
        context.close()


@pytest.mark.browser
def test_a_user_in_no_allowed_group_is_refused(oidc: tuple[Hub, Dex], page: Any) -> None:
    hub, dex = oidc
    log_in(page, hub, dex, OTTO, "3-refused")
    message = page.wait_for_selector("text=your account is in none of the groups")
    assert message is not None
    screenshot(page, "3-refused-3-hub-page")
    assert "Ask your team lead to add you to your team's group" in page.content()
    assert "403" in page.content()
    assert hub.api("GET", "/users/otto").status_code == 404


@pytest.mark.browser
def test_members_of_the_admin_groups_are_admins(oidc: tuple[Hub, Dex], page: Any) -> None:
    hub, dex = oidc
    log_in(page, hub, dex, ROOT_USER, "4-admin")
    page.wait_for_url(f"{hub.url}hub/spawn**")
    screenshot(page, "4-admin-3-spawn-form")
    user = hub.user("root")
    assert user["admin"] is True
    assert user["groups"] == ["hub-admins"]
    # and read every team's usage reports
    me = requests.get(
        f"{hub.url}hub/api/user",
        headers={"Authorization": f"token {hub.token_for('root')}"},
        timeout=60,
    )
    assert "custom:gpu-usage:read" in me.json()["scopes"], me.text
    # gpuhub up's shared-password admin is nobody at the provider: no role for a user of that name
    # (JupyterHub would create "admin" to hold it, and a provider account so named would get it).
    assert hub.api("GET", "/users/admin").status_code == 404
