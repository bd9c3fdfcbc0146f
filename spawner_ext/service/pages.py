"""The usage page of the gpuhub service (/services/gpu-usage/), rendered in JupyterHub's own
`page.html` (the hub's templates, extended, not forked) so it looks at home. The page is a shell:
its script reads the report API with the browser's login and draws the tables and the chart, so
what is shown and what is downloaded are the same rows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from ..clock import utcnow
from ..reports.access import access_of_model, readable_teams, refused
from ..reports.query import current_month
from .app import GPUHubService

HERE = Path(__file__).parent
STATIC = HERE / "static"


def hub_templates() -> str:
    """Where this JupyterHub keeps its templates (page.html)."""
    from jupyterhub._data import DATA_FILES_PATH

    return os.path.join(DATA_FILES_PATH, "templates")


def environment() -> Environment:
    return Environment(
        loader=ChoiceLoader(
            [FileSystemLoader(str(HERE / "templates")), FileSystemLoader(hub_templates())]
        ),
        autoescape=select_autoescape(default=True),
    )


class UsagePageHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """GET /services/gpu-usage/: the usage page (a login through JupyterHub first)."""

    def initialize(self, service: GPUHubService, env: Environment, prefix: str) -> None:
        self.service = service
        self.env = env
        self.prefix = prefix

    @web.authenticated
    def get(self) -> None:
        user = self.get_current_user()
        access = access_of_model(user)
        teams = readable_teams(access, self.service.store.catalog.teams)
        asked = self.get_query_argument("team", "")
        if asked and asked not in teams:
            self.set_status(403)
            message = str(refused(access, f"the usage of team {asked!r}"))
            self.finish(self.render_page(user, error=message, teams=teams, access=access))
            return
        self.finish(self.render_page(user, error=None, teams=teams, access=access, team=asked))

    def render_page(self, user: dict[str, Any], **values: Any) -> str:
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        hub = base + "hub/"
        month = current_month(utcnow().date())
        access = values.pop("access")
        xsrf = self.xsrf_token.decode()
        settings = {
            "xsrf": xsrf,  # JupyterHub accepts cookie logins on fetch() only with it
            "api": f"{self.prefix}api/v1/",
            "chart": f"{self.prefix}static/vendor/chart.umd.min.js",
            "teams": values["teams"],
            "team": values.get("team") or (values["teams"][0] if values["teams"] else ""),
            "user": user["name"],
            "everything": access.everything,
            "since": month.since.isoformat(),
            "until": month.until.isoformat(),
        }
        template = self.env.get_template("gpu-usage.html")
        return template.render(
            base_url=hub,
            prefix=base,
            static_url=lambda path, include_version=True: f"{hub}static/{path}",
            own_static=f"{self.prefix}static/",
            login_url=f"{hub}login",
            logout_url=f"{hub}logout",
            user={"name": user["name"], "json_escaped_name": json.dumps(user["name"])[1:-1]},
            services=[],
            parsed_scopes={},
            no_spawner_check=True,
            xsrf_token=xsrf,
            version_hash="",
            announcement=None,
            settings=json.dumps(settings).replace("<", "\\u003c"),
            description=access.describe(),
            everything=access.everything,
            **values,
        )


def page_handlers(prefix: str, service: GPUHubService) -> list[Any]:
    return [
        (
            rf"{prefix}?",
            UsagePageHandler,
            {"service": service, "env": environment(), "prefix": prefix},
        ),
        (rf"{prefix}static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
    ]
