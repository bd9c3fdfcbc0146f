"""Catalog section of a team's budget alerts (`teams.<team>.quota.budget_alerts`): at which
shares of the monthly budget, on which basis (actual use, the month's forecast) and to whom.
Where email and webhooks are sent from is the `notifications` section (waitlist.py). No I/O."""

from __future__ import annotations

from email.utils import parseaddr
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr, field_validator

from .values import Duration, Model

Basis = Literal["actual", "forecast"]
"""What an alert's threshold is compared with: the GPU-hours used this month so far (`actual`),
or those the month will end with at its rate so far (`forecast`)."""

ACTUAL: Basis = "actual"
FORECAST: Basis = "forecast"
Percent = Annotated[StrictInt, Field(ge=1, le=1000)]


def _recipient_address(value: str) -> str:
    _, address = parseaddr(value)
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise ValueError(
            f"expected an email address such as finance@example.org, got {value!r}; write "
            "users by name in the team's `leads` instead"
        )
    return value.strip()


EmailAddress = Annotated[StrictStr, AfterValidator(_recipient_address)]


class AlertRecipients(Model):
    """Who a team's budget alerts go to. Email needs `notifications.email`, the webhook
    `notifications.webhook`; the alerts go to every recipient configured."""

    leads: StrictBool = Field(
        True,
        description="Email the team's `leads`: its users by name, and the members of its "
        "groups as JupyterHub lists them when the alert fires; each user's address is "
        "`notifications.email.address` with their name.",
    )
    admins: StrictBool = Field(
        True,
        description="Email the hub's admin users (JupyterHub's `admin` flag, as its REST API "
        "lists users when the alert fires), at `notifications.email.address`.",
    )
    emails: tuple[EmailAddress, ...] = Field(
        (), description="More email addresses, as written, e.g. `finance@example.org`."
    )
    webhook: StrictBool = Field(
        True,
        description="POST the alert as JSON to `notifications.webhook` (ignored without it).",
    )


class BudgetAlerts(Model):
    """Alerts when a team crosses shares of its monthly budget (`monthly_gpu_hours`), on actual
    use and on the month's forecast. Each threshold fires once per team, month and basis; when
    several are crossed at once (a first look mid-month), only the highest is sent."""

    thresholds: tuple[Percent, ...] = Field(
        (50, 80, 100),
        description="Percentages of the monthly budget, e.g. `[50, 80, 100]`; 1 to 1000, each "
        "once.",
    )
    basis: tuple[Basis, ...] = Field(
        (ACTUAL, FORECAST),
        description="`actual`: the GPU-hours used this month so far cross the threshold. "
        "`forecast`: the GPU-hours the month ends with at its average rate so far (used so far "
        "x the month's length / the time gone) cross it. Both by default.",
    )
    forecast_after: Duration = Field(
        "3d",
        validate_default=True,
        description="Forecast alerts wait until this much of the month is gone: a rate over "
        "the first hours of a month says little about the rest.",
    )
    to: AlertRecipients = Field(
        default_factory=AlertRecipients,
        description="Who gets the alerts; by default the team's leads, the admins and the webhook.",
    )

    @field_validator("thresholds", "basis")
    @classmethod
    def _each_once(cls, values: tuple[object, ...]) -> tuple[object, ...]:
        if not values:
            raise ValueError("give at least one, or remove budget_alerts for no alerts")
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} given more than once; give each once")
        return values

    @property
    def sorted_thresholds(self) -> tuple[int, ...]:
        return tuple(sorted(self.thresholds))
