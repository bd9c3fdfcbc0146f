"""The service's web application: its route table, built from the handler modules, each handed
the service. The handler modules import `GPUHubService` from app.py; app.py imports none of them."""

from __future__ import annotations

import json

from jupyterhub.services.auth import HubOAuthCallbackHandler
from tornado import web

from .activity_api import activity_handlers
from .app import GPUHubService
from .pages import page_handlers
from .reports_api import report_handlers
from .waitlist_api import waitlist_handlers


class StatusHandler(web.RequestHandler):
    """GET api/v1/status: when the service last ticked, what it did, and whether its ticks fail
    (counts and times only: no user data, no error messages; admins read those at
    api/v1/status/detail)."""

    def initialize(self, service: GPUHubService) -> None:
        self.service = service

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.service.status.as_json()))


def make_app(
    service: GPUHubService,
    prefix: str,
    *,
    cookie_secret: bytes,
    metrics_user_labels: bool = False,
) -> web.Application:
    """The status endpoint (public: counts only), the report API and metrics (reports_api.py),
    the wait-list API (waitlist_api.py), the pages (pages.py) and the OAuth callback
    JupyterHub's login returns to. `cookie_secret` signs the logins (cookie_secret.py: the same
    across restarts, or every reader logs in again)."""
    prefix = "/" + prefix.strip("/") + "/"
    return web.Application(
        [
            (rf"{prefix}api/v1/status", StatusHandler, {"service": service}),
            *report_handlers(prefix, service, metrics_user_labels=metrics_user_labels),
            *activity_handlers(prefix, service),
            *waitlist_handlers(prefix, service),
            (rf"{prefix}oauth_callback", HubOAuthCallbackHandler),
            *page_handlers(prefix, service),
        ],
        cookie_secret=cookie_secret,
    )
