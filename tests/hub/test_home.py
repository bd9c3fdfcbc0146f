"""The home page's row for a running server (pure) and the template variable that yields them."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.orm import Session

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.catalog.durations import spoken_duration
from spawner_ext.clock import utcnow
from spawner_ext.hub.home import (
    BilledPart,
    HomeServers,
    RunningServerView,
    running_server_view,
    stopped_notice,
)
from spawner_ext.hub.ledger_lane import LedgerLane
from spawner_ext.ledger.engine import SchemaError, upgrade
from spawner_ext.ledger.models import TeamMonthUsage
from spawner_ext.ledger.rules import month_key
from spawner_ext.ledger.store import Ledger
from spawner_ext.wire import ServerSummary

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
H100 = ServerSummary("vision", "h100-pair", "h100-80gb", 2, Decimal("8.20"), "USD", "abc")
CPU = ServerSummary(None, "cpu-small", None, 0, Decimal("0"), "USD", "abc")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3900, "1 h 05 min"),
        (47 * 3600 + 59 * 60, "47 h 59 min"),
        (50 * 3600, "2 d 2 h"),
        (7200, "2 h"),
        (48 * 3600, "2 d"),
        (-5, "0 s"),
    ],
)
def test_durations_read_like_a_person_would_say_them(seconds: int, text: str) -> None:
    assert spoken_duration(seconds) == text


def test_a_gpu_servers_cost_so_far_is_what_billing_counted(catalog: Catalog) -> None:
    view = running_server_view(
        "",
        H100,
        catalog,
        billed_since=NOW - timedelta(minutes=90),
        running_since=NOW - timedelta(minutes=91),
        now=NOW,
    )
    assert view == RunningServerView(
        server_name="",
        profile="h100-pair",  # no such profile in the catalog: its slug
        gpus="2 \N{MULTIPLICATION SIGN} NVIDIA H100 80GB",
        team="Computer Vision Lab",
        running_for="1 h 30 min",  # billed from the session's start, not the spawn request
        cost="12.30 USD",  # 1.5 h at 8.20 an hour (the whole server's price)
    )


def test_a_borrowed_server_says_so_and_costs_its_own_price(catalog: Catalog) -> None:
    """A borrowed server is marked, with its reclaim's stop when one is coming; its cost is its
    session's price (with the borrowed factor), not the plan's; a split run adds its earlier
    part and counts its time from the run's start. Broken once: the plan's price used (12.30)."""
    part = BilledPart(
        price_per_hour=Decimal("12.30"),  # 8.20 x 1.5
        borrowed=True,
        reclaim_at=NOW + timedelta(minutes=15),
    )
    view = running_server_view(
        "b", H100, catalog, billed_since=NOW - timedelta(hours=1), running_since=None, now=NOW,
        session=part,
    )  # fmt: skip
    assert (view.cost, view.borrowed) == (
        "12.30 USD",
        "borrowed from other teams' idle quota; stops at 12:15 UTC to give its GPUs back",
    )
    own = BilledPart(
        price_per_hour=Decimal("8.20"),
        run_since=NOW - timedelta(hours=2),
        earlier_cost=Decimal("12.30"),
    )
    went_on = running_server_view(
        "b", H100, catalog, billed_since=NOW - timedelta(hours=1), running_since=None, now=NOW,
        session=own,
    )  # fmt: skip
    assert (went_on.cost, went_on.running_for, went_on.borrowed) == ("20.50 USD", "2 h", None)


def test_without_the_ledger_the_cost_is_unknown_and_says_why(catalog: Catalog) -> None:
    view = running_server_view(
        "big",
        H100,
        catalog,
        billed_since=None,
        running_since=NOW - timedelta(seconds=30),
        now=NOW,
        note="the billing database does not answer",
    )
    assert (view.running_for, view.cost, view.note) == (
        "30 s",
        None,
        "the billing database does not answer",
    )


def test_a_cpu_server_has_no_gpu_charge(catalog: Catalog) -> None:
    view = running_server_view(
        "", CPU, catalog, billed_since=None, running_since=None, now=NOW, note="not metered"
    )
    assert (view.gpus, view.team, view.running_for, view.cost, view.note) == (
        "CPU only",
        None,
        None,
        "no GPU charge",
        None,
    )


class Spawner:
    def __init__(self, active: bool, view: RunningServerView | None) -> None:
        self.active, self.view = active, view

    async def home_view(self) -> RunningServerView | None:
        return self.view


class User:
    def __init__(self, spawners: dict[str, object]) -> None:
        self.spawners = spawners


async def listed(servers: HomeServers) -> list[RunningServerView]:
    return [view async for view in servers]


async def test_only_active_gpuhub_servers_are_listed_in_name_order() -> None:
    a = RunningServerView("a", "p", "CPU only", None, "1 s", "no GPU charge")
    default = RunningServerView("", "p", "CPU only", None, "1 s", "no GPU charge")
    user = User(
        {
            "a": Spawner(True, a),
            "": Spawner(True, default),
            "stopped": Spawner(False, a),
            "summaryless": Spawner(True, None),
            "other-spawner": object(),
        }
    )
    assert await listed(HomeServers(user)) == [default, a]
    assert await listed(HomeServers(None)) == []


def test_a_server_gpuhub_stopped_is_explained_for_a_day() -> None:
    ended = NOW - timedelta(hours=2)
    notice = stopped_notice("", "culled-gpu-idle", ended, None, NOW)
    assert notice is not None
    assert notice.message == (
        "Your server was stopped: its GPUs had been idle for the GPU idle timeout."
    )
    culler = stopped_notice("big", "max-age", ended, "This server was stopped: it ran 3 days.", NOW)
    assert culler is not None and culler.message == "This server was stopped: it ran 3 days."
    assert stopped_notice("", "stopped", ended, None, NOW) is None, "the user stopped it"
    assert stopped_notice("", "culled-idle", NOW - timedelta(days=2), None, NOW) is None


class TeamSpawner(Spawner):
    """A spawner as the budget notices read it: its summary, and the hub's context."""

    def __init__(self, active: bool, summary: ServerSummary, context: object) -> None:
        super().__init__(active, None)
        self.summary, self.context, self.ledger_url = summary, context, "sqlite://"

    def server_state(self) -> SimpleNamespace:
        return SimpleNamespace(summary=self.summary)


