"""Report parameters: what each means, and the message every wrong one gets."""

from __future__ import annotations

from datetime import date

import pytest

from spawner_ext.reports.query import (
    Dimension,
    Period,
    ReportError,
    UsageQuery,
    parse_usage_query,
)

TODAY = date(2026, 12, 1)
TEAMS = ("vision", "nlp")


def parse(**params: str | list[str]) -> UsageQuery:
    values = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    return parse_usage_query(values, known_teams=TEAMS, today=TODAY)


def test_defaults_are_every_permitted_team_this_month_ungrouped() -> None:
    assert parse() == UsageQuery(None, Period(date(2026, 12, 1), date(2027, 1, 1)), ())


def test_by_may_repeat_or_list_and_takes_the_cli_spelling() -> None:
    query = parse(by=["user,gpu-type", "day", "user"], team="nlp")
    assert query.by == (Dimension.USER, Dimension.GPU_TYPE, Dimension.DAY)
    assert query.teams == ("nlp",)


def test_a_period_is_half_open_days() -> None:
    query = parse(since="2026-11-01", until="2026-12-01")
    assert query.period.days()[0] == date(2026, 11, 1) and len(query.period.days()) == 30
    assert parse(until="2026-11-01").period == Period(date(2026, 10, 1), date(2026, 11, 1))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"team": "robotics"}, "unknown team 'robotics'; teams: nlp, vision"),
        (
            {"since": "2026-12-02", "until": "2026-12-01"},
            "since (2026-12-02) must be before until (2026-12-01)",
        ),
        ({"since": "2026-12-01", "until": "2026-12-01"}, "until is exclusive"),
        ({"since": "1/12/2026"}, "since='1/12/2026' is not a date; use YYYY-MM-DD (UTC)"),
        ({"until": "2026-13-01"}, "until='2026-13-01' is not a date"),
        ({"by": "week"}, "by='week' is not a grouping; choose from user, profile, gpu_type, day"),
        ({"since": "2000-01-01"}, "the period is"),
        ({"since": "2025-01-01", "by": "day"}, "by=day over 730 days; at most 400"),
        ({"teams": "vision"}, "unknown parameter 'teams'"),
        ({"since": ["2026-11-01", "2026-11-02"]}, "since is given 2 times; give it once"),
    ],
)
def test_wrong_parameters_say_what_is_wrong(
    params: dict[str, str | list[str]], message: str
) -> None:
    with pytest.raises(ReportError) as refused:
        parse(**params)
    assert message in str(refused.value)
