"""The wait-list, notifications and autoscaled GPU types in the catalog: defaults, values as an
admin writes them, and every bad value as FILE:LINE:COL: path: message."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from spawner_ext.catalog import CatalogError, parse_catalog
from spawner_ext.catalog.reference import markdown

EXAMPLE = Path(__file__).parents[2] / "hub_config" / "catalog.yaml"

BASE = """\
gpu_types:
  h100:
    display_name: H100
    price_per_hour: 4
    autoscaled: true
    scale_up_timeout: 20m
profiles:
  - display_name: CPU
    slug: cpu
waitlist:
  hold: 5m
  max_wait: 4h
  half_life: 2d
  reserve_after: 1h
notifications:
  email:
    smtp: mail.example.org:587
    from: "gpuhub <gpuhub@example.org>"
    username: gpuhub
    password_env: GPUHUB_SMTP_PASSWORD
    address: "{user}@example.org"
  webhook:
    url: https://hooks.example.org/gpuhub
    secret_env: GPUHUB_WEBHOOK_SECRET
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "cat.yaml")
    return [str(p) for p in info.value.problems]


def test_defaults_when_the_sections_are_absent() -> None:
    catalog = parse_catalog(
        "gpu_types:\n  l4: {display_name: L4, price_per_hour: 1}\nprofiles: [{display_name: CPU}]\n"
    )
    waitlist = catalog.waitlist
    assert waitlist.enabled is True
    assert (waitlist.hold, waitlist.max_wait) == (timedelta(minutes=10), timedelta(hours=8))
    assert (waitlist.half_life, waitlist.reserve_after) == (
        timedelta(hours=24),
        timedelta(minutes=30),
    )
    assert catalog.notifications.email is None
    assert catalog.notifications.webhook is None
    l4 = catalog.gpu_types["l4"]
    assert l4.autoscaled is False
    assert l4.scale_up_timeout == timedelta(minutes=15)


def test_values_as_written() -> None:
    catalog = parse_catalog(BASE, "cat.yaml")
    assert catalog.waitlist.hold == timedelta(minutes=5)
    assert catalog.waitlist.max_wait == timedelta(hours=4)
    assert catalog.waitlist.half_life == timedelta(days=2)
    assert catalog.waitlist.reserve_after == timedelta(hours=1)
    email = catalog.notifications.email
    assert email is not None
    assert (email.smtp_host, email.smtp_port) == ("mail.example.org", 587)
    assert email.from_ == "gpuhub <gpuhub@example.org>"
    assert email.starttls is True
    assert (email.username, email.password_env) == ("gpuhub", "GPUHUB_SMTP_PASSWORD")
    assert email.address.format(user="ada") == "ada@example.org"
    webhook = catalog.notifications.webhook
    assert webhook is not None
    assert webhook.url == "https://hooks.example.org/gpuhub"
    assert webhook.secret_env == "GPUHUB_WEBHOOK_SECRET"
    h100 = catalog.gpu_types["h100"]
    assert h100.autoscaled is True
    assert h100.scale_up_timeout == timedelta(minutes=20)


def test_smtp_ipv6_and_no_login() -> None:
    text = BASE.replace("mail.example.org:587", "'[2001:db8::25]:25'")
    text = text.replace("    username: gpuhub\n    password_env: GPUHUB_SMTP_PASSWORD\n", "")
    email = parse_catalog(text).notifications.email
    assert email is not None
    assert (email.smtp_host, email.smtp_port) == ("2001:db8::25", 25)
    assert email.username is email.password_env is None


def test_scale_up_timeout_may_be_null() -> None:
    text = BASE.replace("scale_up_timeout: 20m", "scale_up_timeout: null")
    assert parse_catalog(text).gpu_types["h100"].scale_up_timeout is None


