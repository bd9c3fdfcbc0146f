"""The wait-list on the hub's pages, with a real ledger behind the spawner: the form offers to wait
for a GPU of a full type with the place and estimate the ledger gives and a link to join on the
wait-list page (no offer when the ledger does not answer), and the home page's rows say where the
user's requests stand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy.exc import OperationalError

from spawner_ext.hub.context import HubContext
from spawner_ext.hub.home import HomeServers
from spawner_ext.hub.waiting import WaitingView, waiting_view
from spawner_ext.ledger.admission import Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.line import read_line
from spawner_ext.ledger.store import Ledger
from spawner_ext.ledger.waitlist import JoinRequest, WaitRequest
from spawner_ext.policy.preview import free_gpus, usable_capacities
from tests.spawners.test_form import CATALOG, H100, FormOnlyLocalSpawner

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class Offers(HTMLParser):
    """Each profile card's offer to wait: its text and its link."""

    def __init__(self) -> None:
        super().__init__()
        self.offers: dict[str, tuple[str, str | None]] = {}
        self._profile = ""
        self._in: list[str] | None = None
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and (a.get("id") or "").startswith("gpuhub-profile-"):
            self._profile = (a.get("id") or "").removeprefix("gpuhub-profile-")
        if tag == "li" and "gpuhub-wait-offer" in (a.get("class") or ""):
            self._in, self._href = [], None
        if tag == "a" and self._in is not None:
            self._href = a.get("href")

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._in.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "li" and self._in is not None:
            self.offers[self._profile] = (" ".join("".join(self._in).split()), self._href)
            self._in = None


class LedgerSpawner(FormOnlyLocalSpawner):
    """The form as on Kubernetes (no machine count: the ledger's capacity says what is free)."""

    def machine_free_gpus(self) -> None:  # type: ignore[override]
        return None


@pytest.fixture
def context(tmp_path: Path) -> Iterator[HubContext]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    made = HubContext(ROOT / "hub_config" / "catalog.yaml", url, install="local")
    yield made
    made.close()
    ledger = made.ledger()
    assert ledger is not None
    ledger.engine.dispose()


def ledger_of(context: HubContext) -> Ledger:
    ledger = context.ledger()
    assert ledger is not None
    return ledger


def grace_holds_the_only_h100(ledger: Ledger) -> None:
    ledger.set_capacity(H100, 1)
    request = Request("grace", "", "vision", "h100-single", H100, 1, Decimal("4.10"), "USD", "abc")
    ledger.mark_started(ledger.admit(CATALOG, request).session)


def spawner(context: HubContext) -> LedgerSpawner:
    user = SimpleNamespace(name="ada", settings={"base_url": "/base/"})
    return LedgerSpawner(
        context=context, user=user, orm_spawner=SimpleNamespace(name="big", server=None)
    )


def offers(html: str) -> dict[str, tuple[str, str | None]]:
    parsed = Offers()
    parsed.feed(html)
    return parsed.offers


async def test_a_full_gpu_type_is_offered_with_place_estimate_and_link(
    context: HubContext,
) -> None:
    grace_holds_the_only_h100(ledger_of(context))
    found = offers(await spawner(context).render_options_form())
    text, href = found["h100-single"]
    assert text.startswith(
        "No NVIDIA H100 80GB free now: wait for a GPU \N{EM DASH} you would be 1st in line, about "
    )
    assert text.endswith(("minutes", "hours")), text
    assert href is not None
    link = urlsplit(href)
    assert link.path == "/base/services/gpu-usage/waitlist"
    query = parse_qs(link.query)
    assert query["server"] == ["big"]
    assert json.loads(query["options"][0]) == {"profile": "h100-single", "team": "vision"}
    assert "l4-single" not in found, "a type with no capacity recorded and quota left starts"


