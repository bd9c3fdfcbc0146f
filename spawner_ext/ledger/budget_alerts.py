"""Budget alerts in the outbox (outbox.py): which have fired this month, and queueing one, a
message per recipient, in one transaction. The outbox row's unique key is the alert's
(month, team, threshold, basis) and the recipient, so an alert is queued once however many
services decide it, and a service restarted reads what fired from the rows themselves.

The key names a recipient by a hash of the address, not the address: the notifier logs keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from ..policy.budget_alerts import BudgetAlert
from .base import LedgerBase
from .models import Notification
from .outbox import EMAIL, WEBHOOK, queue_message

PREFIX = "budget:"


def alert_key(alert: BudgetAlert) -> str:
    """`budget:<month>:<team>:<threshold>:<basis>`: what each of the alert's keys starts with."""
    return f"{PREFIX}{alert.month}:{alert.team}:{alert.threshold}:{alert.basis}"


def recipient_key(alert: BudgetAlert, channel: str, address: str = "") -> str:
    """The outbox key of the alert's message to one email address (compared
    case-insensitively), or to the webhook (there is one)."""
    if channel == WEBHOOK:
        return f"{alert_key(alert)}:{WEBHOOK}"
    digest = hashlib.sha256(address.strip().lower().encode()).hexdigest()[:16]
    return f"{alert_key(alert)}:{channel}:{digest}"


@dataclass(frozen=True)
class AlertMessage:
    """An alert as it is sent: the email's subject and text, the webhook's JSON."""

    alert: BudgetAlert
    subject: str
    text: str
    event: Mapping[str, Any]


class BudgetAlertOutbox(LedgerBase):
    """The budget alerts of the outbox."""

    def fired(self, month: str) -> dict[str, set[tuple[int, str]]]:
        """Per team, the (threshold, basis) queued in `month` ('YYYY-MM'), sent or not."""
        found: dict[str, set[tuple[int, str]]] = {}
        prefix = f"{PREFIX}{month}:"
        query = select(Notification.key).where(Notification.key.startswith(prefix))
        with self._reads() as db:
            for key in db.scalars(query):
                team, threshold, basis, *_ = [*key[len(prefix) :].split(":"), "", "", ""]
                if threshold.isdigit():
                    found.setdefault(team, set()).add((int(threshold), basis))
        return found

    def queue(
        self,
        messages: Iterable[AlertMessage],
        emails: Iterable[str],
        webhook_url: str | None,
        at: datetime,
    ) -> int:
        """Queue each alert to every address of `emails` and to the webhook (None: none), all
        in one transaction; what was queued before (by this service or another) is left as it
        is. Returns how many messages were new."""
        addresses = list(dict.fromkeys(e.strip() for e in emails))
        added = 0
        with self._sessions.begin() as db:
            for message in messages:
                alert = message.alert
                for address in addresses:
                    added += queue_message(
                        db,
                        key=recipient_key(alert, EMAIL, address),
                        channel=EMAIL,
                        recipient=address,
                        subject=message.subject,
                        body=message.text,
                        at=at,
                    )
                if webhook_url is not None:
                    added += queue_message(
                        db,
                        key=recipient_key(alert, WEBHOOK),
                        channel=WEBHOOK,
                        recipient=webhook_url,
                        subject=message.subject,
                        body=json.dumps(dict(message.event), sort_keys=True),
                        at=at,
                    )
        return added
