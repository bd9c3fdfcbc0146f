"""Table-driven billing and admission rules with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from spawner_ext.catalog import Quota
from spawner_ext.ledger.rules import (
    Span,
    billed_seconds,
    gpu_seconds_between,
    holdings_of,
    month_key,
    month_pieces,
    month_start,
    over_budget_grace_over,
    reconcile_end,
    session_cost,
)
from spawner_ext.policy.admission import Holding, combine_holdings, decide

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
QUOTA = Quota.model_validate(
    {
        "gpus": {"h100": 4, "l4": 2},
        "gpus_per_user": 3,
        "monthly_gpu_hours": 100,
        "budget_warning_percent": 80,
        "stop_running_over_budget_after": "1h",
    }
)


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


@pytest.mark.parametrize(
    ("started", "ended", "seconds"),
    [
        (None, at(hours=1), 0),
        (T0, at(hours=1), 3600),
        (T0, at(seconds=59.9), 59),
        (at(hours=1), T0, 0),
    ],
)
def test_billed_seconds(started: datetime | None, ended: datetime, seconds: int) -> None:
    assert billed_seconds(started, ended) == seconds


@pytest.mark.parametrize(
    ("price", "seconds", "cost"),
    [
        ("4.10", 3600, "4.100000"),
        ("4.10", 1, "0.001139"),
        ("16.4", 5400, "24.600000"),
        ("0", 999, "0"),
    ],
)
def test_cost(price: str, seconds: int, cost: str) -> None:
    assert session_cost(Decimal(price), seconds) == Decimal(cost)


def test_month_boundaries_in_utc() -> None:
    assert month_start(datetime(2026, 12, 1, 0, 30, tzinfo=UTC)) == datetime(
        2026, 12, 1, tzinfo=UTC
    )
    # 20:30 on Nov 30 at UTC-5 is already December in UTC: budgets follow UTC.
    eastern = timezone(timedelta(hours=-5))
    assert month_start(datetime(2026, 11, 30, 20, 30, tzinfo=eastern)) == datetime(
        2026, 12, 1, tzinfo=UTC
    )
    assert month_start(datetime(2026, 11, 30, 23, 30, tzinfo=UTC)) == datetime(
        2026, 11, 1, tzinfo=UTC
    )


def test_a_session_across_the_month_boundary_counts_in_each_month() -> None:
    start = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    end = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert month_pieces(start, end, 2) == [("2026-11", 2 * 7200), ("2026-12", 2 * 7200)]
    span = Span("ada", "h100", 2, start, end)
    december = datetime(2026, 12, 1, tzinfo=UTC)
    assert gpu_seconds_between([span], month_start(start), december) == 2 * 7200
    assert gpu_seconds_between([span], december, december.replace(hour=3)) == 2 * 7200


def test_month_pieces_over_several_months() -> None:
    pieces = month_pieces(datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 3, 1, 1, tzinfo=UTC), 1)
    assert pieces == [("2026-01", 86400), ("2026-02", 28 * 86400), ("2026-03", 3600)]
    assert month_pieces(T0, T0, 4) == []
    assert month_key(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"


def test_open_sessions_count_until_now() -> None:
    spans = [Span("ada", "h100", 1, T0, None), Span("bob", "l4", 2, at(hours=-1), at(minutes=-30))]
    assert gpu_seconds_between(spans, month_start(T0), at(hours=2)) == 3 * 3600


def decision(**overrides: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "user": "ada",
        "gpu_type": "h100",
        "gpu_count": 1,
        "gpu_type_name": "H100",
        "holdings": [],
        "hours_used": Decimal(0),
        "now": T0,
    }
    args.update(overrides)
    return decide("vision", QUOTA, **args)  # type: ignore[arg-type]


ADMISSIONS = [
    ("free GPUs", {}, True, None, None),
    (
        "CPU only needs no quota",
        {"gpu_type": None, "gpu_count": 0, "hours_used": Decimal(500)},
        True,
        None,
        None,
    ),
    (
        "type quota full",
        {"holdings": [Holding("bob", "h100", 2), Holding("cy", "h100", 2)]},
        False,
        "gpu-quota",
        "holds 4 (bob: 2, cy: 2); 0 free",
    ),
    ("other type does not count", {"holdings": [Holding("bob", "l4", 2)]}, True, None, None),
    (
        "type not in quota",
        {"gpu_type": "a100", "gpu_type_name": "A100"},
        False,
        "gpu-quota",
        "may hold 0 A100",
    ),
    (
        "per-user cap",
        {"holdings": [Holding("ada", "l4", 2), Holding("ada", "h100", 1)]},
        False,
        "user-cap",
        "you may hold 3 GPUs",
    ),
    (
        "budget used up",
        {"hours_used": Decimal(100)},
        False,
        "budget",
        "resets on 2026-12-01 00:00 UTC",
    ),
    ("warning at threshold", {"hours_used": Decimal(80)}, True, None, "80%"),
    ("no warning below", {"hours_used": Decimal("79.9")}, True, None, None),
]


@pytest.mark.parametrize(
    ("overrides", "admitted", "reason", "text"),
    [a[1:] for a in ADMISSIONS],
    ids=[a[0] for a in ADMISSIONS],
)
def test_admission(
    overrides: dict[str, object], admitted: bool, reason: str | None, text: str | None
) -> None:
    result = decision(**overrides)
    assert result.admitted is admitted
    assert result.reason == reason
    if text:
        assert text in (result.message if not admitted else result.warning or "")
    elif admitted:
        assert result.warning is None


def test_over_budget_grace() -> None:
    assert not over_budget_grace_over(QUOTA, Decimal(99), T0, at(hours=5))
    assert not over_budget_grace_over(QUOTA, Decimal(100), T0, at(minutes=59))
    assert over_budget_grace_over(QUOTA, Decimal(100), T0, at(hours=1))
    assert not over_budget_grace_over(Quota(), Decimal(100), T0, at(hours=9))


def test_reconcile_end_is_last_seen() -> None:
    assert reconcile_end(at(minutes=5), T0, at(hours=1)) == at(minutes=5)
    assert reconcile_end(None, T0, at(hours=1)) == T0
    assert reconcile_end(None, None, at(hours=1)) == at(hours=1)


def test_holdings_of_spans_are_their_combined_holdings() -> None:
    """One Holding per (user, GPU type, borrowed), GPUs summed, CPU-only and zero-GPU spans
    left out, sorted: what combine_holdings makes of one Holding per span. Broken once (borrowed
    left out of the key): the borrowed GPUs of ada merged into her own."""
    spans = [
        Span("bo", "h100", 2, at(hours=-1), None),
        Span("ada", "h100", 1, at(hours=-2), None),
        Span("ada", "h100", 2, None, None),  # admitted, not started: it holds its GPUs
        Span("ada", "h100", 1, at(hours=-1), None, borrowed=True),
        Span("ada", "l4", 1, at(hours=-1), None),
        Span("cy", None, 0, at(hours=-1), None),
        Span("cy", "l4", 0, at(hours=-1), None),
    ]
    assert holdings_of(spans) == (
        Holding("ada", "h100", 3),
        Holding("ada", "h100", 1, borrowed=True),
        Holding("ada", "l4", 1),
        Holding("bo", "h100", 2),
    )
    assert holdings_of(spans) == combine_holdings(
        Holding(s.user, s.gpu_type, s.gpu_count, s.borrowed) for s in spans
    )
    assert holdings_of([]) == ()
