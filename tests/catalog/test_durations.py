from __future__ import annotations

from datetime import timedelta

import pytest

from spawner_ext.catalog.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        (" 1h 5m ", 3900),
        (45, 45),
        (timedelta(minutes=2), 120),
    ],
)
def test_parse(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "bad", ["", "5", "5 minutes", "1.5h", "-3m", "h", True, None, 1.5, 0, "0s"]
)
def test_parse_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [1, 59, 60, 3600, 5400, 90061])
def test_format_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value
