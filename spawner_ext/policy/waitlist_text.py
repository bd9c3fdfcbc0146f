"""What the wait-list says to people: a place in line and its estimate in words, and the link
that offers to join. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlencode

from ..wire import SERVICE_NAME


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def wait_words(when: datetime | None, now: datetime) -> str:
    """An estimate in words: "now", "about 40 minutes", "about 3 hours", "unknown"."""
    if when is None:
        return "no estimate yet"
    minutes = max(int((when - now).total_seconds() // 60), 0)
    if minutes < 1:
        return "about a minute"
    if minutes < 90:
        rounded = minutes if minutes < 10 else 5 * round(minutes / 5)
        return f"about {rounded} minute{'s' if rounded != 1 else ''}"
    hours = round(minutes / 60)
    return f"about {hours} hours"


def place_words(place: int, gpu_type_name: str, when: datetime | None, now: datetime) -> str:
    """ "3rd in line for an NVIDIA H100 80GB; about 40 minutes"."""
    return f"{ordinal(place)} in line for {gpu_type_name}; {wait_words(when, now)}"


def waitlist_page_url(base_url: str, server_name: str, options: Mapping[str, str]) -> str:
    """The gpuhub service's wait-list page, with a spawn's options filled in to join."""
    query = urlencode({"server": server_name, "options": json.dumps(dict(options))})
    return f"{base_url.rstrip('/')}/services/{SERVICE_NAME}/waitlist?{query}"


def join_offer(place: int, when: datetime | None, now: datetime) -> str:
    """The sentence a refusal that waiting can cure ends with (the link to join follows)."""
    return (
        f"You can wait for a GPU instead of trying again: you would be {ordinal(place)} in "
        f"line ({wait_words(when, now)})."
    )
