"""Where notebook servers report: POST api/v1/activity (the extension's GPU samples, every few
seconds) and POST api/v1/keep (the user clicked Keep in the warning). Both take the server's own
JupyterHub token (JUPYTERHUB_API_TOKEN; its `server` role has this service's access scope) and
answer the culler's current warning for that server (whether Keep can delay it, and whom to ask
when it cannot), for a GPU server its team's budget notice (policy/notices.py), and what the
server's GPU meter in JupyterLab shows of its session: start, profile, team, price and cost so
far, the team's GPU-hours left this month, the deadlines that apply to it, and the right-sizing
hint for the session (a cheaper profile that would have done for its use so far). Those, the
share used, the stop's deadline and the leads are all a member learns of the team's budget here:
the budget API stays for leads. It is answered whether or not this service culls.

A token may report only for servers of its owner that it may access: a server's own token for
that server, a user's token for their servers. Forging "busy" can keep only one's own server
alive, which a busy kernel does too; max_age and the budget still stop it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tornado import web

from ..catalog import Catalog
from ..clock import utcnow
from ..end_reason import EndReason
from ..ledger.activity import ActivityLedger, ActivityRecord, CullWarning
from ..ledger.budgets import TeamBudgetState, team_budget_notice, team_budget_state
from ..ledger.models import UsageSession
from ..ledger.rules import billed_seconds, session_cost
from ..ledger.store import Ledger
from ..notebook.sampler import Activity, GPUSample, gpu_activity
from ..policy.activity import ActivityReport
from ..policy.admission import next_month_start
from ..policy.culling import CullSettings, ServerActivity, decide_cull, keep_delays, settings_for
from ..policy.gpu_use import GPUUse, sample_use
from ..policy.identity import Identity
from ..policy.notices import (
    BudgetNotice,
    budget_stop_at,
    server_deadlines,
    stop_advice,
    whom_to_ask,
)
from ..policy.rightsizing import suggestion_words
from ..reports.hints import suggestion_for
from .app import GPUHubService
from .culler import REPORT_FRESH, gpu_label, reclaim_for_name
from .reports_api import APIHandler

MAX_SAMPLES = 64
BUDGET_READ_EVERY = timedelta(seconds=10)
"""How long a team's budget state read for one server's answer serves the others' (every
server reports every few seconds)."""
HINT_READ_EVERY = timedelta(minutes=1)
"""How long a session's right-sizing hint, worked out from one read of its GPU use, serves its
server's answers (a server reports every ~10 s; the rule needs 30 minutes of use to say
anything, so a minute late is nothing)."""


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


def _hours(hours: Decimal) -> float:
    return float(round(hours, 4))


def identity_of(model: Mapping[str, Any]) -> Identity:
    """The person a server's token reports for, as the right-sizing hint asks which profiles
    they may start: the name and groups of the hub's user model for the token (JupyterHub tells
    every token its owner's name and groups). `admin` is not told to a server's token, and no
    profile depends on it."""
    return Identity(str(model.get("name", "")), frozenset(model.get("groups") or ()))


def rightsizing_body(
    session: UsageSession, catalog: Catalog, who: Identity, use: GPUUse | None
) -> dict[str, Any] | None:
    """The right-sizing hint the GPU meter shows for a session that used `use` of its GPUs so
    far (None: never measured): the cheapest profile `who` may start for the session's team
    that would have done, with its price and the session's own (reports/hints.suggestion_for,
    the rule the leads' hints follow). None for a server without GPUs, one measured for less
    than the rule's 30 minutes, or where nothing cheaper fits (profiles whose GPU type has no
    `memory_gib` in the catalog are never suggested)."""
    if not session.gpu_count or session.gpu_type is None or use is None:
        return None
    s = suggestion_for(
        catalog,
        session.team,
        who,
        used=(session.profile, session.gpu_type, session.gpu_count, session.price_per_hour),
        currency=session.currency,
        use=use,
    )
    if s is None:
        return None
    profile = catalog.profile(s.profile)
    return {
        "suggested_profile": s.profile,
        "suggested_profile_name": profile.display_name if profile is not None else s.profile,
        "suggested_price_per_hour": float(s.price_per_hour),
        "price_per_hour": float(s.instead_of_price_per_hour),
        "currency": session.currency,
        "observed_hours": round(s.observed_seconds / 3600, 4),
        "busy_percent": s.busy_percent,
        "p95_percent": s.p95_percent,
        "peak_memory_mib": s.peak_memory_mib,
        "memory_total_mib": s.memory_total_mib,
        "hint": suggestion_words(s, session.currency),
    }


def session_body(
    session: UsageSession,
    catalog: Catalog,
    budget: TeamBudgetState | None,
    record: ActivityRecord | None,
    now: datetime,
    rightsizing: dict[str, Any] | None = None,
    earlier_cost: Decimal = Decimal(0),
) -> dict[str, Any]:
    """What the server's GPU meter shows of its session at `now` (`earlier_cost`: what the
    run's earlier parts cost, for a borrowed server that became own): its start, profile, team,
    price per hour and cost so far (the ledger's billing rule on the session's own price), the
    team's GPU-hours left this month (`budget`: the team's budget state, None without a
    budget), the deadlines that apply to the server (policy/notices.server_deadlines, from
    the same inputs the culler and the budget notice use) and its right-sizing hint
    (`rightsizing_body`, None: no hint)."""
    team = catalog.teams.get(session.team or "")
    profile = catalog.profile(session.profile)
    gpu_type = catalog.gpu_types.get(session.gpu_type or "")
    quota = team.quota if team is not None else None
    monthly = quota.monthly_gpu_hours if quota is not None else None
    left = None
    if budget is not None and monthly is not None:
        total = Decimal(str(monthly))
        left = {
            "monthly_gpu_hours": float(total),
            "gpu_hours_used": _hours(budget.hours_used),
            "gpu_hours_left": _hours(max(total - budget.hours_used, Decimal(0))),
            "percent_used": 100 if total <= 0 else int(budget.hours_used * 100 / total),
            "resets_at": next_month_start(now).isoformat(),
        }
    started = session.started_at
    state = record.state if record is not None else None
    fresh = state is not None and now - state.reported_at <= REPORT_FRESH
    stop_at = grace = None
    if quota is not None and monthly is not None and session.gpu_count:  # budgets stop GPUs
        grace = quota.stop_running_over_budget_after
        if budget is not None:
            stop_at = budget_stop_at(quota, budget.hours_used, budget.over_since, now)
    view = ServerActivity(
        started=session.run_started_at or started or now,  # max_age counts the whole run
        last_activity=None,
        gpu_count=session.gpu_count,
        gpu_label=gpu_label(catalog, session),
        gpu_busy=bool(fresh and state and state.gpu_activity is Activity.BUSY),
        gpu_idle_since=state.gpu_idle_since if fresh and state and state.idle else None,
        kept_at=state.kept_at if state else None,
        budget_stop_at=stop_at,
        reclaim_at=session.reclaim_at,
        reclaim_for=reclaim_for_name(catalog, session),
    )
    warning = record.warning if record is not None else None
    idle_at = warning.cull_at if warning and warning.reason == EndReason.CULLED_IDLE else None
    settings = settings_for(catalog, session.profile, session.gpu_count)
    deadlines = server_deadlines(view, settings, grace, idle_at)
    run_started = session.run_started_at or started
    spent = session_cost(session.price_per_hour, billed_seconds(started, now)) + earlier_cost
    return {
        "started_at": run_started.isoformat() if run_started else None,
        "profile": session.profile,
        "profile_name": profile.display_name if profile is not None else session.profile,
        "gpu_type": session.gpu_type,
        "gpu_type_name": gpu_type.display_name if gpu_type is not None else session.gpu_type,
        "gpu_count": session.gpu_count,
        "team": session.team,
        "team_name": (team.display_name or session.team) if team is not None else session.team,
        "price_per_hour": float(session.price_per_hour),
        "currency": session.currency,
        "cost": float(spent),
        "cost_at": now.isoformat(),
        "borrowed": session.borrowed,
        "budget": left,
        "deadlines": [d.as_json() for d in deadlines],
        "rightsizing": rightsizing,
    }


def answer_body(
    record: ActivityRecord | None,
    catalog: Catalog,
    team: str | None,
    budget: BudgetNotice | None,
    session: dict[str, Any] | None = None,
    reclaim: CullWarning | None = None,
) -> dict[str, Any]:
    """The answer to a server's report or Keep: its activity as recorded, the culler's warning
    (with `keep`: whether Keep can delay that stop, and `advice`: what to do when it cannot,
    naming the leads of `team`, the team the server is charged to), the team's budget
    notice and what the GPU meter shows of the session (`session_body`). A borrowed server
    chosen to give its GPUs back (`reclaim`) is warned of that, unless the culler's warning
    comes first."""
    warning = None
    shown = record.warning if record is not None else None
    if shown is not None and shown.reason == EndReason.RECLAIMED:
        shown = None  # the culler's copy may be stale (withdrawn, chosen again): `reclaim` is not
    if reclaim is not None and (shown is None or reclaim.cull_at <= shown.cull_at):
        shown = reclaim  # the culler may not run (or not yet): the reclaim warns by itself
    if shown is not None:
        reason = shown.reason
        warning = {
            "message": shown.message,
            "cull_at": shown.cull_at.isoformat(),
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
        "session": session,
    }


def reclaim_warning(catalog: Catalog, session: UsageSession, now: datetime) -> CullWarning | None:
    """The warning of a borrowed server chosen to give its GPUs back, worded as the culler words
    its own (policy/culling.py); None when it is not chosen."""
    if session.reclaim_at is None or session.ended_at is not None:
        return None
    view = ServerActivity(
        started=session.started_at or now,
        last_activity=None,
        gpu_count=session.gpu_count,
        gpu_label=gpu_label(catalog, session),
        reclaim_at=session.reclaim_at,
        reclaim_for=reclaim_for_name(catalog, session),
    )
    only_reclaim = CullSettings(
        idle_timeout=None,
        gpu_idle_timeout=None,
        max_age=None,
        warn_before=timedelta(0),
        gpu_utilization_percent=catalog.culling.gpu_utilization_percent,
    )
    decision = decide_cull(view, only_reclaim, now)
    if decision.reason is not EndReason.RECLAIMED or decision.cull_at is None:
        return None
    return CullWarning(decision.message, decision.cull_at, EndReason.RECLAIMED.value)


class TeamBudgets:
    """Teams' budget states, each read at most once per BUDGET_READ_EVERY."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[datetime, TeamBudgetState]] = {}

    def state(self, ledger: Ledger, team: str, now: datetime) -> TeamBudgetState:
        cached = self._read.get(team)
        if cached is None or not timedelta(0) <= now - cached[0] < BUDGET_READ_EVERY:
            cached = self._read[team] = (now, team_budget_state(ledger, team))
        return cached[1]

    def notice(
        self, ledger: Ledger, catalog: Catalog, team: str, now: datetime
    ) -> BudgetNotice | None:
        return team_budget_notice(catalog, team, self.state(ledger, team, now), now)


