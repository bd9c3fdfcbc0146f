"""The service's notifier against a real outbox (SQLite, and PostgreSQL where the tests have it),
a real SMTP server (aiosmtpd) and a real HTTP receiver (tornado), each started in-process: every
message delivered once, retried with backoff, given up after a day.

Each test was seen failing against a notifier broken the way its docstring says."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from spawner_ext.catalog import Catalog
from spawner_ext.catalog.waitlist import Notifications
from spawner_ext.ledger.models import Notification
from spawner_ext.ledger.outbox import Outbox, enqueue
from spawner_ext.ledger.store import Ledger
from spawner_ext.service.notifier import LEASE, Notifier
from tests.ledger.conftest import FakeClock

PASSWORD = "s3cret-smtp-password"
SECRET = "webhook-signing-secret"
ENVIRON = {"GPUHUB_SMTP_PASSWORD": PASSWORD, "GPUHUB_WEBHOOK_SECRET": SECRET}


# --- a real SMTP server ------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the SMTP server accepted: (envelope recipients, the message's bytes)."""

    mails: list[tuple[list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        ok = data.login == b"gpuhub" and data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # the server answers 535 when refused


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox.authenticate,
        auth_require_tls=False,  # STARTTLS is off for this server (no certificate here)
    )
    controller.start()
    yield mailbox, port
    controller.stop()


# --- a real HTTP receiver ----------------------------------------------------------------------


@dataclass
class Receiver:
    """Webhook requests received (headers, body); answers `answers` in turn, then 204."""

    requests: list[tuple[Mapping[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    url: str = ""


class _Hook(RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def post(self) -> None:
        self.receiver.requests.append((dict(self.request.headers), self.request.body))
        self.set_status(self.receiver.answers.pop(0) if self.receiver.answers else 204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver()
    sock, port = bind_unused_port()
    server = HTTPServer(Application([(r"/hook", _Hook, {"receiver": received})]))
    server.add_sockets([sock])
    received.url = f"http://127.0.0.1:{port}/hook"
    yield received
    server.stop()
    await server.close_all_connections()


# --- helpers -----------------------------------------------------------------------------------


def with_channels(
    catalog: Catalog, *, smtp_port: int | None = None, url: str | None = None
) -> Catalog:
    settings: dict[str, Any] = {}
    if smtp_port is not None:
        settings["email"] = {
            "smtp": f"127.0.0.1:{smtp_port}",
            "from": "gpuhub <gpuhub@example.org>",
            "starttls": False,
            "username": "gpuhub",
            "password_env": "GPUHUB_SMTP_PASSWORD",
            "address": "{user}@example.org",
        }
    if url is not None:
        settings["webhook"] = {"url": url, "secret_env": "GPUHUB_WEBHOOK_SECRET"}
    return catalog.model_copy(update={"notifications": Notifications.model_validate(settings)})


def queue(ledger: Ledger, catalog: Catalog, clock: FakeClock, key: str, user: str = "ada") -> None:
    outbox = Outbox(ledger.engine, clock=clock)
    with outbox._sessions.begin() as db:
        enqueue(
            db,
            catalog,
            key=key,
            user=user,
            subject=f"Your GPU is ready ({key})",
            text=f"It is your turn ({key}).",
            event={"event": "waitlist.turn", "request": key, "user": user},
            at=clock(),
        )


def notifier(ledger: Ledger, catalog: Catalog, clock: FakeClock) -> Notifier:
    return Notifier(Outbox(ledger.engine, clock=clock), lambda: catalog, ENVIRON, clock)


def rows(ledger: Ledger) -> list[Notification]:
    return Outbox(ledger.engine).messages()


# --- tests -------------------------------------------------------------------------------------


async def test_an_email_is_delivered_once_to_the_users_address(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, smtp: tuple[Mailbox, int]
) -> None:
    """Broken once: sending without `outbox.sent` (delivered again after the lease)."""
    mailbox, port = smtp
    catalog = with_channels(catalog, smtp_port=port)
    queue(ledger, catalog, clock, "waitlist:r1:turn", user="ada")
    sender = notifier(ledger, catalog, clock)
    await sender.cycle()
    for _ in range(3):
        clock.advance(minutes=10)
        await sender.cycle()
    assert mailbox.logins == [(b"gpuhub", PASSWORD.encode())], "the password of the env var"
    ((recipients, raw),) = mailbox.mails
    assert recipients == ["ada@example.org"]
    mail = message_from_bytes(raw)
    assert mail["Subject"] == "Your GPU is ready (waitlist:r1:turn)"
    assert mail["From"] == "gpuhub <gpuhub@example.org>"
    assert mail["To"] == "ada@example.org"
    assert mail.get_payload(decode=True).decode().strip() == "It is your turn (waitlist:r1:turn)."
    (row,) = rows(ledger)
    assert row.sent_at is not None and row.attempts == 1 and row.last_error is None
    assert (sender.status.sent, sender.status.failed) == (1, 0)


async def test_a_refused_login_is_retried_and_its_password_never_logged(
    ledger: Ledger,
    catalog: Catalog,
    clock: FakeClock,
    smtp: tuple[Mailbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Broken once: keeping only the exception's type (the server's 535 answer was lost)."""
    mailbox, port = smtp
    catalog = with_channels(catalog, smtp_port=port)
    queue(ledger, catalog, clock, "waitlist:r1:turn")
    wrong = {"GPUHUB_SMTP_PASSWORD": "not-the-password"}
    sender = Notifier(Outbox(ledger.engine, clock=clock), lambda: catalog, wrong, clock)
    with caplog.at_level(logging.INFO, logger="gpuhub.notifier"):
        await sender.cycle()
    assert mailbox.mails == []
    (row,) = rows(ledger)
    assert row.sent_at is None and row.attempts == 1
    assert row.next_attempt_at == clock() + timedelta(seconds=30)
    assert row.last_error is not None and "535" in row.last_error
    (line,) = [r.getMessage() for r in caplog.records]
    assert "waitlist:r1:turn:email" in line and "trying again" in line
    assert "not-the-password" not in line and "not-the-password" not in row.last_error


async def test_a_webhook_is_signed_with_the_secret(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, receiver: Receiver
) -> None:
    """Broken once: signing with the secret's name instead of its value."""
    catalog = with_channels(catalog, url=receiver.url)
    queue(ledger, catalog, clock, "waitlist:r2:turn", user="lin")
    await notifier(ledger, catalog, clock).cycle()
    ((headers, body),) = receiver.requests
    assert headers["Content-Type"] == "application/json"
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Gpuhub-Signature"], f"sha256={expected}")
    assert headers["X-Gpuhub-Delivery"] == "waitlist:r2:turn:webhook"
    assert json.loads(body) == {
        "event": "waitlist.turn",
        "request": "waitlist:r2:turn",
        "user": "lin",
    }
    (row,) = rows(ledger)
    assert row.sent_at == clock()


async def test_a_receiver_failing_twice_gets_the_message_once_with_backoff(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, receiver: Receiver
) -> None:
    """Broken once: a fixed 30 s retry (the second wait is a minute)."""
    catalog = with_channels(catalog, url=receiver.url)
    receiver.answers = [500, 500]
    queue(ledger, catalog, clock, "waitlist:r3:turn")
    sender = notifier(ledger, catalog, clock)
    start = clock()

    await sender.cycle()  # 500
    (row,) = rows(ledger)
    assert row.next_attempt_at == start + timedelta(seconds=30)
    assert row.last_error == "webhook answered HTTP 500 Internal Server Error"
    clock.advance(seconds=29)
    await sender.cycle()  # not yet due
    assert len(receiver.requests) == 1

    clock.advance(seconds=1)
    await sender.cycle()  # 500 again: the wait doubles
    (row,) = rows(ledger)
    assert row.next_attempt_at == start + timedelta(seconds=30 + 60)
    clock.advance(seconds=59)
    await sender.cycle()
    assert len(receiver.requests) == 2

    clock.advance(seconds=1)
    await sender.cycle()  # 204
    for _ in range(3):
        clock.advance(minutes=30)
        await sender.cycle()
    assert len(receiver.requests) == 3, "two failures, then delivered exactly once"
    (row,) = rows(ledger)
    assert row.attempts == 3 and row.sent_at == start + timedelta(seconds=90)
    assert row.last_error is None
    assert (sender.status.sent, sender.status.failed) == (1, 2)


async def test_a_notifier_killed_after_its_claim_leaves_the_message_to_the_next_after_the_lease(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, receiver: Receiver
) -> None:
    """A notifier claims a message (as `cycle` does, with its LEASE) and is killed before it
    sends it. Broken once: a lease of 0 (the next notifier sent it within the lease)."""
    catalog = with_channels(catalog, url=receiver.url)
    queue(ledger, catalog, clock, "waitlist:r4:turn")
    first = notifier(ledger, catalog, clock)
    (message,) = first.outbox.due(clock())
    assert first.outbox.claim(message.id, clock(), LEASE)
    del first  # killed between the claim and the send

    restarted = notifier(ledger, catalog, clock)
    for _ in range(3):
        clock.advance(seconds=LEASE.total_seconds() / 4)
        await restarted.cycle()
    assert receiver.requests == [], "never sent within the first one's lease"
    clock.advance(seconds=LEASE.total_seconds() / 4)
    await restarted.cycle()
    for _ in range(3):
        clock.advance(minutes=5)
        await restarted.cycle()
    assert len(receiver.requests) == 1, "sent once, after the lease"
    (row,) = rows(ledger)
    assert row.attempts == 2 and row.sent_at is not None


async def test_two_notifiers_at_once_deliver_every_message_once(
    ledger: Ledger,
    catalog: Catalog,
    clock: FakeClock,
    receiver: Receiver,
    smtp: tuple[Mailbox, int],
) -> None:
    """Two services' notifiers, each in a thread of its own with its own connections, cycle
    at the same moment over the same due messages. Broken once: sending without claiming
    (every message went twice)."""
    mailbox, port = smtp
    catalog = with_channels(catalog, smtp_port=port, url=receiver.url)
    for n in range(12):
        queue(ledger, catalog, clock, f"waitlist:r{n}:turn", user=f"user{n}")
    senders = [notifier(ledger, catalog, clock), notifier(ledger, catalog, clock)]
    both_due = [len(s.outbox.due(clock())) for s in senders]
    assert both_due == [24, 24], "both see every message due"
    await asyncio.gather(*(asyncio.to_thread(asyncio.run, s.cycle()) for s in senders))

    hooked = [json.loads(body)["request"] for _, body in receiver.requests]
    assert sorted(hooked) == sorted(f"waitlist:r{n}:turn" for n in range(12))
    mailed = [recipients[0] for recipients, _ in mailbox.mails]
    assert sorted(mailed) == sorted(f"user{n}@example.org" for n in range(12))
    assert sum(s.status.sent for s in senders) == 24
    assert all(r.sent_at is not None and r.attempts == 1 for r in rows(ledger))


async def test_a_message_for_a_channel_no_longer_configured_is_kept_and_retried(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, receiver: Receiver
) -> None:
    """The admin removed the webhook after the message was queued, then put it back. Broken
    once: dropping such messages as sent."""
    configured = with_channels(catalog, url=receiver.url)
    queue(ledger, configured, clock, "waitlist:r5:turn")
    current = with_channels(catalog)  # no channels
    sender = Notifier(Outbox(ledger.engine, clock=clock), lambda: current, ENVIRON, clock)
    await sender.cycle()
    (row,) = rows(ledger)
    assert row.sent_at is None and row.gave_up_at is None
    assert row.last_error is not None and "no webhook notifications" in row.last_error
    assert row.next_attempt_at == clock() + timedelta(seconds=30)

    current = configured
    clock.advance(seconds=30)
    await sender.cycle()
    assert len(receiver.requests) == 1
    (row,) = rows(ledger)
    assert row.sent_at == clock() and row.attempts == 2


async def test_a_message_that_cannot_go_is_given_up_after_a_day(
    ledger: Ledger, catalog: Catalog, clock: FakeClock, receiver: Receiver
) -> None:
    """Broken once: backoff without a cap (it waited 8.5 h between the last attempts)."""
    catalog = with_channels(catalog, url=receiver.url)
    receiver.answers = [503] * 1000
    queue(ledger, catalog, clock, "waitlist:r6:turn")
    queued = clock()
    sender = notifier(ledger, catalog, clock)
    waits = []
    while True:
        await sender.cycle()
        (row,) = rows(ledger)
        if row.gave_up_at is not None:
            break
        waits.append(row.next_attempt_at - clock())
        clock.now = row.next_attempt_at
    assert waits[:4] == [timedelta(seconds=s) for s in (30, 60, 120, 240)]
    assert max(waits) == timedelta(minutes=30)
    assert timedelta(hours=23, minutes=30) <= row.gave_up_at - queued <= timedelta(days=1)
    assert row.attempts == len(receiver.requests) == len(waits) + 1
    clock.advance(days=2)
    await sender.cycle()
    assert len(receiver.requests) == row.attempts, "not tried after giving up"
