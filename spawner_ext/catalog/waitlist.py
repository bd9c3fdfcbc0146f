"""Catalog sections of the GPU wait-list and of the notifications it sends (email, webhook).

Secrets are never part of the catalog: only names of the gpuhub service's environment variables.
No I/O."""

from __future__ import annotations

import re
from datetime import timedelta
from email.utils import parseaddr
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .durations import format_duration
from .values import Duration, EnvName, Model

# --- the GPU wait-list and notifications -------------------------------------------------------


class Waitlist(Model):
    """The wait-list (queue) for GPUs: when no GPU of a profile's type is free, a user may join
    the line instead of being refused, and gets the GPUs when it is their turn."""

    enabled: StrictBool = Field(
        True,
        description="False: no wait-list; a GPU server that cannot start now is refused with "
        "the reason.",
    )
    hold: Duration = Field(
        "10m",
        validate_default=True,
        description="When it is the turn of a user who asked to start the server themselves, "
        "their GPUs are held (nobody else may take them) for this long; if they do not start "
        "it by then, the GPUs go to the next in line.",
    )
    max_wait: Duration = Field(
        "8h",
        validate_default=True,
        description="A request waits in line at most this long; then it expires and its user is "
        "told so. Must be longer than `hold`.",
    )
    half_life: Duration = Field(
        "24h",
        validate_default=True,
        description="Fair share: teams that used fewer GPU-hours of a type lately (relative to "
        "their quota) go first. Past use counts less the older it is: GPU-hours this long ago "
        "count half, twice as long ago a quarter.",
    )
    reserve_after: Duration = Field(
        "30m",
        validate_default=True,
        description="Backfill: while the request at the head of the line waits for more GPUs "
        "than are free, smaller requests behind it may start on the free GPUs, but only until "
        "the head has waited this long. After that, GPUs are set aside for the head as they "
        "free up, so a large request is not passed over forever.",
    )

    @field_validator("max_wait")
    @classmethod
    def _longer_than_hold(cls, max_wait: timedelta, info: ValidationInfo) -> timedelta:
        hold = info.data.get("hold")
        if isinstance(hold, timedelta) and max_wait <= hold:
            raise ValueError(
                f"max_wait ({format_duration(max_wait)}) must be longer than hold "
                f"({format_duration(hold)}): a request waits for its turn and then its GPUs are "
                "held; raise max_wait or lower hold"
            )
        return max_wait


_SMTP = re.compile(r"(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def _smtp_address(value: str) -> str:
    found = _SMTP.fullmatch(value.strip())
    if found is None or not 1 <= int(found["port"]) <= 65535:
        raise ValueError(
            f"expected the mail server as host:port, such as mail.example.org:587, got {value!r}"
        )
    return value.strip()


def _mail_address(value: str) -> str:
    _, address = parseaddr(value)
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise ValueError(
            "expected a sender address such as gpuhub@example.org or "
            f"'gpuhub <gpuhub@example.org>', got {value!r}"
        )
    return value.strip()


def _address_template(value: str) -> str:
    if "{user}" not in value:
        raise ValueError(
            f"the address template must contain {{user}} (the JupyterHub user name), such as "
            f"'{{user}}' or '{{user}}@example.org', got {value!r}"
        )
    try:
        value.format(user="someone")
    except (KeyError, IndexError, ValueError):
        raise ValueError(
            f"the only placeholder the address template may have is {{user}}, got {value!r}; "
            "write a literal brace as {{ or }}"
        ) from None
    return value


def _webhook_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"expected an http:// or https:// URL such as https://hooks.example.org/gpuhub, "
            f"got {value!r}"
        )
    return value.strip()


class EmailNotifications(Model):
    """Email to users (their turn in the wait-list, a request that expired). The password is
    never written here: name an environment variable of the gpuhub service that holds it."""

    smtp: Annotated[StrictStr, AfterValidator(_smtp_address)] = Field(
        description="The mail server as host:port, e.g. `mail.example.org:587`."
    )
    from_: Annotated[StrictStr, AfterValidator(_mail_address)] = Field(
        alias="from",
        description="Sender of the emails, e.g. `gpuhub <gpuhub@example.org>`.",
    )
    starttls: StrictBool = Field(
        True,
        description="Encrypt the connection with STARTTLS before logging in and sending. False "
        "only for a mail relay on a trusted network.",
    )
    username: StrictStr | None = Field(
        None, description="User name to log in to the mail server. Absent: no login."
    )
    password_env: EnvName | None = Field(
        None,
        description="Name of the gpuhub service's environment variable that holds the mail "
        "server password, e.g. `GPUHUB_SMTP_PASSWORD`; the password itself never goes in the "
        "catalog. Needed with `username`.",
    )
    address: Annotated[StrictStr, AfterValidator(_address_template)] = Field(
        "{user}",
        validate_default=True,
        description="A user's email address, with `{user}` replaced by their JupyterHub user "
        "name: `{user}` when user names are email addresses (an identity provider's "
        "`username_claim: email`), or e.g. `{user}@example.org`.",
    )

    @model_validator(mode="after")
    def _login_needs_both(self) -> EmailNotifications:
        if (self.username is None) != (self.password_env is None):
            raise ValueError(
                "give both username and password_env to log in to the mail server, or neither "
                "to send without logging in"
            )
        return self

    @property
    def smtp_host(self) -> str:
        """The mail server's host name (IPv6 addresses without brackets)."""
        return self.smtp.rpartition(":")[0].strip("[]")

    @property
    def smtp_port(self) -> int:
        """The mail server's port."""
        return int(self.smtp.rpartition(":")[2])


class WebhookNotifications(Model):
    """A JSON POST of every wait-list event to a URL (e.g. a chat bot). With `secret_env`, each
    request carries `X-Gpuhub-Signature`: the HMAC-SHA256 of the body, keyed with the secret."""

    url: Annotated[StrictStr, AfterValidator(_webhook_url)] = Field(
        description="Where events are POSTed, an http:// or https:// URL."
    )
    secret_env: EnvName | None = Field(
        None,
        description="Name of the gpuhub service's environment variable that holds the signing "
        "secret, e.g. `GPUHUB_WEBHOOK_SECRET`. Absent: requests are not signed.",
    )


class Notifications(Model):
    """How the gpuhub service tells users about the wait-list (their turn, an expired request).
    Secrets are never written here, only the names of the service's environment variables
    that hold them."""

    email: EmailNotifications | None = Field(None, description="Absent: no email.")
    webhook: WebhookNotifications | None = Field(None, description="Absent: no webhook.")