class Context:
    def __init__(self, catalog: Catalog, ledger: Ledger | None) -> None:
        self.store = SimpleNamespace(catalog=catalog)
        self._ledger = ledger
        self.lane = LedgerLane(self.ledger, logging.getLogger("test"))

    def ledger(self) -> Ledger | None:
        if self._ledger is None:
            raise SchemaError("run gpuhub db upgrade")
        return self._ledger


async def test_each_team_of_the_users_gpu_servers_gets_its_budget_notice(
    catalog: Catalog, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    ledger = Ledger.open(url)
    month = month_key(utcnow())
    with Session(ledger.engine) as db, db.begin():  # usage of sessions closed this month
        db.add(TeamMonthUsage(team="vision", month=month, gpu_seconds=1700 * 3600))  # 85 %
        db.add(TeamMonthUsage(team="nlp", month=month, gpu_seconds=4900 * 3600))  # 98 %
    context = Context(catalog, ledger)
    nlp_cpu = replace(CPU, team="nlp")
    user = User(
        {
            "": TeamSpawner(True, H100, context),
            "second": TeamSpawner(True, H100, context),  # the same team: one notice
            "cpu": TeamSpawner(True, nlp_cpu, context),  # budgets count GPU-hours only
            "stopped": TeamSpawner(False, replace(H100, team="nlp"), context),
        }
    )
    (notice,) = await HomeServers(user).budget_notices()
    assert (notice.team, notice.level, notice.percent_used) == ("vision", "warning", 85)
    assert "ask ada or a member of vision-leads" in notice.message
    user.spawners["stopped"] = TeamSpawner(True, replace(H100, team="nlp"), context)
    assert [n.team for n in await HomeServers(user).budget_notices()] == ["nlp", "vision"]
    down = User({"": TeamSpawner(True, H100, Context(catalog, None))})
    assert await HomeServers(down).budget_notices() == [], "no billing database: no notice"
    ledger.engine.dispose()
