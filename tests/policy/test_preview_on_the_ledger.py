"""With metering on, the form reads the ledger's usage (`Ledger.team_usage`) and admission reads
the same inputs in its transaction: what the preview blocks, `Ledger.admit` refuses, with the
same message (SQLite here; tests/ledger runs the ledger on PostgreSQL too)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.end_reason import EndReason
from spawner_ext.ledger.admission import AdmissionRefused, Request
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger
from spawner_ext.policy.admission import Holding
from spawner_ext.policy.preview import profile_preview
from tests.ledger.conftest import FakeClock

ROOT = Path(__file__).parents[2]


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(ROOT / "hub_config" / "catalog.yaml")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    opened = Ledger.open(url, clock=clock)
    yield opened
    opened.engine.dispose()


def mig(user: str, server: str = "") -> Request:
    return Request(
        user, server, "teaching", "mig-slice", "a100-1g10gb", 1, Decimal("0.30"), "USD", "abc"
    )


async def preview_then_admit(
    ledger: Ledger, catalog: Catalog, user: str, server: str = ""
) -> str | None:
    """The preview's `blocked` for a MIG slice, checked against what admission then does."""
    profile = catalog.profile("mig-slice")
    assert profile is not None
    usage = ledger.team_usage(catalog, "teaching", user)
    shown = profile_preview(catalog, profile, "teaching", usage, ledger.clock())
    try:
        ledger.admit(catalog, mig(user, server))
    except AdmissionRefused as refused:
        assert shown.blocked == refused.decision.message
        assert shown.blocked_reason == refused.decision.reason
    else:
        assert shown.blocked is None, "the preview blocked what admission admits"
    return shown.blocked_reason


async def test_the_ledgers_usage_carries_holdings_and_hours(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    for user, server, count in [("ada", "", 2), ("bob", "", 1), ("ada", "second", 1)]:
        request = Request(
            user, server, "vision", "h100-single", "h100-80gb", count, Decimal("4.10"), "USD", "a"
        )
        ledger.mark_started(ledger.admit(catalog, request).session)
    clock.advance(hours=2)
    usage = ledger.team_usage(catalog, "vision", "ada")
    assert usage.holdings == (Holding("ada", "h100-80gb", 3), Holding("bob", "h100-80gb", 1))
    assert usage.user == "ada"
    assert usage.user_gpus_in_use == 3
    assert usage.gpu_hours_this_month == Decimal("8.000")
    assert (ledger.team_usage(catalog, "nlp", "ada")).holdings == ()
    assert (ledger.team_usage(catalog, None, "ada")).holdings == ()


async def test_preview_and_admission_agree_on_the_ledger(
    ledger: Ledger, catalog: Catalog, clock: FakeClock
) -> None:
    # teaching: 14 MIG slices, 1 GPU per user, 300 GPU-hours a month.
    assert await preview_then_admit(ledger, catalog, "s0") is None
    assert await preview_then_admit(ledger, catalog, "s0", "second") == "user-cap"
    for n in range(1, 14):
        assert await preview_then_admit(ledger, catalog, f"s{n}") is None
    assert await preview_then_admit(ledger, catalog, "s14") == "gpu-quota"
    for session in ledger.open_sessions():
        ledger.mark_started(session.uid)
    clock.advance(hours=22)  # 14 slices x 22 h = 308 GPU-hours
    for session in ledger.open_sessions():
        ledger.close(session.id, EndReason.STOPPED)
    assert await preview_then_admit(ledger, catalog, "s0") == "budget"
