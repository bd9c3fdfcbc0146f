"""The gpuhub service's API when the billing database does not answer (an outage, a failover
in progress): 503 with Retry-After and a sentence, logged as one line, instead of a 500 and a
traceback; the notebooks' activity reports and the pages try again on their own. Other errors
keep their codes. A real failing database: SQLite asked to open a file in a directory that does
not exist raises the driver's OperationalError, as a PostgreSQL host that refuses does.

Broken once: the DBAPIError branch of APIHandler.write_error removed, and the test failed (500)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from spawner_ext.service.reports_api import BILLING_UNAVAILABLE, RETRY_AFTER_SECONDS, APIHandler


class Reads(APIHandler):
    def get(self) -> None:
        engine = create_engine(f"sqlite:///{self.settings['ledger_path']}")
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()


class Refuses(APIHandler):
    def get(self) -> None:
        raise web.HTTPError(400, "the body must be JSON")


async def fetch(app: web.Application, path: str) -> tuple[int, dict[str, str], dict[str, object]]:
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        url = f"http://127.0.0.1:{port}{path}"
        response = await AsyncHTTPClient().fetch(url, raise_error=False)
    finally:
        server.stop()
    return response.code, dict(response.headers), json.loads(response.body)


async def test_a_database_that_does_not_answer_is_a_503_to_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application(
        [("/read", Reads, {"service": None}), ("/refuse", Refuses, {"service": None})],
        ledger_path=str(tmp_path / "no-such-directory" / "ledger.sqlite"),
    )
    with caplog.at_level(logging.WARNING):
        code, headers, body = await fetch(app, "/read")
    assert code == 503
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert body == {"status": 503, "message": BILLING_UNAVAILABLE}
    assert "Traceback" not in caplog.text
    assert "GET /read answered 503, the billing database did not answer" in caplog.text

    code, headers, body = await fetch(app, "/refuse")
    assert (code, body["message"]) == (400, "the body must be JSON"), "other errors as before"
    assert "Retry-After" not in headers
