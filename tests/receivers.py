"""Real receivers for what gpuhub sends, each in a thread of its own so that any test (sync or
async, in-process or a hub's subprocess) can reach it: an SMTP server (aiosmtpd) keeping every
mail, and an HTTP server keeping every webhook POST and answering JupyterHub's `GET /users`
from a list of user models."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from spawner_ext.up import free_port


@dataclass
class Mailbox:
    """What the SMTP server accepted: (envelope recipients, the message's bytes)."""

    mails: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        """The mails as a mail client reads them (headers unfolded)."""
        return [
            message_from_bytes(raw, _class=EmailMessage, policy=policy.default)
            for _, raw in self.mails
        ]

    def recipients(self) -> list[str]:
        return sorted(r for rcpt, _ in self.mails for r in rcpt)


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server on 127.0.0.1 without TLS or login: the mailbox and its port."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@dataclass
class Web:
    """What the HTTP server received and serves: webhook POSTs (path, headers, body), answered
    with `answers` in turn and then 204; `users` for `GET .../users` (JupyterHub's REST API
    without pagination, as hubs before 2.0 answer); `failing` answers every GET 503."""

    posts: list[tuple[str, Mapping[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    users: list[Mapping[str, Any]] = field(default_factory=list)
    failing: bool = False
    url: str = ""

    def bodies(self) -> list[Any]:
        return [json.loads(body) for _, _, body in self.posts]


@contextmanager
def http_server() -> Iterator[Web]:
    """An HTTP server on 127.0.0.1; `Web.url` is its root (no trailing slash)."""
    web = Web()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                web.posts.append((self.path, dict(self.headers), body))
                status = web.answers.pop(0) if web.answers else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if web.failing or not self.path.split("?")[0].endswith("/users"):
                self.send_response(503 if web.failing else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps(web.users).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    web.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield web
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
