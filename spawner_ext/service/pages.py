"""The pages of the gpuhub service: usage (/services/gpu-usage/) and the wait-list
(/services/gpu-usage/waitlist), rendered in JupyterHub's own `page.html` (the hub's templates,
extended, not forked) so they look at home. Each page is a shell: its script reads the API with
the browser's login and draws what it answers, so what is shown and what scripts get are the
same."""

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


class PageHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """A page of the service in JupyterHub's `page.html` (a login through JupyterHub first); its
    script gets `settings` (with the XSRF token JupyterHub needs on a fetch() with the login
    cookie) as window.gpuhubSettings."""

    def initialize(self, service: GPUHubService, env: Environment, prefix: str) -> None:
        self.service = service
        self.env = env
        self.prefix = prefix

    def page(
        self, template: str, user: dict[str, Any], settings: dict[str, Any], **values: Any
    ) -> str:
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        hub = base + "hub/"
        xsrf = self.xsrf_token.decode()
        settings = {
            "xsrf": xsrf,  # JupyterHub accepts cookie logins on fetch() only with it
            "api": f"{self.prefix}api/v1/",
            "user": user["name"],
            **settings,
        }
        return self.env.get_template(template).render(
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
            **values,
        )


class UsagePageHandler(PageHandler):
    """GET /services/gpu-usage/: the usage page."""

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
        month = current_month(utcnow().date())
        access = values.pop("access")
        settings = {
            "chart": f"{self.prefix}static/vendor/chart.umd.min.js",
            "teams": values["teams"],
            "team": values.get("team") or (values["teams"][0] if values["teams"] else ""),
            "everything": access.everything,
            "since": month.since.isoformat(),
            "until": month.until.isoformat(),
        }
        return self.page(
            "gpu-usage.html",
            user,
            settings,
            description=access.describe(),
            everything=access.everything,
            **values,
        )


class WaitlistPageHandler(PageHandler):
    """GET /services/gpu-usage/waitlist: one's places in line, live (the script polls the
    wait-list API); `?server=NAME&options=JSON` (the link a refusal offers) adds the box to
    join; `?team=T` shows a team's line to its leads, read-only."""

    @web.authenticated
    def get(self) -> None:
        user = self.get_current_user()
        access = access_of_model(user)
        catalog = self.service.store.catalog
        team = self.get_query_argument("team", "")
        error = None
        if team and (team not in catalog.teams or not access.may_read(team)):
            self.set_status(403)
            error = str(refused(access, f"the wait-list of team {team!r}"))
            team = ""
        join = None
        if not team and self.get_query_argument("options", None) is not None:
            join = {
                "server": self.get_query_argument("server", ""),
                "options": self.get_query_argument("options", "{}"),
            }
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        settings = {
            "team": team,
            "join": join,
            "hub": base,
            "hold_minutes": round(catalog.waitlist.hold.total_seconds() / 60),
            "gpu_types": {k: t.display_name for k, t in catalog.gpu_types.items()},
            "profiles": {p.slug: p.display_name for p in catalog.profiles},
            "interval_ms": 5000,
        }
        self.finish(
            self.page(
                "waitlist.html",
                user,
                settings,
                error=error,
                team=team,
                team_name=catalog.teams[team].display_name if team else "",
                join=join is not None,
                hold_minutes=settings["hold_minutes"],
                enabled=catalog.waitlist.enabled,
            )
        )


def page_handlers(prefix: str, service: GPUHubService) -> list[Any]:
    args = {"service": service, "env": environment(), "prefix": prefix}
    return [
        (rf"{prefix}?", UsagePageHandler, args),
        (rf"{prefix}waitlist", WaitlistPageHandler, args),
        (rf"{prefix}static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
    ]
