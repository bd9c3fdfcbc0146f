"""Budget alerts' pure decision as tables: which threshold fires on actual use and on the
month's forecast, once per basis and month, the highest when several are crossed at once, at
month boundaries; and what the alert says. Forecasts are worked out by hand in each row (days
gone in a month of known length), not with the function under test.

Broken once: `fired` ignored (four rows sent a threshold again); every month 30 days long
(February's forecast and December's failed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spawner_ext.catalog.budget_alerts import AlertRecipients, BudgetAlerts
from spawner_ext.catalog.schema import Leads, Team
from spawner_ext.policy.budget_alerts import (
    BudgetAlert,
    alert_event,
    alert_subject,
    alert_text,
    alerts_due,
    forecast_hours,
    recipient_names,
)

D = Decimal
NOV = datetime(2026, 11, 1, tzinfo=UTC)  # 30 days: 720 h
FEB = datetime(2027, 2, 1, tzinfo=UTC)  # 28 days: 672 h
DEFAULT = BudgetAlerts()


def at(start: datetime, days: float) -> datetime:
    return start + timedelta(days=days)


FORECASTS = [
    # (id, used, now, forecast by hand: used x month hours / hours gone)
    ("half of November gone", D(100), at(NOV, 15), D(200)),
    ("a third of November gone", D(90), at(NOV, 10), D(270)),
    ("a quarter of February gone", D(70), at(FEB, 7), D(280)),
    # 720 x 2,592,000 s / 2,591,999 s = 720.00028
    ("the month's last second", D(720), at(NOV, 30) - timedelta(seconds=1), D("720.000")),
    ("nothing used", D(0), at(NOV, 12), D(0)),
    ("the month's first instant", D(5), NOV, D(5)),
]


@pytest.mark.parametrize(
    ("used", "now", "expected"), [c[1:] for c in FORECASTS], ids=[c[0] for c in FORECASTS]
)
def test_forecast_at_the_months_rate_so_far(
    used: Decimal, now: datetime, expected: Decimal
) -> None:
    assert forecast_hours(used, now) == expected


def fired_of(*pairs: str) -> set[tuple[int, str]]:
    """'80:actual' -> (80, 'actual')."""
    return {(int(p.split(":")[0]), p.split(":")[1]) for p in pairs}


CASES = [
    # (id, budget, used, now, fired, settings, expected [(threshold, basis)])
    ("nothing used", D(1000), D(0), at(NOV, 10), (), DEFAULT, []),
    ("below the first threshold", D(1000), D(100), at(NOV, 20), (), DEFAULT, []),
    # 20 of 30 days gone: forecast 499.5 x 1.5 = 749.25 (74.9 %)
    ("just below 50 % actual", D(1000), D("499.5"), at(NOV, 20), (), DEFAULT, [(50, "forecast")]),
    ("exactly 50 %", D(1000), D(500), at(NOV, 20), (), DEFAULT, [(50, "actual"), (50, "forecast")]),
    # 15 of 30 days: forecast 410 x 2 = 820 (82 %)
    ("forecast crosses 80 before actual", D(1000), D(410), at(NOV, 15), (), DEFAULT,
     [(80, "forecast")]),
    ("forecast before forecast_after: no forecast alert", D(1000), D(200), at(NOV, 2), (),
     DEFAULT, []),
    # 2 of 30 days gone, forecast 200 x 15 = 3000: only the actual basis may fire yet
    ("actual may fire before forecast_after", D(300), D(200), at(NOV, 2), (), DEFAULT,
     [(50, "actual")]),
    ("already fired: nothing again", D(1000), D(600), at(NOV, 29), fired_of("50:actual",
     "50:forecast"), DEFAULT, []),
    ("the next threshold after one fired", D(1000), D(810), at(NOV, 27), fired_of("50:actual",
     "80:forecast"), DEFAULT, [(80, "actual")]),
    ("several crossed at once: only the highest", D(1000), D(1005), at(NOV, 29), (), DEFAULT,
     [(100, "actual"), (100, "forecast")]),
    ("a higher one fired: lower ones passed over stay quiet", D(1000), D(850), at(NOV, 29),
     fired_of("100:actual", "100:forecast"), DEFAULT, []),
    ("fired on the other basis only", D(1000), D(850), at(NOV, 29), fired_of("80:forecast",
     "100:forecast"), DEFAULT, [(80, "actual")]),
    ("actual only", D(1000), D(500), at(NOV, 20), (),
     BudgetAlerts(basis=("actual",)), [(50, "actual")]),
    ("forecast only, forecast_after 1d", D(100), D(10), at(NOV, 1.5), (),
     BudgetAlerts(basis=("forecast",), forecast_after=timedelta(days=1)), [(100, "forecast")]),
    ("thresholds in any order, over 100", D(100), D(130), at(NOV, 29), (),
     BudgetAlerts(thresholds=(120, 90), basis=("actual",)), [(120, "actual")]),
    ("a budget of 0: the first use crosses", D(0), D("0.001"), at(NOV, 29), (),
     BudgetAlerts(basis=("actual",)), [(100, "actual")]),
    ("a budget of 0 unused: nothing", D(0), D(0), at(NOV, 29), (), DEFAULT, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("budget", "used", "now", "fired", "settings", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_alerts_due(
    budget: Decimal,
    used: Decimal,
    now: datetime,
    fired: set[tuple[int, str]],
    settings: BudgetAlerts,
    expected: list[tuple[int, str]],
) -> None:
    due = alerts_due("vision", settings, budget, used, now, fired)
    assert [(a.threshold, a.basis) for a in due] == expected
    assert all(a.team == "vision" and a.used == used and a.budget == budget for a in due)


def test_a_new_month_starts_afresh() -> None:
    """What fired in November is not what December reads: the month in each alert is that of
    `now`, at the boundary to the second, and December's forecast counts 31 days. Broken once:
    every month 30 days long (December's forecast came out 10.000)."""
    before = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    after = datetime(2026, 12, 1, tzinfo=UTC)
    (nov,) = alerts_due("vision", BudgetAlerts(basis=("actual",)), D(10), D(9), before)
    assert (nov.month, nov.threshold) == ("2026-11", 80)
    # the service reads what fired in the month of `now`: in December, nothing yet
    (dec,) = alerts_due("vision", BudgetAlerts(basis=("actual",)), D(10), D(9), after, set())
    assert (dec.month, dec.threshold) == ("2026-12", 80)
    # December's first hours: the forecast waits for forecast_after (3 days)
    assert alerts_due("vision", BudgetAlerts(basis=("forecast",)), D(10), D(9), after) == []
    (dec_forecast,) = alerts_due(
        "vision", BudgetAlerts(basis=("forecast",)), D(10), D(1), after + timedelta(days=3)
    )
    # 3 of 31 days gone: 1 x 31 / 3 = 10.333 GPU-hours, 103 %
    assert dec_forecast.forecast == D("10.333") and dec_forecast.threshold == 100


def test_recipients_are_leads_by_name_and_group_and_admins_each_once() -> None:
    team = Team(users=("lin",), leads=Leads(users=("ada",), groups=("vision-leads", "none")))
    members = {"vision-leads": {"zoe", "ada"}, "vision": {"lin"}}
    everyone = AlertRecipients()
    assert recipient_names(team, everyone, {"root", "ada"}, members) == ["ada", "zoe", "root"]
    leads_only = AlertRecipients(admins=False)
    assert recipient_names(team, leads_only, {"root"}, members) == ["ada", "zoe"]
    admins_only = AlertRecipients(leads=False)
    assert recipient_names(team, admins_only, {"root"}, members) == ["root"]
    assert recipient_names(team, everyone, set(), {"Vision-Leads": {"x"}}) == ["ada"]


ALERT = BudgetAlert(
    team="vision",
    month="2026-11",
    threshold=80,
    basis="actual",
    used=D("1612.5"),
    budget=D(2000),
    forecast=D("2418.75"),
)


def test_what_an_actual_alert_says() -> None:
    subject = alert_subject(ALERT, "Computer Vision Lab")
    assert subject == "GPU budget: Computer Vision Lab has used 80% of November 2026's budget"
    text = alert_text(ALERT, "Computer Vision Lab", D("3456.7"), "USD", "2 h")
    assert text.splitlines()[:5] == [
        "Budget alert: team Computer Vision Lab (vision) has used 1,612.5 of 2,000 GPU-hours "
        "(81%) of its November 2026 GPU budget, crossing 80%.",
        "",
        "At its average rate so far this month, the team ends November 2026 at about 2,418.8 "
        "GPU-hours (121% of 2,000).",
        "Cost so far this month: 3,456.70 USD.",
        "When the budget is used up, new GPU servers of the team are refused, and its running "
        "GPU servers are stopped 2 h later. It starts afresh on 1 December 2026 at 00:00 UTC.",
    ]


def test_the_webhook_body_has_its_documented_shape() -> None:
    """The shape docs/how-to/budget-alerts.md shows, key for key; it round-trips as JSON."""
    forecast = BudgetAlert("nlp", "2026-11", 100, "forecast", D(2600), D(5000), D(5200))
    event = alert_event(forecast, "Language Models", D("10660.5"), "EUR")
    assert json.loads(json.dumps(event)) == {
        "event": "budget.alert",
        "team": "nlp",
        "team_name": "Language Models",
        "month": "2026-11",
        "threshold": 100,
        "basis": "forecast",
        "used": 2600,
        "budget": 5000,
        "forecast": 5200,
        "cost": 10660.5,
        "currency": "EUR",
        "text": "Budget alert: team Language Models (nlp) is on course to use 5,200 GPU-hours "
        "in November 2026 (104% of its budget, crossing 100%); used so far: 2,600 of 5,000 "
        "GPU-hours (52%).",
    }
