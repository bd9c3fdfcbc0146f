"""The gpuhub service's notifier: sends the outbox's due messages (ledger/outbox.py) by email
(SMTP) or webhook (a JSON POST), each once, retrying with backoff until it goes or the outbox
gives it up. It decides nothing about what to say; that was decided when the message was queued.

Sent once: a message is claimed in the database (its next attempt moved a lease ahead) before it
is sent, so a second service, or this one restarted, leaves it alone while it is being sent. A
send takes less than the lease (its timeouts say so). Only a service killed between a message
going out and recording it sends that message again, once the lease is over."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from sqlalchemy.exc import DBAPIError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..catalog import Catalog
from ..catalog.waitlist import EmailNotifications, WebhookNotifications
from ..clock import Clock, utcnow
from ..ledger.engine import SchemaError
from ..ledger.outbox import EMAIL, GIVE_UP_AFTER, WEBHOOK, Message, Outbox

log = logging.getLogger("gpuhub.notifier")

INTERVAL = timedelta(seconds=5)
"""How often the outbox is read for due messages."""
LEASE = timedelta(minutes=2)
"""How long a claimed message is left alone by other notifiers: longer than any send may take."""
SEND_TIMEOUT = timedelta(seconds=60)
"""The longest one send may take (connecting, TLS, login, delivery), well within the lease."""
FIRST_RETRY = timedelta(seconds=30)
"""The wait after a first failed attempt; it doubles after each further one..."""
LONGEST_RETRY = timedelta(minutes=30)
"""...up to this."""
SIGNATURE_HEADER = "X-Gpuhub-Signature"
DELIVERY_HEADER = "X-Gpuhub-Delivery"


class SendError(Exception):
    """A message could not be sent; its text is what the outbox and the log keep."""


@dataclass
class NotifierStatus:
    cycles: int = 0
    sent: int = 0
    """Messages sent since the service started."""
    failed: int = 0
    """Attempts that failed since the service started (each retry counts)."""
    last_cycle_at: datetime | None = None


def secret_environment(catalog: Catalog, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the catalog's notifications name (`password_env`, `secret_env`) with their
    values from the hub's `environ`, for the service's environment: JupyterHub starts a managed
    service with a bare one. Read when the hub starts (a new name takes a hub restart)."""
    settings = catalog.notifications
    names = [
        settings.email.password_env if settings.email else None,
        settings.webhook.secret_env if settings.webhook else None,
    ]
    return {name: environ[name] for name in names if name is not None and name in environ}


