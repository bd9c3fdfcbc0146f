"""Budget alerts and GPU memory in the catalog: defaults, values as an admin writes them, and
every bad value as FILE:LINE:COL: path: message.

Broken once: the cross-section check left out of reference_problems (the two 'go nowhere' and
'emails without email' cases passed validation silently)."""

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
    memory_gib: 80
profiles:
  - display_name: CPU
    slug: cpu
teams:
  vision:
    leads: {users: [ada]}
    quota:
      monthly_gpu_hours: 2000
      budget_alerts:
        thresholds: [90, 50]
        basis: [actual]
        forecast_after: 5d
        to:
          admins: false
          emails: [finance@example.org, "Billing <billing@example.org>"]
          webhook: false
notifications:
  email:
    smtp: mail.example.org:25
    from: gpuhub@example.org
    starttls: false
  webhook:
    url: https://hooks.example.org/gpuhub
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "cat.yaml")
    return [str(p) for p in info.value.problems]


def test_values_as_written() -> None:
    catalog = parse_catalog(BASE, "cat.yaml")
    assert catalog.gpu_types["h100"].memory_gib == 80.0
    alerts = catalog.teams["vision"].quota.budget_alerts
    assert alerts is not None
    assert alerts.thresholds == (90, 50) and alerts.sorted_thresholds == (50, 90)
    assert alerts.basis == ("actual",)
    assert alerts.forecast_after == timedelta(days=5)
    assert (alerts.to.leads, alerts.to.admins, alerts.to.webhook) == (True, False, False)
    assert alerts.to.emails == ("finance@example.org", "Billing <billing@example.org>")


def test_defaults() -> None:
    text = re.sub(r"      budget_alerts:\n(        .*\n)+", "      budget_alerts: {}\n", BASE)
    text = text.replace("    memory_gib: 80\n", "")
    catalog = parse_catalog(text)
    assert catalog.gpu_types["h100"].memory_gib is None
    alerts = catalog.teams["vision"].quota.budget_alerts
    assert alerts is not None
    assert alerts.thresholds == (50, 80, 100)
    assert alerts.basis == ("actual", "forecast")
    assert alerts.forecast_after == timedelta(days=3)
    assert (alerts.to.leads, alerts.to.admins, alerts.to.webhook) == (True, True, True)
    assert alerts.to.emails == ()
    no_alerts = re.sub(r"      budget_alerts:\n(        .*\n)+", "", BASE)
    assert parse_catalog(no_alerts).teams["vision"].quota.budget_alerts is None


