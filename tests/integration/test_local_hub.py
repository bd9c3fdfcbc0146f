"""`gpuhub up` the way an operator and users meet it: the command line, then one real hub
(JupyterHub, configurable-http-proxy, JupyterLab servers) with simulated GPUs, driven through the
login form, the spawn page and the REST API, and restarted on the same state directory.

The hub tests share one hub and run in file order: forms and refusals first, then spawns, then the
restart. The GPU holdings asserted are those of earlier tests in this file.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jupyterhub
import pytest
import requests

from spawner_ext.catalog import load_catalog
from spawner_ext.ledger.store import Ledger
from spawner_ext.up import (
    CONFIG_FILE_TEXT,
    UpSettings,
    example_catalog,
    hub_config,
    suggested_users,
)

from .conftest import Hub, wait_for

JUPYTERHUB_MAJOR = int(jupyterhub.__version__.split(".")[0])

ROOT = Path(__file__).parents[2]
SIMULATED = "2xh100-80gb,1xl4"
H100 = ["GPU-sim-00000000-h100-80gb", "GPU-sim-00000001-h100-80gb"]


def gpuhub_up(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spawner_ext.cli", "up", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the command line, before anything starts ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "'0' is not a TCP port"),
        (["--port", "http"], "'http' is not a TCP port"),
        (["--config", "missing.yaml"], "--config missing.yaml: no such file"),
        (["--jupyterhub-config", "missing.py"], "--jupyterhub-config missing.py: no such file"),
        (["--simulate-gpus", "4xh200"], "unknown GPU type 'h200'"),
        (["--simulate-gpus", "lots"], "cannot read 'lots'"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_bad_arguments_exit_2_and_start_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = gpuhub_up(*args, "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "state").exists()


def test_invalid_catalog_prints_its_problems_and_starts_nothing(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    text = example_catalog().read_text().replace("price_per_hour: 4.10", "price_per_hour: lots")
    catalog.write_text(text)
    line = text[: text.index("price_per_hour: lots")].count("\n") + 1
    result = gpuhub_up("--config", str(catalog), "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
    assert result.returncode == 1
    assert re.search(
        rf"^{re.escape(str(catalog))}:{line}:\d+: .*price_per_hour", result.stderr, re.M
    )
    assert "nothing started" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_bad_passwords_file_names_file_and_line_and_starts_nothing(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords.yaml"
    passwords.write_text("ada: ada-has-her-own\nlin: short\n")
    passwords.chmod(0o600)
    result = gpuhub_up(
        "--passwords", str(passwords), "--state-dir", str(tmp_path / "s"), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert f"{passwords}:2:6: lin: the password has 5 characters; use 8 or more" in result.stderr
    assert "short" not in result.stderr, "the password is not shown"
    assert "nothing started" in result.stderr
    assert not (tmp_path / "s").exists()


def test_shipped_example_and_config_are_the_repository_files() -> None:
    assert example_catalog().read_bytes() == (ROOT / "hub_config" / "catalog.yaml").read_bytes()
    assert (ROOT / "hub_config" / "jupyterhub_config.py").read_text() == CONFIG_FILE_TEXT


def test_settings_travel_through_the_environment(tmp_path: Path) -> None:
    settings = UpSettings(
        catalog=ROOT / "hub_config" / "catalog.yaml",
        state_dir=tmp_path / "state",
        password="secret-password",
        admin_password="a" * 40,
        port=9000,
        hub_port=9001,
        proxy_api_port=9002,
        simulate_gpus="2xl4",
        keep_servers=True,
        extra_config=tmp_path / "extra.py",
    )
    assert UpSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="GPUHUB_PASSWORD"):
        UpSettings.from_env({})
    config = hub_config(settings)
    assert config["JupyterHub"]["bind_url"] == "http://127.0.0.1:9000/"
    assert config["JupyterHub"]["db_url"] == f"sqlite:///{tmp_path}/state/jupyterhub.sqlite"
    assert config["JupyterHub"]["cleanup_servers"] is False
    assert config["GPULocalSpawner"]["simulated_gpus"] == "2xl4"
    assert config["SharedPasswordAuthenticator"]["admin_users"] == {"admin"}


def test_suggested_users_come_from_the_catalog() -> None:
    users = dict(suggested_users(load_catalog(example_catalog())))
    assert users["ada"] == "team vision"
    assert users["lin"] == "teams vision, nlp: chooses the team to charge"
    assert users["any other name"] == "no team: CPU profiles only"


# --- one real hub ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(start_hub: Any) -> Hub:
    started: Hub = start_hub(SIMULATED)
    return started


class FormParser(HTMLParser):
    """The spawn form's profiles, team choices, notes and quota lines."""

    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[str] = []
        self.teams: list[str] = []
        self.hidden_team: str | None = None
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "input" and a.get("name") == "profile":
            self.profiles.append(a.get("value") or "")
        if tag == "input" and a.get("name") == "team":
            if a.get("type") == "hidden":
                self.hidden_team = a.get("value")
            else:
                self.teams.append(a.get("value") or "")