CASES = [
    # (id, replace this, with this, expected problem)
    (
        "hold of zero",
        "hold: 5m",
        "hold: 0s",
        "cat.yaml:11:9: waitlist.hold: a duration must be longer than zero, got '0s'",
    ),
    (
        "half_life of zero",
        "half_life: 2d",
        "half_life: 0",
        "cat.yaml:13:14: waitlist.half_life: a duration must be longer than zero, got 0",
    ),
    (
        "max_wait not longer than hold",
        "max_wait: 4h",
        "max_wait: 5m",
        "cat.yaml:12:13: waitlist.max_wait: max_wait (5m) must be longer than hold (5m)",
    ),
    (
        "hold longer than the default max_wait",
        "  hold: 5m\n  max_wait: 4h\n",
        "  hold: 9h\n",
        "cat.yaml:11:3: waitlist.max_wait: max_wait (8h) must be longer than hold (9h)",
    ),
    (
        "unreadable duration",
        "reserve_after: 1h",
        "reserve_after: half an hour",
        "cat.yaml:14:18: waitlist.reserve_after: cannot read 'half an hour' as a duration",
    ),
    (
        "enabled not a boolean",
        "waitlist:\n",
        "waitlist:\n  enabled: sometimes\n",
        "cat.yaml:11:12: waitlist.enabled: expected true or false, got 'sometimes'",
    ),
    (
        "misspelt waitlist key",
        "half_life: 2d",
        "halflife: 2d",
        "cat.yaml:13:3: waitlist.halflife: unknown key 'halflife'; did you mean 'half_life'?",
    ),
    (
        "smtp without a port",
        "smtp: mail.example.org:587",
        "smtp: mail.example.org",
        "cat.yaml:17:11: notifications.email.smtp: expected the mail server as host:port, such "
        "as mail.example.org:587, got 'mail.example.org'",
    ),
    (
        "smtp port out of range",
        "smtp: mail.example.org:587",
        "smtp: mail.example.org:99999",
        "cat.yaml:17:11: notifications.email.smtp: expected the mail server as host:port",
    ),
    (
        "from missing",
        '    from: "gpuhub <gpuhub@example.org>"\n',
        "",
        "cat.yaml:17:5: notifications.email.from: missing required key 'from'",
    ),
    (
        "from not an address",
        '"gpuhub <gpuhub@example.org>"',
        "gpuhub",
        "cat.yaml:18:11: notifications.email.from: expected a sender address such as "
        "gpuhub@example.org",
    ),
    (
        "a password instead of a variable name",
        "password_env: GPUHUB_SMTP_PASSWORD",
        "password_env: hunter2 hunter2",
        "cat.yaml:20:19: notifications.email.password_env: 'hunter2 hunter2' is not the name of "
        "an environment variable",
    ),
    (
        "a password key instead of password_env",
        "password_env: GPUHUB_SMTP_PASSWORD",
        "password: hunter2",
        "cat.yaml:20:5: notifications.email.password: unknown key 'password'; did you mean "
        "'password_env'?",
    ),
    (
        "username without password_env",
        "    password_env: GPUHUB_SMTP_PASSWORD\n",
        "",
        "cat.yaml:17:5: notifications.email: give both username and password_env",
    ),
    (
        "address without {user}",
        '"{user}@example.org"',
        "team@example.org",
        "cat.yaml:21:14: notifications.email.address: the address template must contain {user}",
    ),
    (
        "address with another placeholder",
        '"{user}@example.org"',
        '"{user}@{domain}"',
        "cat.yaml:21:14: notifications.email.address: the only placeholder the address template "
        "may have is {user}",
    ),
    (
        "webhook url not http",
        "url: https://hooks.example.org/gpuhub",
        "url: hooks.example.org/gpuhub",
        "cat.yaml:23:10: notifications.webhook.url: expected an http:// or https:// URL",
    ),
    (
        "webhook secret_env not a variable name",
        "secret_env: GPUHUB_WEBHOOK_SECRET",
        "secret_env: 2SECRET",
        "cat.yaml:24:17: notifications.webhook.secret_env: '2SECRET' is not the name of an "
        "environment variable",
    ),
    (
        "autoscaled not a boolean",
        "autoscaled: true",
        "autoscaled: 1",
        "cat.yaml:5:17: gpu_types.h100.autoscaled: expected true or false, got 1",
    ),
    (
        "scale_up_timeout of zero",
        "scale_up_timeout: 20m",
        "scale_up_timeout: 0m",
        "cat.yaml:6:23: gpu_types.h100.scale_up_timeout: a duration must be longer than zero",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_problem(old: str, new: str, expected: str) -> None:
    assert old in BASE
    found = problems_of(BASE.replace(old, new, 1))
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_the_example_notifications_block_loads_when_uncommented() -> None:
    text = EXAMPLE.read_text()
    block = re.search(r"^# notifications:\n(?:#   .*\n)+", text, re.MULTILINE)
    assert block is not None, "the example shows a commented notifications block"
    uncommented = re.sub(r"^# ", "", block[0], flags=re.MULTILINE)
    catalog = parse_catalog(text.replace(block[0], uncommented), "catalog.yaml")
    assert catalog.notifications.email is not None
    assert catalog.notifications.webhook is not None


def test_the_reference_explains_the_new_sections() -> None:
    page = markdown()
    for heading in ("## Waitlist", "## Notifications", "## EmailNotifications"):
        assert heading in page
    assert "| `from` | string | required |" in page
    assert "| `autoscaled` | boolean | `false` |" in page