class SessionHints:
    """Running sessions' right-sizing hints, each worked out from one read of the session's GPU
    use at most once per HINT_READ_EVERY; hints not asked for in that long are dropped."""

    def __init__(self) -> None:
        self._read: dict[int, tuple[datetime, dict[str, Any] | None]] = {}
        self._swept_at: datetime | None = None

    def hint(
        self,
        ledger: Ledger,
        catalog: Catalog,
        session: UsageSession,
        who: Identity,
        now: datetime,
    ) -> dict[str, Any] | None:
        if not session.gpu_count:
            return None  # a server without GPUs: nothing to read
        cached = self._read.get(session.id)
        if cached is None or not timedelta(0) <= now - cached[0] < HINT_READ_EVERY:
            self._sweep(now)
            use = ActivityLedger(ledger).gpu_use([session.id]).get(session.id)
            hint = rightsizing_body(session, catalog, who, use)
            cached = self._read[session.id] = (now, hint)
        return cached[1]

    def _sweep(self, now: datetime) -> None:
        """Forget stale hints (of sessions that ended), at most once per HINT_READ_EVERY."""
        if self._swept_at is not None and timedelta(0) <= now - self._swept_at < HINT_READ_EVERY:
            return
        self._swept_at = now
        self._read = {
            key: value
            for key, value in self._read.items()
            if timedelta(0) <= now - value[0] < HINT_READ_EVERY
        }


