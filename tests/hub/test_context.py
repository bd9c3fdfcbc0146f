"""The hub's one HubContext: one per hub (in its settings), and ledger writes that wait, in
order and with their own times, while the billing database does not answer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from spawner_ext.hub.context import HubContext, context_in

ROOT = Path(__file__).parents[2]
CATALOG = str(ROOT / "hub_config" / "catalog.yaml")


class FlakyLedger:
    """Stands in for the Ledger: answers only while `up`."""

    def __init__(self) -> None:
        self.up = True
        self.done: list[str] = []

    def record(self, what: str) -> None:
        if not self.up:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        self.done.append(what)


def context_with(ledger: FlakyLedger) -> HubContext:
    context = HubContext(CATALOG, "sqlite:///unused")
    context._ledger = ledger  # type: ignore[assignment]
    return context


def test_one_context_per_hub_settings() -> None:
    settings: dict[str, Any] = {}
    first = context_in(settings, CATALOG, "")
    assert context_in(settings, CATALOG, "") is first
    assert context_in({}, CATALOG, "") is not first, "another hub, another context"
    with pytest.raises(ValueError, match="same catalog_path, ledger_url and install"):
        context_in(settings, CATALOG, "sqlite:///other.sqlite")


def test_writes_wait_in_order_while_the_database_is_down(caplog: pytest.LogCaptureFixture) -> None:
    ledger = FlakyLedger()
    context = context_with(ledger)
    context.lane.write("start", lambda led: led.record("start"))  # type: ignore[attr-defined]
    ledger.up = False
    with caplog.at_level(logging.WARNING):
        context.lane.write("stop of a", lambda led: led.record("stop a"))  # type: ignore[attr-defined]
        context.lane.write("stop of b", lambda led: led.record("stop b"))  # type: ignore[attr-defined]
    assert "billing database unavailable; 1 write(s) wait" in caplog.text
    assert context.lane.pending_writes == 2
    assert not context.lane.flush()
    ledger.up = True
    assert context.lane.flush()
    assert ledger.done == ["start", "stop a", "stop b"]
    assert context.lane.pending_writes == 0


def test_a_write_after_an_outage_waits_behind_the_earlier_ones() -> None:
    ledger = FlakyLedger()
    context = context_with(ledger)
    ledger.up = False
    context.lane.write("first", lambda led: led.record("first"))  # type: ignore[attr-defined]
    ledger.up = True
    context.lane.write("second", lambda led: led.record("second"))  # type: ignore[attr-defined]
    assert ledger.done == ["first", "second"]


def test_a_write_that_waited_is_applied_as_its_late_version() -> None:
    """A stop record that waited out an outage may correct an end the service wrote meanwhile
    (Ledger.close_server's correct_earlier_end); one written at once may not."""
    ledger = FlakyLedger()
    context = context_with(ledger)
    context.lane.write("now", lambda led: led.record("now"), late=lambda led: led.record("late"))  # type: ignore[attr-defined]
    ledger.up = False
    context.lane.write("a", lambda led: led.record("a"), late=lambda led: led.record("a late"))  # type: ignore[attr-defined]
    ledger.up = True
    context.lane.write("b", lambda led: led.record("b"), late=lambda led: led.record("b late"))  # type: ignore[attr-defined]
    assert ledger.done == ["now", "a late", "b late"], "b waited behind a"


def test_parts_are_made_once() -> None:
    context = HubContext(CATALOG, "")
    made: list[int] = []

    class Part:
        def __init__(self) -> None:
            made.append(1)

    assert context.peek(Part) is None
    assert context.part(Part, Part) is context.part(Part, Part)
    assert made == [1]
