"""Budget alerts on a real ledger (SQLite, and PostgreSQL where the tests have it), a real hub
REST API at a URL (its `GET /users`), a real SMTP server and a real HTTP receiver: a team's
GPU-hours crossing thresholds queue one message per recipient, once, with two services racing
and across a restart, and the notifier delivers each once.

The GPU-hours are the test's own arithmetic (GPUs x hours since the server started, on the fake
clock), not the ledger's."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, parse_catalog
from spawner_ext.ledger.budget_alerts import BudgetAlertOutbox
from spawner_ext.ledger.models import Notification
from spawner_ext.ledger.outbox import Outbox
from spawner_ext.ledger.reconcile import RunningServer
from spawner_ext.ledger.store import Ledger
from spawner_ext.service.budget_alerts import BudgetAlerter
from spawner_ext.service.hubapi import HubAPI, HubAPIError
from spawner_ext.service.metering import reconcile_once
from spawner_ext.service.notifier import LEASE, Notifier
from tests.ledger.conftest import FakeClock
from tests.receivers import Mailbox, Web, http_server, smtp_server

EXAMPLE = Path(__file__).parents[2] / "hub_config" / "catalog.yaml"
HUB_USERS = [
    {"name": "ada", "admin": False, "groups": ["vision"]},
    {"name": "zoe", "admin": False, "groups": ["vision-leads"]},
    {"name": "root", "admin": True, "groups": []},
    {"name": "lin", "admin": False, "groups": ["vision", "nlp"]},
]
RECIPIENTS = ["ada@example.org", "finance@example.org", "root@example.org", "zoe@example.org"]
"""vision's lead by name, a member of its lead group, the admin, the alert's own address."""


def alert_catalog(smtp_port: int, web: Web) -> Catalog:
    """The example catalog: vision's budget 10 GPU-hours, its commented alerts switched on,
    email to the SMTP server and the webhook to the receiver."""
    text = EXAMPLE.read_text().replace("monthly_gpu_hours: 2000", "monthly_gpu_hours: 10")
    block = re.search(r"^      # budget_alerts:.*\n(?:      #   .*\n)+", text, re.MULTILINE)
    assert block is not None
    text = text.replace(block[0], re.sub(r"^(\s*)# ", r"\1", block[0], flags=re.MULTILINE))
    text += (
        "notifications:\n"
        f"  email: {{smtp: '127.0.0.1:{smtp_port}', from: gpuhub@example.org, starttls: false,"
        " address: '{user}@example.org'}\n"
        f"  webhook: {{url: '{web.url}/hook'}}\n"
    )
    return parse_catalog(text, "catalog.yaml")


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as found:
        yield found


@pytest.fixture
def web() -> Iterator[Web]:
    with http_server() as found:
        found.users = list(HUB_USERS)
        yield found


def gpus_running(ledger: Ledger, clock: FakeClock, started: datetime, gpus: int = 2) -> None:
    """lin's server of `gpus` H100s, charged to vision, running since `started`."""
    server = RunningServer(
        user="lin",
        server_name="",
        team="vision",
        profile="h100-quad",
        gpu_type="h100-80gb",
        gpu_count=gpus,
        price_per_hour=Decimal("4.10") * gpus,
        currency="USD",
        session="1",
        started_at=started,
        runtime_ref="local:100",
    )
    reconcile_once(ledger, [server], observed_at=clock(), tick=timedelta(seconds=30))


async def step(db_url: str, catalog: Catalog, clock: FakeClock, web: Web) -> int:
    """One service's budget-alert step, with its own ledger connection and hub client (as a
    second service, or this one after a restart, has)."""
    ledger = Ledger.open(db_url, clock=clock)
    hub = HubAPI(f"{web.url}/hub/api", "service-token")
    try:
        return await BudgetAlerter(ledger, hub, clock).step(catalog)
    finally:
        hub.close()
        ledger.engine.dispose()


def rows(ledger: Ledger) -> list[Notification]:
    return Outbox(ledger.engine).messages("budget:")


def alerts_of(found: list[Notification]) -> dict[str, list[str]]:
    """Per alert key (budget:<month>:<team>:<threshold>:<basis>), its recipients."""
    by_alert: dict[str, list[str]] = {}
    for row in found:
        alert = ":".join(row.key.split(":")[:5])
        by_alert.setdefault(alert, []).append(row.recipient)
    return {k: sorted(v) for k, v in by_alert.items()}