def spawn_page(hub: Hub, user: str) -> tuple[str, FormParser]:
    session, response = hub.login(user)
    assert response.status_code == 200
    assert response.url == f"{hub.url}hub/spawn"
    page = session.get(f"{hub.url}hub/spawn/{user}", timeout=60)
    html = page.content.decode()
    form = FormParser()
    form.feed(html)
    return html, form


@pytest.mark.integration
def test_login_with_the_printed_password(hub: Hub) -> None:
    assert "gpuhub is running at " + hub.url in "".join(hub.output)
    _, response = hub.login("someone", "not-the-password")
    assert response.status_code == 403
    _, response = hub.login("someone")
    assert response.status_code == 200
    assert response.url == f"{hub.url}hub/spawn"
    _, response = hub.login("admin", hub.admin_password)
    assert response.status_code == 200
    assert hub.user("admin")["admin"] is True


@pytest.mark.integration
def test_spawn_page_shows_a_team_members_profiles_with_price_and_quota(hub: Hub) -> None:
    html, form = spawn_page(hub, "ada")
    assert form.profiles == ["cpu-small", "mig-slice", "l4-single", "a100-single", "h100-single"]
    assert form.hidden_team == "vision"
    assert "gpuhub-simulated" in form.ids
    assert "Charged to <strong>Computer Vision Lab</strong>" in html
    assert "4.10 USD per hour" in html
    assert "vision: 8 of 8 NVIDIA H100 80GB free; you may hold 4 more GPUs" in html


@pytest.mark.integration
def test_spawn_page_offers_only_cpu_to_someone_in_no_team(hub: Hub) -> None:
    html, form = spawn_page(hub, "zed")
    assert form.profiles == ["cpu-small"]
    assert "gpuhub-no-team" in form.ids
    assert "ask your admin to add\n    you to a team" in html
    assert "USD per hour" not in html


@pytest.mark.integration
def test_spawn_page_lets_a_member_of_two_teams_choose(hub: Hub) -> None:
    html, form = spawn_page(hub, "lin")
    assert form.teams == ["nlp", "vision"]
    assert form.hidden_team is None
    assert "h100-quad" in form.profiles  # nlp's
    assert "nlp: 16 of 16 NVIDIA H100 80GB free" in html
    assert "vision: 8 of 8 NVIDIA H100 80GB free" in html


