"""Durations as admins write them in the catalog: `90s`, `30m`, `12h`, `1h30m`, `7d`, or seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)\s*([smhdw])")
DURATION_PATTERN = r"^\s*(\d+\s*[smhdw]\s*)+$"
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(value: object) -> timedelta:
    """Parse a positive duration. Raises ValueError with a message for a person."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
    elif isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30m or 12h, got {value!r}")
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and _WHOLE.match(value):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    else:
        raise ValueError(
            f"cannot read {value!r} as a duration; write a number with a unit "
            "(s, m, h, d, w) such as 90s, 30m, 12h or 1h30m, or a whole number of seconds"
        )
    if seconds <= 0:
        raise ValueError(f"a duration must be longer than zero, got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest catalog spelling of a duration: 5400s -> 1h30m."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def spoken_duration(seconds: int) -> str:
    """A duration as a person reads it on a page: '45 s', '12 min', '3 h 05 min', '2 h',
    '2 d 4 h' (negative: '0 s')."""
    seconds = max(seconds, 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