CASES = [
    # (id, replace this, with this, expected problem)
    (
        "memory_gib negative",
        "memory_gib: 80",
        "memory_gib: -80",
        "cat.yaml:5:17: gpu_types.h100.memory_gib: GPU memory must be a positive number of GiB, "
        "got -80",
    ),
    (
        "memory_gib zero",
        "memory_gib: 80",
        "memory_gib: 0",
        "cat.yaml:5:17: gpu_types.h100.memory_gib: GPU memory must be a positive number of GiB",
    ),
    (
        "memory_gib with a unit",
        "memory_gib: 80",
        "memory_gib: 80GB",
        "cat.yaml:5:17: gpu_types.h100.memory_gib: expected GPU memory in GiB such as 80, got "
        "'80GB'",
    ),
    (
        "alerts without a budget",
        "      monthly_gpu_hours: 2000\n",
        "",
        "cat.yaml:13:7: teams.vision.quota: budget_alerts needs a budget: set monthly_gpu_hours",
    ),
    (
        "a threshold twice",
        "thresholds: [90, 50]",
        "thresholds: [90, 50, 90]",
        "cat.yaml:15:21: teams.vision.quota.budget_alerts.thresholds: 90 given more than once",
    ),
    (
        "a threshold of zero",
        "thresholds: [90, 50]",
        "thresholds: [0, 50]",
        "cat.yaml:15:22: teams.vision.quota.budget_alerts.thresholds[0]: must be at least 1, got 0",
    ),
    (
        "a threshold written as a percentage string",
        "thresholds: [90, 50]",
        "thresholds: [90%, 50]",
        "cat.yaml:15:22: teams.vision.quota.budget_alerts.thresholds[0]: expected a whole "
        "number, got '90%'",
    ),
    (
        "no thresholds",
        "thresholds: [90, 50]",
        "thresholds: []",
        "cat.yaml:15:21: teams.vision.quota.budget_alerts.thresholds: give at least one",
    ),
    (
        "an unknown basis",
        "basis: [actual]",
        "basis: [actual, projected]",
        "cat.yaml:16:25: teams.vision.quota.budget_alerts.basis[1]: expected one of 'actual' or "
        "'forecast', got 'projected'",
    ),
    (
        "forecast_after unreadable",
        "forecast_after: 5d",
        "forecast_after: five days",
        "cat.yaml:17:25: teams.vision.quota.budget_alerts.forecast_after: cannot read 'five "
        "days' as a duration",
    ),
    (
        "a user name among the emails",
        "emails: [finance@example.org,",
        "emails: [grace,",
        "cat.yaml:20:20: teams.vision.quota.budget_alerts.to.emails[0]: expected an email "
        "address such as finance@example.org, got 'grace'; write users by name in the team's "
        "`leads` instead",
    ),
    (
        "misspelt key",
        "        basis: [actual]\n",
        "        bases: [actual]\n",
        "cat.yaml:16:9: teams.vision.quota.budget_alerts.bases: unknown key 'bases'; did you "
        "mean 'basis'?",
    ),
    (
        "emails without notifications.email",
        "  email:\n    smtp: mail.example.org:25\n    from: gpuhub@example.org\n"
        "    starttls: false\n",
        "",
        "cat.yaml:20:19: teams.vision.quota.budget_alerts.to.emails: these addresses get email, "
        "and the catalog has no notifications.email; add notifications.email (the mail "
        "server), or remove `emails`",
    ),
    (
        "alerts that go nowhere",
        '          emails: [finance@example.org, "Billing <billing@example.org>"]\n',
        "          leads: false\n",
        "cat.yaml:15:9: teams.vision.quota.budget_alerts: these alerts would go nowhere",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_problem(old: str, new: str, expected: str) -> None:
    assert old in BASE
    found = problems_of(BASE.replace(old, new, 1))
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_webhook_alone_is_somewhere_to_go() -> None:
    text = BASE.replace('emails: [finance@example.org, "Billing <billing@example.org>"]', "")
    text = text.replace("          webhook: false\n", "")
    text = text.replace("  email:\n    smtp: mail.example.org:25\n    from: gpuhub@example.org\n"
                        "    starttls: false\n", "")  # fmt: skip
    alerts = parse_catalog(text).teams["vision"].quota.budget_alerts
    assert alerts is not None and alerts.to.webhook is True


def test_the_example_gives_gpu_memory_and_its_alerts_load_when_uncommented() -> None:
    text = EXAMPLE.read_text()
    catalog = parse_catalog(text, "catalog.yaml")
    memory = {key: gpu.memory_gib for key, gpu in catalog.gpu_types.items()}
    assert memory == {"h100-80gb": 80, "a100-40gb": 40, "a100-1g10gb": 10, "l4": 24}
    assert all(team.quota.budget_alerts is None for team in catalog.teams.values())

    notifications = re.search(r"^# notifications:\n(?:#   .*\n)+", text, re.MULTILINE)
    alerts = re.search(r"^      # budget_alerts:.*\n(?:      #   .*\n)+", text, re.MULTILINE)
    assert notifications is not None and alerts is not None
    for block in (notifications[0], alerts[0]):
        text = text.replace(block, re.sub(r"^(\s*)# ", r"\1", block, flags=re.MULTILINE))
    vision = parse_catalog(text, "catalog.yaml").teams["vision"].quota.budget_alerts
    assert vision is not None
    assert vision.thresholds == (50, 80, 100) and vision.to.emails == ("finance@example.org",)


def test_the_reference_explains_the_new_sections() -> None:
    page = markdown()
    for heading in ("## BudgetAlerts", "## AlertRecipients"):
        assert heading in page
    assert "| `memory_gib` | number (optional) | `null` |" in page
    assert "| `thresholds` | list of integer | `[50, 80, 100]` |" in page
