"""The service's report API under /services/gpu-usage/api/v1/: usage (JSON, or CSV streamed in
constant memory), right-sizing hints, borrowing (what teams borrowed, lent and lost to
reclaim), live allocations, a team's budget burn-down, the catalog's status, the service's
status with its last error (admins) and an OpenAPI description.
Authenticated by JupyterHub (OAuth in the browser, or a JupyterHub API token in
`Authorization: token ...`); what each asker may read is reports/access.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from jupyterhub.services.auth import HubOAuthenticated
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from sqlalchemy.exc import DBAPIError
from tornado import web

from ..clock import utcnow
from ..ledger.models import UsageSession
from ..ledger.rules import billed_seconds, session_cost
from ..reports.access import (
    Access,
    Forbidden,
    access_of_model,
    authorize,
    readable_teams,
    refused,
)
from ..reports.borrowing_query import read_borrowing
from ..reports.budget import burn_down
from ..reports.export import borrowing_document, borrowing_lines, csv_lines, json_document
from ..reports.hint_query import read_hints
from ..reports.query import Dimension, ReportError, UsageQuery, current_month, parse_usage_query
from ..reports.usage import usage_rows
from .app import GPUHubService
from .metrics import exposition, metrics_registry
from .openapi import OPENAPI

CSV_FLUSH_ROWS = 1000
BILLING_UNAVAILABLE = (
    "the billing database is not answering; nothing was recorded or read, try again in a minute"
)
RETRY_AFTER_SECONDS = 30

log = logging.getLogger("gpuhub.service")


class APIHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """JSON errors, and the asker's Access (403 without a JupyterHub login or token)."""

    def initialize(self, service: GPUHubService) -> None:
        self.service = service

    def access(self) -> Access:
        user = self.get_current_user()
        if not user:
            raise web.HTTPError(
                403,
                "log in to JupyterHub, or send a JupyterHub API token "
                "(Authorization: token <token>) that may access the gpu-usage service",
            )
        return access_of_model(user)

    def params(self) -> dict[str, list[str]]:
        return {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()}

    def write_json(self, body: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message  # the sentence for a person; the reason stays standard
        elif isinstance(exc, DBAPIError):  # an outage or a failover, not a bug: 503, retry
            status_code, message = 503, BILLING_UNAVAILABLE
            self.set_status(status_code)
            self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
        self.finish(json.dumps({"status": status_code, "message": message}))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """A billing database that does not answer is one line in the log, not a traceback."""
        if isinstance(value, DBAPIError):
            first = (str(value.orig or value).splitlines() or [""])[0]
            log.warning(
                "service: %s %s answered 503, the billing database did not answer: %s",
                self.request.method,
                self.request.path,
                first,
            )
            return
        super().log_exception(typ, value, tb)

    def wants_csv(self, params: Mapping[str, Sequence[str]]) -> bool:
        """CSV (format=csv, or Accept: text/csv without format) or JSON; 400 for another."""
        if params.get("format", ["json"]) not in (["json"], ["csv"]):
            raise web.HTTPError(400, "format must be json or csv")
        return params.get("format") == ["csv"] or (
            "format" not in params and "text/csv" in self.request.headers.get("Accept", "")
        )

    def attach_csv(self, name: str, query: UsageQuery) -> None:
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        filename = f"{name}-{query.period.since}-{query.period.until}.csv"
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')

    def known_teams(self) -> list[str]:
        return sorted(self.service.store.catalog.teams)

    def query(self, access: Access, params: Mapping[str, Sequence[str]]) -> UsageQuery:
        try:
            parsed = parse_usage_query(
                params, known_teams=self.known_teams(), today=utcnow().date()
            )
            return authorize(access, parsed)
        except ReportError as exc:
            raise web.HTTPError(400, _reason(exc)) from None
        except Forbidden as exc:
            raise web.HTTPError(403, _reason(exc)) from None


def _reason(exc: Exception) -> str:
    """The message of a refusal: the JSON body's `message` (the reason phrase stays standard)."""
    return str(exc)


class UsageHandler(APIHandler):
    """GET api/v1/usage?team=&since=&until=&by=&user=&format=json|csv"""

    async def get(self) -> None:
        access = self.access()
        params = self.params()
        wants_csv = self.wants_csv(params)
        query = self.query(access, params)
        rows = usage_rows(self.service.ledger().engine, query, utcnow())
        if not wants_csv:
            self.write_json(json_document(rows, query))
            return
        self.attach_csv("gpu-usage", query)
        for n, line in enumerate(csv_lines(rows, query.by)):
            self.write(line)
            if n % CSV_FLUSH_ROWS == 0:
                await self.flush()
        self.finish()


class HintsHandler(APIHandler):
    """GET api/v1/rightsizing?team=&since=&until=&user=: per team, user and profile, the cheaper
    profile that would have done and the period's possible saving (the teams one may read)."""

    def get(self) -> None:
        access = self.access()
        params = self.params()
        if "by" in params or "format" in params:
            raise web.HTTPError(
                400, "hints are per team, user and profile, as JSON: give team, since, until, user"
            )
        query = self.query(access, params)
        rows = read_hints(self.service.ledger(), self.service.store.catalog, query, utcnow())
        self.write_json(
            {
                "since": query.period.since.isoformat(),
                "until": query.period.until.isoformat(),
                "teams": list(query.teams) if query.teams is not None else None,
                "rows": [row.as_json() for row in rows],
            }
        )


class BorrowingHandler(APIHandler):
    """GET api/v1/borrowing?team=&since=&until=&by=user,day,gpu_type&user=&format=json|csv: per
    team, the GPU-hours it borrowed, lent and lost to reclaim (reports/borrowing.py). The
    teams one may read, as for usage: a lender's lead reads what its quota lent, with no
    borrower named (lent rows have no user); the borrowers by name are in their own team's
    rows."""

    def get(self) -> None:
        access = self.access()
        params = self.params()
        wants_csv = self.wants_csv(params)
        query = self.query(access, params)
        try:
            rows = read_borrowing(self.service.ledger().engine, query, utcnow())
        except ReportError as exc:
            raise web.HTTPError(400, _reason(exc)) from None
        if not wants_csv:
            self.write_json(borrowing_document(rows, query))
            return
        self.attach_csv("gpu-borrowing", query)
        self.finish("".join(borrowing_lines(rows, query.by)))


class AllocationsHandler(APIHandler):
    """GET api/v1/allocations: who holds which GPUs now, since when, at what cost so far, on
    every install sharing the billing database (a lead's team on every hub), each with its
    install."""

    def get(self) -> None:
        access = self.access()
        now = utcnow()
        found = []
        for s in self.service.ledger().open_sessions(every_install=True):
            if s.started_at is None or not (
                (s.team is not None and access.may_read(s.team)) or s.user == access.user
            ):
                continue
            found.append(_allocation(s, now))
        self.write_json({"allocations": found})


def _allocation(s: UsageSession, now: Any) -> dict[str, Any]:
    assert s.started_at is not None
    seconds = billed_seconds(s.started_at, now)
    return {
        "user": s.user,
        "server_name": s.server_name,
        "install": s.install,
        "team": s.team,
        "profile": s.profile,
        "gpu_type": s.gpu_type,
        "gpu_count": s.gpu_count,
        "since": s.started_at.isoformat(),
        "gpu_hours": round(seconds * s.gpu_count / 3600, 4),
        "cost": float(session_cost(s.price_per_hour, seconds)),
        "currency": s.currency,
    }


class BudgetHandler(APIHandler):
    """GET api/v1/budget?team=T: this month's burn-down and projection."""

    def get(self) -> None:
        access = self.access()
        team = self.get_query_argument("team", "")
        catalog = self.service.store.catalog
        if team not in catalog.teams:
            raise web.HTTPError(
                400, f"team={team!r} is not a team; teams: {', '.join(self.known_teams())}"
            )
        if not access.may_read(team):
            raise web.HTTPError(403, str(refused(access, f"the budget of team {team!r}")))
        now = utcnow()
        query = UsageQuery((team,), current_month(now.date()), (Dimension.DAY,))
        daily: dict[date, Decimal] = {}
        for row in usage_rows(self.service.ledger().engine, query, now):
            if row.day is not None:
                daily[row.day] = daily.get(row.day, Decimal(0)) + row.gpu_hours
        budget = catalog.teams[team].quota.monthly_gpu_hours
        budget_hours = None if budget is None else Decimal(str(budget))
        self.write_json(burn_down(team, budget_hours, daily, now).as_json())


class CatalogHandler(APIHandler):
    """GET api/v1/catalog: the catalog in force and the last failed reload (admins)."""

    def get(self) -> None:
        access = self.access()
        if not access.everything:
            raise web.HTTPError(403, "the catalog's status is for admins (every team)")
        store = self.service.store
        current, failed = store.current, store.last_error
        self.write_json(
            {
                "path": current.path,
                "version": current.version,
                "digest": current.digest,
                "loaded_at": current.loaded_at.isoformat(),
                "teams": readable_teams(access, current.catalog.teams),
                "last_error": None
                if failed is None
                else {
                    "failed_at": failed.failed_at.isoformat(),
                    "digest": failed.digest,
                    "problems": [str(p) for p in failed.error.problems],
                },
            }
        )


class StatusDetailHandler(APIHandler):
    """GET api/v1/status/detail: the public status plus the last failed tick's error (admins:
    a database's or the hub's message can name hosts and users)."""

    def get(self) -> None:
        if not self.access().everything:
            raise web.HTTPError(
                403, "the service's errors are for admins (every team); api/v1/status is public"
            )
        self.write_json(self.service.status.detail_json())


class MetricsHandler(APIHandler):
    """GET metrics: Prometheus exposition (every team's figures: needs custom:gpu-usage:read)."""

    def initialize(self, service: GPUHubService, registry: CollectorRegistry) -> None:  # type: ignore[override]
        super().initialize(service)
        self.registry = registry

    def get(self) -> None:
        if not self.access().everything:
            raise web.HTTPError(
                403, "metrics cover every team: scrape with a token that has custom:gpu-usage:read"
            )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(exposition(self.registry))


class OpenAPIHandler(web.RequestHandler):
    """GET api/v1/openapi.json (public: it describes, it holds no data)."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(OPENAPI))


def report_handlers(
    prefix: str, service: GPUHubService, *, metrics_user_labels: bool = False
) -> list[Any]:
    args = {"service": service}
    registry = metrics_registry(service, user_labels=metrics_user_labels)
    return [
        (rf"{prefix}metrics", MetricsHandler, {**args, "registry": registry}),
        (rf"{prefix}api/v1/usage", UsageHandler, args),
        (rf"{prefix}api/v1/rightsizing", HintsHandler, args),
        (rf"{prefix}api/v1/borrowing", BorrowingHandler, args),
        (rf"{prefix}api/v1/allocations", AllocationsHandler, args),
        (rf"{prefix}api/v1/budget", BudgetHandler, args),
        (rf"{prefix}api/v1/catalog", CatalogHandler, args),
        (rf"{prefix}api/v1/status/detail", StatusDetailHandler, args),
        (rf"{prefix}api/v1/openapi.json", OpenAPIHandler),
    ]
