"""A team crossing its budget thresholds on a real hub (`gpuhub up`, the gpuhub service, a real
server on a simulated H100): the alert arrives by email at a real SMTP server (aiosmtpd) and as
a webhook at a real HTTP receiver, each threshold once, to the recipients the catalog and the
hub say: the team's lead by name, the hub's admins as the test reads them from the hub's REST
API itself, and the alert's own address.

Broken once: the step left out of the service's tick (nothing arrived in 90 s)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.receivers import http_server, smtp_server

from .conftest import Hub, needs_local_hub, wait_for

TICK = 2  # seconds between the service's ticks in this catalog


def alerts_catalog(workdir: Path, smtp_port: int, hook: str) -> Path:
    """The example catalog with vision's budget at 0.002 GPU-hours (7.2 GPU-seconds), its
    alerts switched on (50 % and 100 %, actual and forecast, the forecast from the month's
    first second), email to the SMTP server and the webhook to the receiver."""
    text = (Path(__file__).parents[2] / "hub_config" / "catalog.yaml").read_text()
    text = text.replace("reconcile_interval: 30s", f"reconcile_interval: {TICK}s")
    text = text.replace("monthly_gpu_hours: 2000", "monthly_gpu_hours: 0.002")
    old = "      stop_running_over_budget_after: 2h\n"
    assert old in text
    text = text.replace(
        old,
        "      budget_alerts:\n"
        "        thresholds: [50, 100]\n"
        "        forecast_after: 1s\n"
        "        to: {emails: [finance@example.org]}\n",
    )
    text += (
        "notifications:\n"
        f"  email: {{smtp: '127.0.0.1:{smtp_port}', from: gpuhub@example.org, starttls: false,"
        " address: '{user}@example.org'}\n"
        f"  webhook: {{url: '{hook}'}}\n"
    )
    catalog = workdir / "catalog.yaml"
    catalog.write_text(text)
    return catalog


@pytest.mark.integration
def test_a_team_crossing_its_budget_alerts_by_email_and_webhook(tmp_path: Path) -> None:
    needs_local_hub()
    with smtp_server() as (mailbox, port), http_server() as web:
        catalog = alerts_catalog(tmp_path, port, f"{web.url}/hook")
        hub = Hub(tmp_path, "1xh100-80gb", "--config", str(catalog), "--no-culling")
        try:
            hub.start()
            admins = sorted(u["name"] for u in hub.api("GET", "/users").json() if u["admin"])
            assert admins, "gpuhub up makes an admin user"
            hub.start_server("lin", {"profile": "h100-single", "team": "vision"})
            time.sleep(8)  # past 7.2 GPU-seconds: 100 % of the budget
            hub.stop_server("lin")

            def both_hundreds() -> list[tuple[int, str]]:
                got = [(e["threshold"], e["basis"]) for e in web.bodies()]
                return got if {(100, "actual"), (100, "forecast")} <= set(got) else []

            wait_for("the 100 % alerts by webhook", both_hundreds, 90, 0.5)
            time.sleep(3 * TICK + 6)  # a few more ticks and notifier cycles: nothing again
        finally:
            hub.cleanup()

    webhooks = [(e["threshold"], e["basis"]) for e in web.bodies()]
    assert Counter(webhooks).most_common(1)[0][1] == 1, f"each alert once: {webhooks}"
    assert set(webhooks) <= {(50, "actual"), (50, "forecast"), (100, "actual"), (100, "forecast")}
    ((path, headers, body), *_) = web.posts
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    event = json.loads(body)
    assert set(event) == {
        "event", "team", "team_name", "month", "threshold", "basis", "used", "budget",
        "forecast", "cost", "currency", "text",
    }  # fmt: skip
    assert (event["event"], event["team"], event["budget"]) == ("budget.alert", "vision", 0.002)
    assert event["currency"] == "USD" and event["text"].startswith("Budget alert: team Computer")

    expected = sorted(
        ["ada@example.org", "finance@example.org"] + [f"{a}@example.org" for a in admins]
    )
    by_subject: dict[str, list[str]] = {}
    for mail in mailbox.messages():
        by_subject.setdefault(mail["Subject"].strip(), []).append(str(mail["To"]))
    assert len(by_subject) == len(webhooks), "an email subject per alert"
    for subject, recipients in by_subject.items():
        assert sorted(recipients) == expected, subject
    assert (
        "GPU budget: Computer Vision Lab has used 100% of "
        f"{time.strftime('%B %Y', time.gmtime())}'s budget" in by_subject
    )
