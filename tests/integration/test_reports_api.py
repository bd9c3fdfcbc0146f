"""The report API of the gpuhub service under a real hub, with real JupyterHub tokens: a lead
reads their team and gets 403 for another, a member reads only their own usage, an admin reads
every team and the catalog's status; CSV carries the JSON's rows; wrong parameters get 400."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .borrowed import add_borrowed_session
from .conftest import Hub, usage_hub
from .measured import BUSY_SECONDS, HELD_SECONDS, Measured, add_measured_session

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with usage_hub(tmp_path_factory.mktemp("reports")) as started:
        yield started


@pytest.fixture(scope="module")
def measured(hub: Hub) -> Measured:
    return add_measured_session(hub)


@pytest.fixture(scope="module")
def tokens(hub: Hub) -> dict[str, str]:
    return {name: hub.token_for(name) for name in ("ada", "grace", "lin", "admin")}


def get(hub: Hub, path: str, token: str | None, **headers: str) -> requests.Response:
    if token:
        headers["Authorization"] = f"token {token}"
    return requests.get(f"{hub.url}services/gpu-usage/api/v1/{path}", headers=headers, timeout=30)


def rows(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["rows"]
    return found


@pytest.mark.integration
def test_a_lead_reads_their_team_by_user(hub: Hub, tokens: dict[str, str]) -> None:
    found = rows(get(hub, "usage?team=vision&by=user", tokens["ada"]))
    assert [(r["team"], r["user"]) for r in found] == [("vision", "ada"), ("vision", "lin")]
    assert all(r["gpu_hours"] > 0 and r["cost"] > 0 and r["currency"] == "USD" for r in found)
    assert all(r["sessions"] == 1 for r in found)
    # lin's server runs on with the notebook extension reporting: its idle time is known
    lin = next(r for r in found if r["user"] == "lin")
    assert lin["idle_gpu_hours"] is not None and lin["idle_gpu_hours"] >= 0
    # without team: the teams she leads
    assert {r["team"] for r in rows(get(hub, "usage", tokens["ada"]))} == {"vision"}


@pytest.mark.integration
def test_nobody_reads_another_teams_usage(hub: Hub, tokens: dict[str, str]) -> None:
    for path in ("usage?team=vision", "budget?team=vision", "usage?team=nlp,vision"):
        response = get(hub, path, tokens["grace"])
        assert response.status_code == 403, response.text
        assert "you may not read" in response.json()["message"]
    refused = get(hub, "usage?team=vision", tokens["lin"])
    assert refused.status_code == 403 and "your own usage only" in refused.json()["message"]
    assert get(hub, "usage?user=ada", tokens["lin"]).status_code == 403
    allocations = get(hub, "allocations", tokens["grace"]).json()["allocations"]
    assert allocations == [], "lin's running server is vision's, not nlp's"
    for path in ("usage", "allocations", "budget?team=vision", "catalog", "status/detail"):
        anonymous = get(hub, path, None)
        assert anonymous.status_code == 403, (path, anonymous.status_code)
        assert "JupyterHub API token" in anonymous.json()["message"], path
    assert get(hub, "catalog", tokens["ada"]).status_code == 403
    assert get(hub, "status/detail", tokens["ada"]).status_code == 403
    metrics = f"{hub.url}services/gpu-usage/metrics"
    for headers in ({}, {"Authorization": f"token {tokens['ada']}"}):
        assert requests.get(metrics, headers=headers, timeout=30).status_code == 403, headers


@pytest.mark.integration
def test_a_member_reads_their_own_usage(hub: Hub, tokens: dict[str, str]) -> None:
    found = rows(get(hub, "usage?by=user,profile", tokens["lin"]))
    assert [(r["user"], r["profile"]) for r in found] == [("lin", "h100-single")]
    (mine,) = get(hub, "allocations", tokens["lin"]).json()["allocations"]
    assert (mine["user"], mine["gpu_type"], mine["gpu_count"]) == ("lin", "h100-80gb", 1)


@pytest.mark.integration
def test_an_admin_reads_every_team_and_the_catalog(hub: Hub, tokens: dict[str, str]) -> None:
    found = rows(get(hub, "usage?by=gpu_type", tokens["admin"]))
    assert [(r["team"], r["gpu_type"]) for r in found] == [
        ("nlp", "h100-80gb"),
        ("vision", "h100-80gb"),
    ]
    status = get(hub, "catalog", tokens["admin"]).json()
    assert len(status["version"]) == 12 and status["last_error"] is None
    assert status["teams"] == ["nlp", "teaching", "vision"]
    detail = get(hub, "status/detail", tokens["admin"]).json()
    assert detail["runtime"] == "local" and detail["last_error"] is None


@pytest.mark.integration
def test_csv_carries_the_same_rows_as_json(hub: Hub, tokens: dict[str, str]) -> None:
    query = "usage?team=vision&by=day&by=user"
    as_json = rows(get(hub, query, tokens["ada"]))
    for response in (
        get(hub, query + "&format=csv", tokens["ada"]),
        get(hub, query, tokens["ada"], Accept="text/csv"),
    ):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in response.headers["Content-Disposition"]
        parsed = list(csv.DictReader(io.StringIO(response.text)))
        assert [(r["day"], r["user"]) for r in parsed] == [(r["day"], r["user"]) for r in as_json]
        for line, row in zip(parsed, as_json, strict=True):
            if row["user"] == "ada":  # stopped: exactly the same figures
                assert (float(line["gpu_hours"]), float(line["cost"])) == (
                    row["gpu_hours"],
                    row["cost"],
                )
            else:  # lin's server still runs: billed until the moment of each request
                assert float(line["gpu_hours"]) == pytest.approx(row["gpu_hours"], abs=0.002)


@pytest.mark.integration
def test_the_budget_burns_down_this_month(hub: Hub, tokens: dict[str, str]) -> None:
    response = get(hub, "budget?team=vision", tokens["ada"])
    assert response.status_code == 200, response.text
    budget = response.json()
    assert budget["budget_gpu_hours"] == 2000 and 0 < budget["used_gpu_hours"] < 1
    assert budget["days"][-1]["used_gpu_hours"] == budget["used_gpu_hours"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("usage?by=week", "by='week' is not a grouping"),
        ("usage?since=2026-12-05&until=2026-12-01", "must be before until"),
        ("usage?since=tomorrow", "is not a date; use YYYY-MM-DD"),
        ("usage?team=robotics", "unknown team 'robotics'"),
        ("usage?format=xml", "format must be json or csv"),
        ("budget?team=robotics", "is not a team"),
    ],
)
def test_wrong_parameters_get_400_with_the_reason(
    hub: Hub, tokens: dict[str, str], query: str, message: str
) -> None:
    response = get(hub, query, tokens["admin"])
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


@pytest.mark.integration
def test_the_openapi_description_is_served(hub: Hub) -> None:
    document = get(hub, "openapi.json", None).json()
    assert set(document["paths"]) == {
        "/usage",
        "/rightsizing",
        "/borrowing",
        "/allocations",
        "/budget",
        "/catalog",
        "/status",
        "/status/detail",
        "/activity",
        "/keep",
        "/waitlist",
        "/waitlist/preview",
        "/waitlist/{id}",
        "/waitlist/{id}/start",
    }


@pytest.mark.integration
def test_a_lead_reads_her_teams_utilisation_and_right_sizing_hints(
    hub: Hub, tokens: dict[str, str], measured: Measured
) -> None:
    """ben's two measured hours last month, 200 s busy: utilisation 200 / 7200; at most 6 GiB,
    busy 3 % of the time: a MIG slice (10 GiB, 0.30/h, which vision may start) would have done,
    saving (4.10 - 0.30) x 2 h. broken once: the hints read without reports/access.py's
    narrowing (grace read vision's hints: 200, not 403)."""
    usage = rows(get(hub, f"usage?team=vision&by=user&{measured.period}", tokens["ada"]))
    ben = next(r for r in usage if r["user"] == "ben")
    assert (ben["busy_gpu_hours"], ben["measured_gpu_hours"], ben["utilization"]) == (
        round(BUSY_SECONDS / 3600, 4),
        HELD_SECONDS / 3600,
        round(BUSY_SECONDS / HELD_SECONDS, 4),
    )
    as_csv = get(hub, f"usage?team=vision&by=user&{measured.period}&format=csv", tokens["ada"])
    line = next(r for r in csv.DictReader(io.StringIO(as_csv.text)) if r["user"] == "ben")
    assert float(line["utilization"]) == ben["utilization"]
    response = get(hub, f"rightsizing?team=vision&{measured.period}", tokens["ada"])
    assert response.status_code == 200, response.text
    (hint,) = [r for r in response.json()["rows"] if r["user"] == "ben"]
    assert (hint["profile"], hint["suggested_profile"], hint["busy_percent"]) == (
        "h100-single",
        "mig-slice",
        3,
    )
    assert hint["possible_saving"] == pytest.approx((4.10 - 0.30) * 2)
    assert "would have cost 0.30 USD/h instead of 4.10 USD/h" in hint["hint"]
    # nobody else reads vision's hints; a member reads only their own; no grouping to choose
    refused = get(hub, f"rightsizing?team=vision&{measured.period}", tokens["grace"])
    assert refused.status_code == 403 and "you may not read" in refused.json()["message"]
    own = get(hub, f"rightsizing?{measured.period}", tokens["lin"]).json()["rows"]
    assert own == [], "lin had no session last month"
    grouped = get(hub, "rightsizing?by=user", tokens["ada"])
    assert grouped.status_code == 400 and "per team, user and profile" in grouped.json()["message"]


@pytest.fixture(scope="module")
def borrowed(hub: Hub) -> Measured:
    return add_borrowed_session(hub)


@pytest.mark.integration
def test_leads_read_what_their_teams_borrowed_lent_and_lost_to_reclaim(
    hub: Hub, tokens: dict[str, str], borrowed: Measured
) -> None:
    """kim (vision) ran one H100 on nlp's quota for 3 h last month and it was reclaimed
    (tests/integration/borrowed.py). vision's lead reads kim's borrowed, reclaimed hours; nlp's
    lead reads the hours nlp lent, with no borrower named, as JSON and CSV, and gets 403 for
    vision's. broken once: the borrowing rows read without reports/access.py's narrowing
    (grace's report without a team carried vision's row, naming kim)."""
    period = borrowed.period
    vision = rows(get(hub, f"borrowing?team=vision&by=user&{period}", tokens["ada"]))
    assert vision == [
        {
            "team": "vision",
            "user": "kim",
            "borrowed_gpu_hours": 3.0,
            "borrowed_sessions": 1,
            "lent_gpu_hours": 0.0,
            "lent_sessions": 0,
            "reclaimed_gpu_hours": 3.0,
            "reclaims": 1,
        }
    ]
    lent = get(hub, f"borrowing?by=user&{period}", tokens["grace"])
    assert rows(lent) == [
        {
            "team": "nlp",
            "user": None,
            "borrowed_gpu_hours": 0.0,
            "borrowed_sessions": 0,
            "lent_gpu_hours": 3.0,
            "lent_sessions": 1,
            "reclaimed_gpu_hours": 0.0,
            "reclaims": 0,
        }
    ]
    assert "kim" not in lent.text
    as_csv = get(hub, f"borrowing?team=nlp&by=user&{period}&format=csv", tokens["grace"])
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(as_csv.text))) == [
        {
            "team": "nlp",
            "user": "",
            "borrowed_gpu_hours": "0.0",
            "borrowed_sessions": "0",
            "lent_gpu_hours": "3.0",
            "lent_sessions": "1",
            "reclaimed_gpu_hours": "0.0",
            "reclaims": "0",
        }
    ]
    refused = get(hub, f"borrowing?team=vision&{period}", tokens["grace"])
    assert refused.status_code == 403 and "you may not read" in refused.json()["message"]
    assert rows(get(hub, f"borrowing?{period}", tokens["lin"])) == [], "lin borrowed nothing"
    grouped = get(hub, f"borrowing?by=profile&{period}", tokens["admin"])
    assert grouped.status_code == 400
    assert "not a grouping of the borrowing report" in grouped.json()["message"]


@pytest.fixture
def prometheus(hub: Hub, tokens: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus on loopback, scraping the service's metrics every second with the
    admin's JupyterHub token. Its API URL."""
    import shutil
    import subprocess
    from urllib.parse import urlparse

    from spawner_ext.up import free_port

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: scripts/bootstrap installs Debian's package")
    target = urlparse(hub.url).netloc
    (tmp_path / "token").write_text(tokens["admin"])
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: gpuhub\n"
        "    metrics_path: /services/gpu-usage/metrics\n"
        f"    authorization: {{type: Bearer, credentials_file: {tmp_path / 'token'}}}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/api/v1/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.integration
def test_prometheus_scrapes_the_allocated_gpus(prometheus: str) -> None:
    from .conftest import wait_for

    def allocated() -> float | None:
        try:
            answer = requests.get(
                prometheus + "query",
                params={"query": 'sum(gpuhub_gpus_allocated{team="vision"})'},
                timeout=5,
            ).json()
        except requests.ConnectionError:
            return None
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    assert wait_for("Prometheus to scrape the service", allocated, 60, 1) == 1, "lin's GPU"
    targets = requests.get(prometheus + "targets", timeout=5).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
