"""The gpuhub service's budget-alert step: each tick it reads the month's GPU-hours of every
team with `budget_alerts`, asks policy/budget_alerts.py which thresholds are newly crossed, and
queues those alerts in the outbox (ledger/budget_alerts.py), which the notifier sends.

Recipients' addresses are the catalog's `notifications.email.address` with a user name: the
team's `leads.users`, the members of its `leads.groups` and the hub's admins, as JupyterHub's
REST API lists its users (the service's role has `list:users`, `read:users:name`, which shows
`admin`, and `read:users:groups`), read only in a tick that has an alert to queue; and the
alert's own `emails`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..catalog import Catalog
from ..catalog.durations import spoken_duration
from ..catalog.schema import Team
from ..clock import Clock, utcnow
from ..ledger.budget_alerts import AlertMessage, BudgetAlertOutbox
from ..ledger.outbox import address_of
from ..ledger.store import Ledger
from ..policy.budget_alerts import (
    BudgetAlert,
    alert_event,
    alert_subject,
    alert_text,
    alerts_due,
    month_of,
    recipient_names,
)
from ..reports.query import UsageQuery, current_month
from ..reports.usage import usage_rows
from .hubapi import HubAPI

log = logging.getLogger("gpuhub.service")


@dataclass(frozen=True)
class Directory:
    """The hub's users as alerts need them: its admins, and the members of each group."""

    admins: frozenset[str] = frozenset()
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)


async def hub_directory(hub: HubAPI) -> Directory:
    """Every user of the hub, a page at a time: who is an admin, who is in which group."""
    admins: set[str] = set()
    members: dict[str, set[str]] = {}
    async for user in hub.users():
        name = str(user.get("name") or "")
        if not name:
            continue
        if user.get("admin"):
            admins.add(name)
        for group in user.get("groups") or ():
            members.setdefault(str(group), set()).add(name)
    return Directory(frozenset(admins), {g: frozenset(m) for g, m in members.items()})


class BudgetAlerter:
    """The step, handed the ledger and the hub; keeps nothing between ticks."""

    def __init__(self, ledger: Ledger, hub: HubAPI, clock: Clock = utcnow) -> None:
        self.ledger = ledger
        self.outbox = BudgetAlertOutbox(ledger.engine, clock=clock)
        self.hub = hub
        self.clock = clock

    async def step(self, catalog: Catalog) -> int:
        """Queue the alerts due now; returns how many messages were queued."""
        now = self.clock()
        watched = [
            (key, alerts, budget, self.ledger.gpu_hours_this_month(key))
            for key, team in catalog.teams.items()
            if (alerts := team.quota.budget_alerts) is not None
            and (budget := team.quota.monthly_gpu_hours) is not None
        ]
        # The outbox is read only once some threshold is crossed at all.
        if not any(alerts_due(k, a, b, used, now) for k, a, b, used in watched):
            return 0
        fired = self.outbox.fired(f"{month_of(now)[0]:%Y-%m}")
        due = {
            key: found
            for key, alerts, budget, used in watched
            if (found := alerts_due(key, alerts, budget, used, now, fired.get(key, ())))
        }
        if not due:
            return 0
        directory = await hub_directory(self.hub)
        queued = 0
        for key, found in due.items():
            queued += self._queue(catalog, key, catalog.teams[key], found, directory, now)
        return queued

    def _queue(
        self,
        catalog: Catalog,
        key: str,
        team: Team,
        alerts: list[BudgetAlert],
        directory: Directory,
        now: datetime,
    ) -> int:
        settings = team.quota.budget_alerts
        assert settings is not None
        channels = catalog.notifications
        emails: list[str] = []
        if channels.email is not None:
            names = recipient_names(team, settings.to, directory.admins, directory.members)
            emails = [address_of(channels.email.address, n) for n in names]
            emails += settings.to.emails
        webhook = channels.webhook.url if channels.webhook and settings.to.webhook else None
        if not emails and webhook is None:
            log.warning("service: budget alert for team %s has no recipient; not sent", key)
            return 0
        currency = catalog.metering.currency
        cost = self._cost(key, currency, now)
        name = team.display_name or key
        stop = team.quota.stop_running_over_budget_after
        spoken = spoken_duration(int(stop.total_seconds())) if stop is not None else None
        messages = [
            AlertMessage(
                alert,
                alert_subject(alert, name),
                alert_text(alert, name, cost, currency, spoken),
                alert_event(alert, name, cost, currency),
            )
            for alert in alerts
        ]
        added = self.outbox.queue(messages, emails, webhook, now)
        for alert in alerts if added else ():  # none added: another service queued them
            log.info(
                "service: budget alert queued: team %s crossed %s%% (%s) of %s",
                key,
                alert.threshold,
                alert.basis,
                alert.month,
            )
        return added

    def _cost(self, team: str, currency: str, now: datetime) -> Decimal:
        """The team's cost this month so far, in the catalog's currency."""
        query = UsageQuery(teams=(team,), period=current_month(now.date()), by=())
        rows = usage_rows(self.ledger.engine, query, now)
        return sum((row.cost for row in rows if row.currency == currency), Decimal(0))