def retry_delay(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s, 1 min, 2 min, ... up to 30 min."""
    doublings = min(max(attempts - 1, 0), 16)  # 30 s * 2**16 is far past the cap
    return min(FIRST_RETRY * (1 << doublings), LONGEST_RETRY)


def signature(secret: str, body: bytes) -> str:
    """The X-Gpuhub-Signature of a webhook body: `sha256=` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def email_of(settings: EmailNotifications, message: Message) -> EmailMessage:
    """The email of an outbox message. Its Message-ID is the outbox's, so a message sent again
    (after a crash between sending and recording it) is known as the same by mail clients."""
    email = EmailMessage()
    email["From"] = settings.from_
    email["To"] = message.recipient
    email["Subject"] = message.subject
    email["Date"] = format_datetime(message.created_at)
    domain = parseaddr(settings.from_)[1].rpartition("@")[2]
    email["Message-ID"] = f"<gpuhub.notification.{message.id}@{domain}>"
    email.set_content(message.body)
    return email


class Notifier:
    """Sends the outbox's due messages. `catalog` gives the catalog in force (its
    `notifications`: where and how to send); `environ` the service's environment, where the
    SMTP password and the webhook secret are read from, by the names the catalog gives."""

    def __init__(
        self,
        outbox: Outbox,
        catalog: Callable[[], Catalog],
        environ: Mapping[str, str],
        clock: Clock = utcnow,
        *,
        concurrency: int = 10,
    ) -> None:
        self.outbox = outbox
        self.catalog = catalog
        self.environ = environ
        self.clock = clock
        self.status = NotifierStatus()
        self._limit = asyncio.Semaphore(concurrency)

    async def cycle(self) -> None:
        """Send every due message once (concurrently, a few at a time)."""
        now = self.clock()
        due = self.outbox.due(now)
        results = await asyncio.gather(*(self._one(m) for m in due), return_exceptions=True)
        self.status.cycles += 1
        self.status.last_cycle_at = now
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the database failed: the lease brings the message back

    async def _one(self, message: Message) -> None:
        async with self._limit:
            if not self.outbox.claim(message.id, self.clock(), LEASE):
                return  # another notifier has it, or had it sent meanwhile
            try:
                await self._send(self.catalog(), message)
            except SendError as exc:
                self._failed(message, str(exc))
                return
            self.outbox.sent(message.id, self.clock())
            self.status.sent += 1

    def _failed(self, message: Message, error: str) -> None:
        attempts = message.attempts + 1  # the claim counted this one
        now = self.clock()
        retry_at = now + retry_delay(attempts)
        self.outbox.failed(message.id, error, retry_at)
        self.status.failed += 1
        if retry_at - message.created_at > GIVE_UP_AFTER:
            then = f"giving up after {attempts} attempts"
        else:
            then = f"trying again at {retry_at:%H:%M:%S} UTC"
        # Neither the recipient (a webhook URL can hold a token) nor any secret: the key says
        # which message, the outbox row says the rest.
        log.warning("notifier: %s %s failed (%s); %s", message.channel, message.key, error, then)

    async def _send(self, catalog: Catalog, message: Message) -> None:
        settings = catalog.notifications
        if message.channel == EMAIL and settings.email is not None:
            await self._email(settings.email, message)
        elif message.channel == WEBHOOK and settings.webhook is not None:
            await self._webhook(settings.webhook, message)
        else:
            raise SendError(
                f"the catalog configures no {message.channel} notifications (notifications."
                f"{message.channel}); the message is kept and tried again in case they come back"
            )

    def _secret(self, name: str, what: str) -> str:
        value = self.environ.get(name)
        if not value:
            raise SendError(f"the environment variable {name} with the {what} is not set")
        return value

    async def _email(self, settings: EmailNotifications, message: Message) -> None:
        password = None
        if settings.username is not None and settings.password_env is not None:
            password = self._secret(settings.password_env, "mail server password")
        email = email_of(settings, message)
        timeout = SEND_TIMEOUT.total_seconds()
        try:
            await asyncio.wait_for(
                asyncio.to_thread(_deliver, settings, password, email, timeout / 2), timeout
            )
        except (smtplib.SMTPException, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if password:
                error = error.replace(password, "***")
            raise SendError(f"mail server {settings.smtp}: {error}") from None

    async def _webhook(self, settings: WebhookNotifications, message: Message) -> None:
        body = message.body.encode()
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: message.key}
        if settings.secret_env is not None:
            headers[SIGNATURE_HEADER] = signature(
                self._secret(settings.secret_env, "webhook secret"), body
            )
        request = HTTPRequest(
            settings.url,
            method="POST",
            body=body,
            headers=headers,
            connect_timeout=SEND_TIMEOUT.total_seconds() / 2,
            request_timeout=SEND_TIMEOUT.total_seconds(),
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (HTTPClientError, OSError, TimeoutError) as exc:  # no answer (a timeout: 599)
            raise SendError(f"webhook: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.code < 300:
            reason = response.reason or (str(response.error) if response.error else "")
            raise SendError(f"webhook answered HTTP {response.code} {reason}".rstrip())

    async def run(self) -> None:
        """A cycle every few seconds, until cancelled; a failed cycle is logged and tried again."""
        while True:
            await self.cycle_safely()
            await asyncio.sleep(INTERVAL.total_seconds())

    async def cycle_safely(self) -> bool:
        try:
            await self.cycle()
        except (DBAPIError, SchemaError, OSError) as exc:
            log.error("notifier: cycle skipped, trying again in %ss: %s", INTERVAL.seconds, exc)
            return False
        except Exception:
            log.exception("notifier: cycle failed")
            return False
        return True


def _deliver(
    settings: EmailNotifications, password: str | None, email: EmailMessage, timeout: float
) -> None:
    """Blocking: connect, STARTTLS and log in as configured, send one email."""
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.username is not None and password is not None:
            smtp.login(settings.username, password)
        smtp.send_message(email)