FORGED = [
    pytest.param("ada", {"profile": "h100-octo"}, "unknown profile 'h100-octo'", id="unknown"),
    pytest.param(
        "ada", {"profile": "h100-quad"}, "'h100-quad' is only for the teams: nlp", id="not-team"
    ),
    pytest.param(
        "ada",
        {"profile": "h100-single", "gpu_count": "8"},
        "has no option 'gpu_count'",
        id="gpu-count",
    ),
    pytest.param(
        "ada", {"profile": "h100-single", "gpu_count": 8}, "must be text", id="gpu-count-int"
    ),
    pytest.param(
        "ada",
        {"profile": "cpu-small", "image": "tensorflow"},
        "'tensorflow' is not a choice of option 'image'",
        id="choice",
    ),
    pytest.param(
        "ada",
        {"profile": "cpu-small", "image--unlisted-choice": "docker.io/evil/miner:latest"},
        "Use an image from quay.io with a tag",
        id="regex",
    ),
    pytest.param(
        "ada",
        {"profile": "cpu-small", "image--unlisted-choice": "quay.io/a/b:1;rm -rf /"},
        "is not accepted for 'image'",
        id="shell",
    ),
    pytest.param(
        "ada",
        {"profile": "cpu-small", "image--unlisted-choice": "quay.io/a/b:1\nLD_PRELOAD=/x.so"},
        "must be one line",
        id="newline",
    ),
    pytest.param(
        "ada", {"profile": "cpu-small'><script>alert(1)</script>"}, "unknown profile", id="html"
    ),
    pytest.param(
        "ada",
        {"profile": "cpu-small", "kubespawner_override": {"image": "x"}},
        "must be text",
        id="override",
    ),
    pytest.param(
        "ada", {"profile": "cpu-small", "team": "nlp"}, "you are not in team 'nlp'", id="team"
    ),
    pytest.param("lin", {"profile": "h100-single"}, "choose the one to charge", id="no-team"),
    pytest.param("zed", {"profile": "h100-single"}, "you are in no team", id="no-team-gpu"),
    pytest.param("ada", ["h100-single"], "must be a JSON object", id="not-object"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("user", "options", "message"), FORGED)
def test_forged_spawn_requests_are_refused_before_anything_starts(
    hub: Hub, user: str, options: Any, message: str
) -> None:
    response = hub.spawn(user, options)
    if not isinstance(options, dict) and JUPYTERHUB_MAJOR < 6:
        # JupyterHub 5 itself refuses a body that is not an object (its user_options trait
        # raises, answered as a 500) before any spawner code runs; 6 hands it to us.
        # (Its server model may then linger in JupyterHub's bookkeeping; no process starts.)
        assert response.status_code == 500, response.text
    else:
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
        assert hub.user(user)["servers"] == {}
    assert not (hub.state_dir / "users" / user).exists()  # made only when a server starts


@pytest.mark.integration
def test_a_gpu_server_holds_its_simulated_gpu_and_answers_through_the_proxy(hub: Hub) -> None:
    model = hub.start_server("ada", {"profile": "h100-single", "image": "pytorch"})
    assert model["state"]["gpuhub_devices"] == [H100[0]]
    status = requests.get(
        f"{hub.url}user/ada/api/status",
        headers={"Authorization": f"token {hub.token}"},
        timeout=60,
    )
    assert status.status_code == 200, status.text
    assert "kernels" in status.json()
    env = hub.server_env("ada")
    # Simulated GPUs are no real devices: servers see no CUDA device and learn which simulated
    # GPU they hold from GPUHUB_SIMULATED_DEVICES.
    assert env["GPUHUB_SIMULATED_DEVICES"] == H100[0]
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["GPUHUB_PROFILE"] == "h100-single"
    assert env["GPUHUB_TEAM"] == "vision"
    assert env["HOME"] == str(hub.state_dir / "users" / "ada")
    assert not any(key.startswith("GPUHUB_PASSWORD") for key in env)


@pytest.mark.integration
def test_a_cpu_server_sees_no_gpu(hub: Hub) -> None:
    hub.start_server("zed", {"profile": "cpu-small", "image--unlisted-choice": "quay.io/a/b:1"})
    env = hub.server_env("zed")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "GPUHUB_SIMULATED_DEVICES" not in env
    assert hub.user("zed")["servers"][""]["state"].get("gpuhub_devices") is None
    hub.stop_server("zed")


@pytest.mark.integration
def test_the_form_previews_what_running_servers_hold(hub: Hub) -> None:
    html, _ = spawn_page(hub, "lin")  # ada holds one vision H100 now
    assert "vision: 7 of 8 NVIDIA H100 80GB free" in html
    assert "nlp: 16 of 16 NVIDIA H100 80GB free" in html


@pytest.mark.integration
def test_no_two_servers_share_a_gpu_and_stopping_frees_it(hub: Hub) -> None:
    grace = hub.start_server("grace", {"profile": "h100-single"})
    assert grace["state"]["gpuhub_devices"] == [H100[1]]
    refused = hub.spawn("lin", {"profile": "h100-single", "team": "vision"})
    assert refused.status_code == 400
    assert "2 in all, 0 free, held by ada/ (1), grace/ (1)" in refused.json()["message"]
    assert hub.user("lin")["servers"] == {}
    hub.stop_server("ada")
    lin = hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
    assert lin["state"]["gpuhub_devices"] == [H100[0]]
    assert hub.server_env("lin")["GPUHUB_SIMULATED_DEVICES"] == H100[0]


@pytest.mark.integration
def open_sessions(hub: Hub) -> dict[str, tuple[int, object]]:
    """user -> (session id, started_at) of the ledger's open sessions."""
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        return {s.user: (s.id, s.started_at) for s in ledger.open_sessions()}
    finally:
        ledger.engine.dispose()


@pytest.mark.integration
def test_a_restarted_hub_keeps_the_gpus_of_servers_that_survived(hub: Hub) -> None:
    survivors = {name: hub.user(name)["servers"][""]["state"]["pid"] for name in ("lin", "grace")}
    billed_before = open_sessions(hub)
    assert set(billed_before) == {"lin", "grace"}
    hub.crash()  # SIGKILL
    hub.start()  # `gpuhub up` again on the same state directory
    # The surviving servers' sessions go on: nothing closed and reopened, nothing billed twice.
    assert open_sessions(hub) == billed_before
    for name, pid in survivors.items():
        server = hub.user(name)["servers"][""]
        assert server["ready"], server
        assert server["state"]["pid"] == pid
    status = requests.get(
        f"{hub.url}user/lin/api/status",
        headers={"Authorization": f"token {hub.token}"},
        timeout=60,
    )
    assert status.status_code == 200, status.text
    refused = hub.spawn("ada", {"profile": "h100-single"})
    assert refused.status_code == 400
    assert "0 free, held by grace/ (1), lin/ (1)" in refused.json()["message"]
    hub.stop_server("grace")
    ada = hub.start_server("ada", {"profile": "h100-single"})
    assert ada["state"]["gpuhub_devices"] == [H100[1]]  # not lin's, though lower
    ledger = Ledger.open(f"sqlite:///{hub.state_dir / 'gpuhub-ledger.sqlite'}")
    try:
        grace = ledger.session(billed_before["grace"][0])
    finally:
        ledger.engine.dispose()
    assert grace is not None
    assert grace.end_reason == "stopped"
    assert grace.gpu_seconds is not None
    assert grace.gpu_seconds > 0


@pytest.mark.integration
def test_home_page_shows_each_running_servers_gpus_team_and_cost(hub: Hub) -> None:
    if "" in hub.user("ada")["servers"]:  # left running by the restart test
        hub.stop_server("ada")
    requested = time.time()
    hub.start_server("ada", {"profile": "h100-single"})
    ready = time.time()
    try:
        time.sleep(12)  # 4.10 USD per hour: more than a cent
        session, _ = hub.login("ada")
        loading = time.time()
        html = session.get(f"{hub.url}hub/home", timeout=60).content.decode()
        loaded = time.time()
        assert 'id="start"' in html, "JupyterHub's own home page is still there"
        row = re.search(
            r'<tr class="gpuhub-running-server" data-server-name="">(.*?)</tr>', html, re.S
        )
        assert row is not None, html
        cells = [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
        assert cells[:4] == [
            "default",
            "One H100 80GB",
            "1 \N{MULTIPLICATION SIGN} NVIDIA H100 80GB",
            "Computer Vision Lab",
        ]
        # Billed from before the server was ready until the page was made: at least the time
        # from ready to loading, at most the time from the request to loaded (whole seconds).
        seconds = re.fullmatch(r"(\d+) s", cells[4])
        assert seconds, cells[4]
        low, high = math.floor(loading - ready), math.ceil(loaded - requested)
        assert low <= int(seconds.group(1)) <= high, (cells[4], low, high)
        cost = re.fullmatch(r"(\d+\.\d\d) USD", cells[5])
        assert cost, cells[5]
        cent, price = Decimal("0.01"), Decimal("4.10")
        cheapest = (price * low / 3600).quantize(cent, ROUND_FLOOR)
        dearest = (price * high / 3600).quantize(cent, ROUND_CEILING)
        assert Decimal("0.01") <= cheapest <= Decimal(cost.group(1)) <= dearest, cells[5]
        assert "GPU usage</a> page" in html
    finally:
        hub.stop_server("ada")
    session, _ = hub.login("ada")
    html = session.get(f"{hub.url}hub/home", timeout=60).content.decode()
    assert "gpuhub-running-server" not in html, "a stopped server is not listed"


@pytest.mark.integration
def test_stopping_gpuhub_up_stops_everything(hub: Hub) -> None:
    pids = hub.server_pids()
    assert pids
    assert hub.stop() == 0
    gone = wait_for("the servers to stop", lambda: not hub.server_pids(), 60)
    assert gone
    assert not (hub.state_dir / "jupyterhub.pid").exists()


@pytest.mark.integration
def test_keep_servers_leaves_servers_and_their_gpus_to_the_next_hub(start_hub: Any) -> None:
    hub: Hub = start_hub(SIMULATED, "--keep-servers")
    before = hub.start_server("ada", {"profile": "h100-single"})
    assert hub.stop() == 0
    pid = before["state"]["pid"]
    assert pid in hub.server_pids()  # still running, without a hub
    hub.start()
    after = hub.user("ada")["servers"][""]
    assert after["ready"]
    assert after["state"]["pid"] == pid
    assert after["state"]["gpuhub_devices"] == [H100[0]]
    grace = hub.start_server("grace", {"profile": "h100-single"})
    assert grace["state"]["gpuhub_devices"] == [H100[1]]


@pytest.mark.integration
def test_with_passwords_each_user_logs_in_with_their_own_only(
    start_hub: Any, tmp_path: Path
) -> None:
    """`gpuhub up --passwords FILE`: no shared password is printed; the users the file names
    log in with their own password, not another's; other names cannot log in; admin keeps the
    printed admin password."""
    passwords = tmp_path / "passwords.yaml"
    passwords.write_text("ada: ada-has-her-own\nlin: lin-has-his-own\n")
    passwords.chmod(0o600)
    hub: Hub = start_hub(SIMULATED, "--passwords", str(passwords))
    output = "".join(hub.output)
    assert hub.password == "" and "Password:" not in output
    assert f"a user named in {passwords}, with that user's own password" in output
    _, response = hub.login("ada", "ada-has-her-own")
    assert response.status_code == 200 and response.url == f"{hub.url}hub/spawn"
    for name, password in [
        ("ada", "lin-has-his-own"),  # another user's password
        ("lin", "ada-has-her-own"),
        ("zed", "ada-has-her-own"),  # a name the file does not have
        ("admin", "ada-has-her-own"),
    ]:
        _, response = hub.login(name, password)
        assert response.status_code == 403, (name, password)
    _, response = hub.login("admin", hub.admin_password)
    assert response.status_code == 200
    assert hub.user("admin")["admin"] is True
    assert hub.user("ada")["admin"] is False
