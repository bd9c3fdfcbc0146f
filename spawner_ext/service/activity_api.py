"""Where notebook servers report: POST api/v1/activity (the extension's GPU samples, every few
seconds) and POST api/v1/keep (the user clicked Keep in the warning). Both take the server's own
JupyterHub token (JUPYTERHUB_API_TOKEN; its `server` role has this service's access scope) and
answer the culler's current warning for that server (whether Keep can delay it, and whom to ask
when it cannot) and, for a GPU server, its team's budget notice (policy/notices.py). The notice
is all a member learns of the team's budget here (its share used, the stop's deadline, the
leads): the budget API stays for leads. It is answered whether or not this service culls.

A token may report only for servers of its owner that it may access: a server's own token for
that server, a user's token for their servers. Forging "busy" can keep only one's own server
alive, which a busy kernel does too; max_age and the budget still stop it."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any

from tornado import web

from ..catalog import Catalog
from ..clock import utcnow
from ..ledger.activity import ActivityLedger, ActivityRecord
from ..ledger.budgets import TeamBudgetState, team_budget_notice, team_budget_state
from ..ledger.store import Ledger
from ..notebook.sampler import GPUSample, gpu_activity
from ..policy.activity import ActivityReport
from ..policy.culling import keep_delays
from ..policy.notices import BudgetNotice, stop_advice, whom_to_ask
from .app import GPUHubService
from .culler import REPORT_FRESH
from .reports_api import APIHandler

MAX_SAMPLES = 64
BUDGET_READ_EVERY = timedelta(seconds=10)
"""How long a team's budget state read for one server's answer serves the others' (every
server reports every few seconds)."""


class BadReport(ValueError):
    """A report body is wrong; the message says what."""


def parse_samples(body: Any) -> list[GPUSample]:
    """The `gpus` list of a report -> samples, or BadReport."""
    gpus = body.get("gpus", []) if isinstance(body, dict) else None
    if not isinstance(gpus, list) or len(gpus) > MAX_SAMPLES:
        raise BadReport(f"'gpus' must be a list of at most {MAX_SAMPLES} samples")
    samples = []
    for n, item in enumerate(gpus):
        if not isinstance(item, dict):
            raise BadReport(f"gpus[{n}] must be an object")
        try:
            utilization = item.get("utilization")
            samples.append(
                GPUSample(
                    uuid=str(item["uuid"]),
                    name=str(item.get("name", "")),
                    is_mig=bool(item.get("is_mig", False)),
                    utilization=None if utilization is None else int(utilization),
                    memory_used=int(item.get("memory_used", 0)),
                    memory_total=int(item.get("memory_total", 0)),
                    processes=int(item.get("processes", 0)),
                    error=None if item.get("error") is None else str(item["error"]),
                )
            )
        except KeyError:
            raise BadReport(f"gpus[{n}] has no 'uuid'") from None
        except (TypeError, ValueError):
            raise BadReport(f"gpus[{n}]: utilization, memory and processes are numbers") from None
    return samples


def may_report(model: dict[str, Any], server_name: str) -> bool:
    """Whether the token behind `model` may report for its owner's server `server_name`."""
    name = model.get("name", "")
    scopes = set(model.get("scopes") or [])
    return (
        bool(
            scopes & {f"access:servers!server={name}/{server_name}", f"access:servers!user={name}"}
        )
        or "access:servers" in scopes
    )


def answer_body(
    record: ActivityRecord | None,
    catalog: Catalog,
    team: str | None,
    budget: BudgetNotice | None,
) -> dict[str, Any]:
    """The answer to a server's report or Keep: its activity as recorded, the culler's warning
    (with `keep`: whether Keep can delay that stop, and `advice`: what to do when it cannot,
    naming the leads of `team`, the team the server is charged to) and the team's budget
    notice."""
    warning = None
    if record is not None and record.warning is not None:
        reason = record.warning.reason
        warning = {
            "message": record.warning.message,
            "cull_at": record.warning.cull_at.isoformat(),
            "reason": reason,
            "keep": keep_delays(reason),
            "advice": stop_advice(reason, whom_to_ask(catalog.teams.get(team or ""))),
        }
    kept_at = record.state.kept_at if record is not None else None
    return {
        "running": record is not None,
        "activity": record.state.gpu_activity.value if record else None,
        "gpu_utilization_percent": catalog.culling.gpu_utilization_percent,
        "warning": warning,
        "kept_at": kept_at.isoformat() if kept_at else None,
        "budget": budget.as_json() if budget is not None else None,
    }