async def test_no_offer_when_the_ledger_does_not_answer(
    context: HubContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_of(context)
    grace_holds_the_only_h100(ledger)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("the database is down"))

    monkeypatch.setattr(ledger, "preview", down)
    html = await spawner(context).render_options_form()
    assert offers(html) == {}
    assert "gpuhub-profile-h100-single" in html, "the form itself still renders"


def test_the_form_counts_free_gpus_as_the_line_does(context: HubContext) -> None:
    ledger = ledger_of(context)
    ledger.set_capacity(H100, 3, used_elsewhere=1)
    for user in ("grace", "bob"):
        request = Request(user, "", "vision", "h100-single", H100, 1, Decimal("4.10"), "USD", "a")
        ledger.admit(CATALOG, request)
    taken = [(s.gpu_type, s.gpu_count) for s in ledger.open_sessions()]
    taken += [(h.gpu_type, h.gpu_count) for h in ledger.holds()]
    with ledger._reads() as db:  # the line's own count, read in its transaction
        line = read_line(db, CATALOG, "local", H100, ledger.clock()).line
    usable = usable_capacities(CATALOG, ledger.capacities())
    assert usable == {H100: line.capacity} == {H100: 2}
    assert free_gpus(usable, taken) == {H100: line.free} == {H100: 0}


async def test_the_home_page_lists_the_users_requests(context: HubContext) -> None:
    ledger = ledger_of(context)
    grace_holds_the_only_h100(ledger)
    ledger.join(
        CATALOG,
        JoinRequest(
            "ada", "big", "vision", "h100-single", H100, 1, {"profile": "h100-single"}, "ask"
        ),
    )
    ledger.serve(CATALOG)  # the service's pass that works out estimates
    ada = SimpleNamespace(spawners={"": spawner(context), "big": object()})
    (row,) = await HomeServers(ada).waiting()
    assert row.server_name == "big"
    assert row.text.startswith("1st in line for NVIDIA H100 80GB; about "), row.text
    assert (row.state, row.action, row.note) == ("waiting", None, None)
    assert row.url == "/base/services/gpu-usage/waitlist"
    assert await HomeServers(SimpleNamespace(spawners={"": object()})).waiting() == []


def request(**changes: Any) -> WaitRequest:
    waiting = WaitRequest(
        id="a" * 32,
        user="ada",
        server_name="",
        team="vision",
        profile="h100-single",
        gpu_type=H100,
        gpu_count=1,
        options={},
        start="ask",
        state="waiting",
        joined_at=NOW - timedelta(minutes=5),
        turn_at=None,
        hold_until=None,
        start_asked_at=None,
        ended_at=None,
        message=None,
        session=None,
        position=3,
        estimated_start=NOW + timedelta(minutes=40),
    )
    return replace(waiting, **changes)


ROWS = [
    (request(), "3rd in line for NVIDIA H100 80GB; about 40 minutes", None, None),
    (
        request(state="held", position=None, hold_until=NOW.replace(hour=14, minute=32)),
        "your GPU is held until 14:32 UTC",
        "start",
        None,
    ),
    (
        request(state="starting", position=None),
        "it is your turn: your server is starting",
        None,
        None,
    ),
    (
        request(blocked="gpu-quota", gpu_count=4, position=1, estimated_start=None),
        "1st in line for 4 \N{MULTIPLICATION SIGN} NVIDIA H100 80GB; no estimate yet",
        None,
        "your team's quota of this GPU is held by its other servers; your place is kept",
    ),
]


@pytest.mark.parametrize(("waiting", "text", "action", "note"), ROWS)
def test_a_request_in_words(
    waiting: WaitRequest, text: str, action: str | None, note: str | None
) -> None:
    row = waiting_view(waiting, CATALOG, base_url="/", now=NOW)
    assert row == WaitingView(
        id="a" * 32,
        server_name="",
        profile="One H100 80GB",
        state=waiting.state,
        text=text,
        action=action,
        note=note,
        url="/services/gpu-usage/waitlist",
    )
