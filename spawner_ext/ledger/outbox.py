"""The notifier's outbox in the ledger: a message is queued in the transaction that decided it
(so it is queued exactly when the decision is recorded), once per key, and the service sends it
(service/notifier.py), retrying until it goes or is given up. What to send is decided here from
the catalog's `notifications`; how it is sent is the notifier's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..catalog import Catalog
from .base import LedgerBase
from .models import Notification
from .sessions import dialect_insert

EMAIL = "email"
WEBHOOK = "webhook"
GIVE_UP_AFTER = timedelta(days=1)
"""A message not sent within a day of being queued is given up (and says so in the outbox)."""


@dataclass(frozen=True)
class Message:
    """One queued message, as the notifier sends it."""

    id: int
    key: str
    channel: str
    recipient: str
    subject: str
    body: str
    created_at: datetime
    attempts: int


def address_of(template: str, user: str) -> str:
    """A user's email address from the catalog's template (`{user}`: the JupyterHub name)."""
    return template.replace("{user}", user)


def enqueue(
    db: Session,
    catalog: Catalog,
    *,
    key: str,
    user: str,
    subject: str,
    text: str,
    event: Mapping[str, Any],
    at: datetime,
) -> None:
    """Queue a message about `key` to every channel the catalog configures (none: nothing).
    Email gets `subject` and `text`; the webhook the JSON `event`. In the caller's transaction;
    the same key and channel is never queued twice."""
    settings = catalog.notifications
    rows = []
    if settings.email is not None:
        rows.append((EMAIL, address_of(settings.email.address, user), text))
    if settings.webhook is not None:
        rows.append((WEBHOOK, str(settings.webhook.url), json.dumps(dict(event), sort_keys=True)))
    for channel, recipient, body in rows:
        queue_message(
            db,
            key=f"{key}:{channel}",
            channel=channel,
            recipient=recipient,
            subject=subject,
            body=body,
            at=at,
        )


def queue_message(
    db: Session, *, key: str, channel: str, recipient: str, subject: str, body: str, at: datetime
) -> bool:
    """Queue one message (EMAIL: to an address; WEBHOOK: `body` is the JSON) under a unique
    `key`, in the caller's transaction; a key already queued is left as it is (False)."""
    statement = dialect_insert(db)(Notification).values(
        key=key,
        channel=channel,
        recipient=recipient[:320],
        subject=subject[:200],
        body=body,
        created_at=at,
        attempts=0,
        next_attempt_at=at,
    )
    # RETURNING, not rowcount: on PostgreSQL the rowcount of this INSERT reads -1, inserted
    # or not
    inserted = statement.on_conflict_do_nothing(index_elements=["key"]).returning(Notification.id)
    return db.execute(inserted).first() is not None


class Outbox(LedgerBase):
    """Reading due messages and recording what sending them did."""

    def due(self, now: datetime | None = None, limit: int = 50) -> list[Message]:
        """Messages not sent nor given up whose next attempt is due, oldest first."""
        now = now or self.clock()
        query = (
            select(Notification)
            .where(
                Notification.sent_at.is_(None),
                Notification.gave_up_at.is_(None),
                Notification.next_attempt_at <= now,
            )
            .order_by(Notification.id)
            .limit(limit)
        )
        with self._reads() as db:
            return [
                Message(
                    r.id, r.key, r.channel, r.recipient, r.subject, r.body, r.created_at, r.attempts
                )
                for r in db.scalars(query)
            ]

    def claim(self, message_id: int, now: datetime, lease: timedelta) -> bool:
        """Take a message to send it: its next attempt moves `lease` ahead, so a second notifier
        (or this one after a crash) leaves it alone meanwhile. False: someone else took it."""
        with self._sessions.begin() as db:
            taken = db.execute(
                update(Notification)
                .where(
                    Notification.id == message_id,
                    Notification.sent_at.is_(None),
                    Notification.gave_up_at.is_(None),
                    Notification.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + lease, attempts=Notification.attempts + 1)
            )
            return bool(taken.rowcount)  # type: ignore[attr-defined]

    def sent(self, message_id: int, at: datetime | None = None) -> None:
        with self._sessions.begin() as db:
            db.execute(
                update(Notification)
                .where(Notification.id == message_id)
                .values(sent_at=at or self.clock(), last_error=None)
            )

    def failed(self, message_id: int, error: str, retry_at: datetime) -> None:
        """Record a failed attempt; retried at `retry_at`, or given up a day after queueing."""
        with self._sessions.begin() as db:
            row = db.get(Notification, message_id)
            if row is None or row.sent_at is not None:
                return
            row.last_error = error[:500]
            if retry_at - row.created_at > GIVE_UP_AFTER:
                row.gave_up_at = self.clock()
            else:
                row.next_attempt_at = retry_at

    def messages(self, key_prefix: str = "") -> list[Notification]:
        """Every message whose key starts with `key_prefix` (tests, tools)."""
        with self._reads() as db:
            return list(
                db.scalars(
                    select(Notification)
                    .where(Notification.key.startswith(key_prefix))
                    .order_by(Notification.id)
                )
            )