class TeamBudgets:
    """Teams' budget states, each read at most once per BUDGET_READ_EVERY."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[datetime, TeamBudgetState]] = {}

    def notice(
        self, ledger: Ledger, catalog: Catalog, team: str, now: datetime
    ) -> BudgetNotice | None:
        cached = self._read.get(team)
        if cached is None or not timedelta(0) <= now - cached[0] < BUDGET_READ_EVERY:
            cached = self._read[team] = (now, team_budget_state(ledger, team))
        return team_budget_notice(catalog, team, cached[1], now)


class ServerHandler(APIHandler):
    """The server a report is about, from the body, for the token's owner."""

    def initialize(self, service: GPUHubService, budgets: TeamBudgets | None = None) -> None:
        super().initialize(service)
        self.budgets = budgets or TeamBudgets()

    def body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return body

    def owner(self, body: dict[str, Any]) -> tuple[str, str]:
        model = self.get_current_user()
        if not model:
            raise web.HTTPError(403, "send the server's JupyterHub token (JUPYTERHUB_API_TOKEN)")
        server_name = body.get("server_name", "")
        if not isinstance(server_name, str):
            raise web.HTTPError(400, "'server_name' must be a string ('' for the default server)")
        if model.get("kind") != "user" or not may_report(model, server_name):
            raise web.HTTPError(
                403, f"this token may not report for server {server_name!r} of {model.get('name')}"
            )
        return str(model["name"]), server_name

    def answer(self, record: ActivityRecord | None) -> None:
        catalog = self.service.store.catalog
        ledger = self.service.ledger()
        session = ledger.session(record.session_id) if record is not None else None
        team = session.team if session is not None else None
        budget = None
        if session is not None and team and session.gpu_count:  # budgets count GPU-hours
            budget = self.budgets.notice(ledger, catalog, team, utcnow())
        self.write_json(answer_body(record, catalog, team, budget))


class ActivityHandler(ServerHandler):
    """POST api/v1/activity {"server_name": "", "gpus": [...], "kernel_busy": false}"""

    def post(self) -> None:
        body = self.body()
        user, server_name = self.owner(body)
        try:
            samples = parse_samples(body)
        except BadReport as exc:
            raise web.HTTPError(400, str(exc)) from None
        kernel_busy = body.get("kernel_busy", False)
        if not isinstance(kernel_busy, bool):
            raise web.HTTPError(400, "'kernel_busy' must be true or false")
        threshold = self.service.store.catalog.culling.gpu_utilization_percent
        report = ActivityReport(gpu_activity(samples, threshold), kernel_busy)
        stored = json.dumps([asdict(s) for s in samples])
        record = ActivityLedger(self.service.ledger()).record(
            user, server_name, report, stored, utcnow(), REPORT_FRESH
        )
        self.answer(record)


class KeepHandler(ServerHandler):
    """POST api/v1/keep {"server_name": ""}: the user keeps the server; the warning goes."""

    def post(self) -> None:
        user, server_name = self.owner(self.body())
        ledger = self.service.ledger()
        activity = ActivityLedger(ledger)
        session = ledger.open_session_of(user, server_name)
        before = activity.records([session.id]).get(session.id) if session is not None else None
        record = activity.keep(user, server_name, utcnow())
        if record is None:
            raise web.HTTPError(404, f"{user} has no running server {server_name!r}")
        warning = before.warning if before is not None else None
        if warning is not None and not keep_delays(warning.reason):
            activity.warn(record.session_id, warning)  # Keep cannot delay it: the warning stays
            record = replace(record, warning=warning)
        self.answer(record)


def activity_handlers(prefix: str, service: GPUHubService) -> list[Any]:
    args = {"service": service, "budgets": TeamBudgets()}
    return [
        (rf"{prefix}api/v1/activity", ActivityHandler, args),
        (rf"{prefix}api/v1/keep", KeepHandler, args),
    ]