class ServerHandler(APIHandler):
    """The server a report is about, from the body, for the token's owner."""

    def initialize(
        self,
        service: GPUHubService,
        budgets: TeamBudgets | None = None,
        hints: SessionHints | None = None,
    ) -> None:
        super().initialize(service)
        self.budgets = budgets or TeamBudgets()
        self.hints = hints or SessionHints()

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
        now = utcnow()
        state = notice = meter = None
        entry = catalog.teams.get(team or "")
        if team and entry is not None and entry.quota.monthly_gpu_hours is not None:
            state = self.budgets.state(ledger, team, now)
            if session is not None and session.gpu_count:  # budgets count GPU-hours
                notice = team_budget_notice(catalog, team, state, now)
        if session is not None:
            who = identity_of(self.get_current_user() or {})
            hint = self.hints.hint(ledger, catalog, session, who, now)
            earlier = ledger.earlier_cost(session)  # 0 without a query unless split
            meter = session_body(session, catalog, state, record, now, hint, earlier)
        reclaim = reclaim_warning(catalog, session, now) if session is not None else None
        self.write_json(answer_body(record, catalog, team, notice, meter, reclaim))


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
        use = sample_use(samples, threshold)  # the session's GPU use, for right-sizing
        record = ActivityLedger(self.service.ledger()).record(
            user, server_name, report, stored, utcnow(), REPORT_FRESH, use=use
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
    args = {"service": service, "budgets": TeamBudgets(), "hints": SessionHints()}
    return [
        (rf"{prefix}api/v1/activity", ActivityHandler, args),
        (rf"{prefix}api/v1/keep", KeepHandler, args),
    ]