async def deliver(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> Notifier:
    notifier = Notifier(Outbox(ledger.engine, clock=clock), lambda: catalog, {}, clock)
    await notifier.cycle()
    return notifier


# --- tests -------------------------------------------------------------------------------------


async def test_crossing_thresholds_queues_each_alert_once_per_recipient(
    ledger: Ledger, db_url: str, clock: FakeClock, mail: tuple[Mailbox, int], web: Web
) -> None:
    """Broken once: the members of the team's lead groups left out (zoe got nothing)."""
    mailbox, port = mail
    catalog = alert_catalog(port, web)
    gpus_running(ledger, clock, clock() - timedelta(hours=3))
    # 2 GPUs x 3 h = 6 of 10 GPU-hours (60 %). 23.5 of November's 30 days are gone:
    # forecast 6 x 720 / 564 = 7.66 (77 %).
    assert await step(db_url, catalog, clock, web) == 2 * 5
    assert await step(db_url, catalog, clock, web) == 0, "nothing twice"
    month = "budget:2026-11:vision"
    hook = f"{web.url}/hook"
    assert alerts_of(rows(ledger)) == {
        f"{month}:50:actual": sorted([*RECIPIENTS, hook]),
        f"{month}:50:forecast": sorted([*RECIPIENTS, hook]),
    }

    clock.advance(hours=1)  # 8 GPU-hours (80 %); forecast 8 x 720 / 565 = 10.19 (102 %)
    assert await step(db_url, catalog, clock, web) == 2 * 5
    assert set(alerts_of(rows(ledger))) == {
        f"{month}:50:actual",
        f"{month}:50:forecast",
        f"{month}:80:actual",
        f"{month}:100:forecast",
    }

    await deliver(ledger, catalog, clock)
    assert mailbox.recipients() == sorted(RECIPIENTS * 4)
    subjects = sorted({m["Subject"].strip() for m in mailbox.messages()})  # folded: " GPU.."
    assert subjects == [
        "GPU budget: Computer Vision Lab has used 50% of November 2026's budget",
        "GPU budget: Computer Vision Lab has used 80% of November 2026's budget",
        "GPU budget: Computer Vision Lab is on course for 100% of November 2026's budget",
        "GPU budget: Computer Vision Lab is on course for 50% of November 2026's budget",
    ]
    events = {(e["threshold"], e["basis"]): e for e in web.bodies()}
    assert sorted(events) == [(50, "actual"), (50, "forecast"), (80, "actual"), (100, "forecast")]
    latest = events[(80, "actual")]
    # cost: 8.20 per hour (two H100 at 4.10) for 4 h
    assert (latest["used"], latest["budget"], latest["cost"]) == (8, 10, 32.8)
    assert latest["forecast"] == 10.195 and latest["currency"] == "USD"
    assert latest["text"].startswith("Budget alert: team Computer Vision Lab (vision) has used 8")


async def test_two_services_racing_queue_each_message_once(
    ledger: Ledger, db_url: str, clock: FakeClock, mail: tuple[Mailbox, int], web: Web
) -> None:
    """Two services on one ledger step at the same moment, each in a thread with its own
    connections. Broken once: `queue_message` without ON CONFLICT DO NOTHING (the second
    service's transaction failed on the unique key). Also caught: the count of new messages
    taken from rowcount, which PostgreSQL's driver reads as -1 here (both said 10)."""
    mailbox, port = mail
    catalog = alert_catalog(port, web)
    gpus_running(ledger, clock, clock() - timedelta(hours=3))
    both = await asyncio.gather(
        *(asyncio.to_thread(asyncio.run, step(db_url, catalog, clock, web)) for _ in range(2))
    )
    assert len(rows(ledger)) == 10
    assert sum(both) == 10, f"each of the 10 messages queued by exactly one service: {both}"
    await deliver(ledger, catalog, clock)
    assert mailbox.recipients() == sorted(RECIPIENTS * 2)
    assert len(web.posts) == 2


async def test_a_restart_neither_loses_nor_repeats_an_alert(
    ledger: Ledger, db_url: str, clock: FakeClock, mail: tuple[Mailbox, int], web: Web
) -> None:
    """The hub does not answer at the first crossing (nothing is queued, and nothing is
    marked fired); the next tick queues the alert; the service is killed after its notifier
    claimed a message; the restarted one queues nothing again and sends every message once.
    Broken once: the hub's failure swallowed and the alert queued without the users it lists
    (the leads' and the admin's emails were lost for good: the alert counted as fired)."""
    mailbox, port = mail
    catalog = alert_catalog(port, web)
    gpus_running(ledger, clock, clock() - timedelta(hours=3))
    web.failing = True
    with pytest.raises(HubAPIError):
        await step(db_url, catalog, clock, web)
    assert rows(ledger) == [], "nothing queued while the recipients are unknown"
    web.failing = False
    clock.advance(seconds=30)
    assert await step(db_url, catalog, clock, web) == 10

    first = Notifier(Outbox(ledger.engine, clock=clock), lambda: catalog, {}, clock)
    claimed = first.outbox.due(clock())[0]
    assert first.outbox.claim(claimed.id, clock(), LEASE)
    del first  # killed between its claim and the send

    clock.advance(seconds=30)  # the restarted service
    assert await step(db_url, catalog, clock, web) == 0
    restarted = await deliver(ledger, catalog, clock)
    assert restarted.status.sent == 9, "the claimed one waits for the lease"
    clock.advance(seconds=LEASE.total_seconds())
    for _ in range(3):  # 6.1 GPU-hours by the end, forecast 7.8: no new threshold
        await restarted.cycle()
        clock.advance(seconds=30)
        assert await step(db_url, catalog, clock, web) == 0
    assert mailbox.recipients() == sorted(RECIPIENTS * 2)
    assert len(web.posts) == 2
    assert all(row.sent_at is not None for row in rows(ledger))


async def test_a_new_month_alerts_again(
    ledger: Ledger, db_url: str, clock: FakeClock, mail: tuple[Mailbox, int], web: Web
) -> None:
    """November's alerts do not stop December's: the server runs on over the boundary.
    Broken once: `fired` reading every month's keys (December's 50 % counted as sent)."""
    _, port = mail
    catalog = alert_catalog(port, web)
    clock.now = datetime.fromisoformat("2026-11-30T20:00:00+00:00")
    gpus_running(ledger, clock, clock() - timedelta(hours=3))
    assert await step(db_url, catalog, clock, web) == 10  # 6 GPU-hours: 50 % both ways
    clock.now = datetime.fromisoformat("2026-12-01T03:00:00+00:00")
    # December: 2 GPUs x 3 h = 6 GPU-hours again; its forecast waits for forecast_after
    assert await step(db_url, catalog, clock, web) == 5
    fired = BudgetAlertOutbox(ledger.engine).fired("2026-12")
    assert fired == {"vision": {(50, "actual")}}
