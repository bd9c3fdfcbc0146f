"""What GPUKubeSpawner and GPULocalSpawner share: the catalog in force, the options form with its
price and quota preview, validation of every spawn request, and the plan kept in spawner state.

Subclasses call `await self.plan_spawn()` before creating anything and build from `self.plan`.
"""

from __future__ import annotations

import html
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Float, Instance, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..catalog import Catalog
from ..catalog.store import CatalogStore, CatalogVersion
from ..clock import utcnow
from ..end_reason import EndReason
from ..hub.context import SETTINGS_KEY, HubContext, context_in
from ..hub.home import (
    BilledPart,
    RunningServerView,
    StoppedNotice,
    running_server_view,
    stopped_notice,
)
from ..hub.ledger_lane import CALL_TIMEOUT_SECONDS, LEDGER_DOWN
from ..hub.usage import RunningServersUsage, UsageSource
from ..hub.waiting import WaitingView, waiting_view
from ..install import InstallError, checked_install, default_install
from ..ledger.activity import ActivityLedger
from ..ledger.admission import Admission, AdmissionRefused, Request
from ..ledger.engine import DEFAULT_URL, SchemaError
from ..ledger.models import UsageSession
from ..ledger.sessions import ServerRef
from ..ledger.store import Ledger
from ..ledger.waitlist import WAITABLE
from ..policy.borrowing_text import borrow_offer
from ..policy.identity import Identity, teams_of
from ..policy.preview import LineKey, LineSpot, TeamUsage, free_gpus, usable_capacities
from ..policy.request import SpawnPlan, SpawnRefused, resolve_spawn
from ..policy.waitlist_text import join_offer, waitlist_page_url
from ..wire import (
    ENV_SERVICE_URL,
    SERVICE_NAME,
    ServerState,
    ServerSummary,
    read_state,
    write_state,
)
from .form import WaitlistLink, form_view, line_keys, render_form, user_options_from_form

try:  # JupyterHub >= 5.3 (and 6): a policy refusal, logged without a traceback
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older JupyterHub
    SpawnException = None


BILLING_UNAVAILABLE = "billing-unavailable"


def refusal(
    exc: SpawnRefused, status_code: int = 400, *, link: tuple[str, str] | None = None
) -> web.HTTPError:
    """The HTTP error (400 by default) that tells the user why their spawn was refused.
    `link`: (text, url) of a link shown after the message where JupyterHub shows a spawn's
    failure as HTML (`jupyterhub_html_message`); the API answers with the plain message."""
    if SpawnException is not None:
        error: web.HTTPError = SpawnException(
            exc.message, reason=exc.reason, status_code=status_code
        )
    else:
        error = web.HTTPError(status_code, exc.message.replace("%", "%%"))
    # What the spawn page shows, without the exception class and status in front.
    error.jupyterhub_message = exc.message  # type: ignore[attr-defined]
    if link is not None:
        text, url = link
        error.jupyterhub_html_message = (  # type: ignore[attr-defined]
            f'{html.escape(exc.message)} <a href="{html.escape(url)}">{html.escape(text)}</a>'
        )
        # Shown where JupyterHub renders a spawn's failure as HTML (the pending page). Its spawn
        # form does not (JupyterHub 5.5 and 6 pass `html_error_message` to a template reading
        # `error_html_message`), so there the plain message, with its address, stays; the
        # form's own offer beside the profile links to the line.
    return error


if TYPE_CHECKING:  # the mixin is always combined with a Spawner; type it as one
    from jupyterhub.spawner import Spawner as _SpawnerBase
else:
    _SpawnerBase = LoggingConfigurable


class GPUSpawnerMixin(_SpawnerBase):  # type: ignore[misc]
    """Base of the gpuhub spawners. List it before the concrete spawner class, which supplies
    JupyterHub's Spawner API (`user`, `db`, `user_options`, start/stop/poll)."""

    catalog_path = Unicode(
        "",
        config=True,
        help="Path of the admin catalog YAML (GPU types, teams, quotas, profiles). Reloaded "
        "within seconds when the file changes; an invalid edit keeps the last good catalog.",
    )
    usage_source = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="Object with `async team_usage(catalog, team, user) -> TeamUsage` for previews. "
        "Default: the GPUs held by running servers, read from JupyterHub's database.",
    )
    ledger_url = Unicode(
        DEFAULT_URL,
        config=True,
        help="SQLAlchemy URL of the billing database (quotas, budgets and metering). SQLite by "
        "default, beside JupyterHub's database; PostgreSQL in production. Create or upgrade its "
        "schema with `gpuhub db upgrade --db-url URL`. Empty: no quotas and no metering.",
    )
    install = Unicode(
        config=True,
        help="This hub's install name (with its gpuhub service): on every pod, team namespace, "
        "ResourceQuota and NetworkPolicy it makes (label gpuhub.io/install) and every ledger "
        "session it opens, so several hubs can share a cluster or a billing database without "
        "billing or stopping each other's servers. 1-40 lowercase letters, digits and '-'. "
        "Default: the hub's namespace (and Helm release, when it differs) on Kubernetes, "
        "`local` elsewhere. The gpuhub service must be given the same (`--install`).",
    )

    @default("install")
    def _install_default(self) -> str:
        return default_install(os.environ)

    @validate("install")
    def _install_valid(self, proposal: Any) -> str:
        try:
            return checked_install(str(proposal["value"]))
        except InstallError as exc:
            raise TraitError(f"c.{type(self).__name__}.install: {exc}") from None

    activity_url = Unicode(
        config=True,
        help="URL at which notebook servers reach the gpuhub service to report GPU activity "
        "(given to them as GPUHUB_SERVICE_URL), ending in /services/gpu-usage/. Default "
        "(local mode): the `url` of the registered gpu-usage service. GPUKubeSpawner: empty "
        "by default; set it to an address pods reach, e.g. the proxy's "
        "http://proxy-public/services/gpu-usage/. Empty: servers report nothing and "
        "GPU-aware culling has no GPU data (the plain idle timeout and max_age still apply).",
    )

    @default("activity_url")
    def _activity_url_default(self) -> str:
        return _service_url(self.config) or ""

    simulated_gpus = Unicode(
        "",
        config=True,
        help="Set by `gpuhub up --simulate-gpus`: shown on the form so nobody mistakes "
        "simulated GPUs for real ones.",
    )

    ledger_timeout = Float(
        CALL_TIMEOUT_SECONDS,
        config=True,
        help="Seconds the billing database may answer nothing of the hub's ledger work (run "
        "off the hub's event loop, in order) before the spawns waiting for their admission are "
        "refused as 'billing is unavailable'. A spawn in line behind other spawns' admissions "
        "that the database is answering waits on. An admission that finishes after its spawn "
        "was refused is closed unstarted. Read once, when the hub's first spawner is made.",
    )

    @validate("ledger_timeout")
    def _ledger_timeout_valid(self, proposal: Any) -> float:
        seconds = float(proposal["value"])
        if not seconds > 0:
            raise TraitError(
                f"c.{type(self).__name__}.ledger_timeout must be a number of seconds above 0, "
                f"not {proposal['value']!r} (default {CALL_TIMEOUT_SECONDS:g})"
            )
        return seconds

    context = Instance(
        HubContext,
        config=True,
        help="What all spawns of this hub share (catalog, ledger, local GPUs, team namespaces). "
        "Default: one per hub, made from catalog_path and ledger_url on first use and kept in "
        "JupyterHub's application settings.",
    )

    @default("context")
    def _context_default(self) -> HubContext:
        if not self.catalog_path:
            raise web.HTTPError(
                500, "gpuhub: set c.GPUSpawnerMixin.catalog_path to the catalog YAML file"
            )
        settings = getattr(self.user, "settings", None)
        if settings is None:
            settings = {}
        fresh = SETTINGS_KEY not in settings
        context = context_in(
            settings,
            self.catalog_path,
            self.ledger_url,
            self.log,
            install=self.install,
            call_timeout=self.ledger_timeout,
        )
        if fresh and self.ledger_url and not _service_registered(self.config):
            self.log.warning(
                "gpuhub: no '%s' service in c.JupyterHub.services: nothing reconciles billing "
                "or enforces budgets. Add it with spawner_ext.service.registration.register(c, "
                "service_config(...)) (docs/explanation/architecture.md).",
                SERVICE_NAME,
            )
        return context

    plan: SpawnPlan | None = None
    """The plan of the current (or last) spawn; None before the first one."""
    usage_session: str | None = None
    """The key of the current server's ledger session (billing), if metering is on."""
    admission_warning: str | None = None
    runtime_ref: str | None = None
    """Where the current server runs (`namespace/pod`, `local:<pid>`), once it started."""
    stopping: bool = False
    """True while the hub stops the server: stop() polls, and what that poll finds gone is
    the hub's own stop (billed until now), not a server that vanished."""

    @default("options_form")
    def _options_form_default(self) -> Any:
        return _render_options_form

    @default("options_from_form")
    def _options_from_form_default(self) -> Any:
        return self._user_options_from_form

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Any:
        return _validate_user_options

    submitted_options: dict[str, str] | None = None
    """The options of the last form submission, kept so a refused form comes back filled in."""

    def machine_free_gpus(self) -> dict[str, int] | None:
        """GPUs per type free on the machine, for spawners that know (local mode); None when
        the cluster's scheduler decides (Kubernetes)."""
        return None

    # --- catalog and identity -------------------------------------------------------------

    def catalog_store(self) -> CatalogStore:
        store: CatalogStore = self.context.store
        return store

    def catalog_version(self) -> CatalogVersion:
        return self.catalog_store().current

    def identity(self) -> Identity:
        groups = frozenset(group.name for group in getattr(self.user, "groups", []) or [])
        return Identity(self.user.name, groups, bool(getattr(self.user, "admin", False)))

    async def _team_usage(self, team: str | None, user: str) -> TeamUsage:
        catalog = self.catalog_version().catalog
        fallback: UsageSource = RunningServersUsage(self.db)
        try:
            if self.usage_source is not None:
                source: UsageSource = self.usage_source
                return await source.team_usage(catalog, team, user)
            if self.ledger_url:
                return await self.context.lane.read(
                    f"usage of team {team}", lambda ledger: ledger.team_usage(catalog, team, user)
                )
        except LEDGER_DOWN as exc:
            self.log.warning("gpuhub: form preview without the billing database: %s", exc)
        return await fallback.team_usage(catalog, team, user)

    # --- form ------------------------------------------------------------------------------

    async def render_options_form(self) -> str:
        version = self.catalog_version()
        catalog, who = version.catalog, self.identity()
        teams = teams_of(catalog, who) or (None,)
        usage: dict[str | None, TeamUsage] = {
            team: await self._team_usage(team, who.name) for team in teams
        }
        lines = await self.form_lines(catalog, who.name, line_keys(catalog, who))
        view = form_view(
            catalog,
            who,
            usage,
            utcnow(),  # after the lines were read: their "now" is not later than this
            previous=self.submitted_options or self.user_options or {},
            simulated_gpus=self.simulated_gpus or None,
            catalog_version=version.version,
            machine_free=self.machine_free_gpus(),
            runtime=self.form_runtime(),
            lines=lines,
            waitlist=WaitlistLink(self.hub_base_url(), self.name),
        )
        return render_form(view)

    async def form_lines(
        self, catalog: Catalog, user: str, keys: Iterable[LineKey]
    ) -> dict[LineKey, LineSpot] | None:
        """The GPU types' lines for the form, read from the ledger: the GPUs free per type, and
        (wait-list on) the place and estimate a request of `user` would get for each key. None
        without the billing database, or when it does not answer: the form then offers no
        wait."""
        if not self.ledger_url:
            return None
        try:
            return await self.context.lane.read(
                "form's lines", lambda ledger: _form_lines(ledger, catalog, user, keys)
            )
        except (*LEDGER_DOWN, web.HTTPError) as exc:
            self.log.warning("gpuhub: form without the wait-list (billing database): %s", exc)
            return None

    def form_runtime(self) -> str:
        """Where this spawner's servers run, for the form's notes on options that do nothing
        there: "kubernetes" (every `kubespawner_override` key applies) or "local" (none does;
        see spawners/form.py)."""
        return "kubernetes"

    def _user_options_from_form(self, formdata: Mapping[str, list[Any]]) -> dict[str, str]:
        options = user_options_from_form(formdata)
        self.submitted_options = options
        self.resolve(options)  # refuse now, so the form comes back with the reason
        self.submitted_options = None
        return options

    # --- planning --------------------------------------------------------------------------

    def resolve(self, user_options: Any) -> SpawnPlan:
        """Resolve user_options against the catalog in force; raises the HTTP 400 to show."""
        version = self.catalog_version()
        try:
            return resolve_spawn(
                version.catalog,
                self.identity(),
                user_options,
                catalog_version=version.version,
                install=self.install,
            )
        except SpawnRefused as exc:
            self.log.info("Refused spawn of %s: %s (%s)", self._log_name, exc.message, exc.reason)
            raise refusal(exc) from None

    async def plan_spawn(self) -> SpawnPlan:
        """Validate this spawn's user_options, admit it against the team's quotas and budget
        (opening its ledger session), and keep the plan. Call before creating anything."""
        plan = self.resolve(self.user_options)
        self.usage_session = None
        self.runtime_ref = None
        if self.ledger_url:
            request = Request(
                user=plan.user,
                server_name=self.name,
                team=plan.team,
                profile=plan.profile.slug,
                gpu_type=plan.gpu_type_key,
                gpu_count=plan.gpu_count,
                price_per_hour=plan.price_per_hour,
                currency=plan.currency,
                catalog_version=plan.catalog_version,
                waitlist=plan.waitlist,
                borrow=plan.borrow,
            )
            try:
                admission = await self._admit_fresh(request)
            except AdmissionRefused as exc:
                reason = exc.decision.reason or "quota"
                self.count_refusal(plan, reason)
                message, link = exc.decision.message, None
                may_borrow = exc.decision.may_borrow
                if may_borrow is not None and plan.gpu_type_key is not None:
                    catalog = self.catalog_version().catalog
                    message += " " + borrow_offer(
                        catalog, may_borrow.loans, plan.gpu_type_key, plan.gpu_count
                    )
                may_wait = reason in WAITABLE and fits_own_quota(
                    self.catalog_version().catalog, plan
                )
                offer = await self.waitlist_offer(plan) if may_wait else None
                if offer is not None and plan.waitlist is None:
                    sentence, url = offer
                    message += f" {sentence} Join at {url}"
                    link = ("Wait for a GPU", url)
                raise refusal(SpawnRefused(message, reason=reason), link=link) from None
            except LEDGER_DOWN as exc:
                if plan.gpu_count:
                    self.count_refusal(plan, BILLING_UNAVAILABLE)
                    if isinstance(exc, SchemaError):
                        self.log.error("gpuhub: %s", exc)
                        raise web.HTTPError(
                            503, f"The billing database is not ready: {exc}"
                        ) from None
                    raise _billing_unavailable(self, exc) from None
                # a CPU server starts unmetered; reconciliation adopts it later
                self.log.warning("gpuhub: %s starts unmetered: %s", self._log_name, exc)
            else:
                self.usage_session = admission.session
                self.admission_warning = admission.warning
        self.plan = plan
        return plan

    async def _admit_fresh(self, request: Request) -> Admission:
        """Admission, in the hub's ledger lane; when it finds no free GPU and this spawner can
        count them afresh (`refresh_capacity`), once more on the fresh count: a snapshot of the
        cluster's free GPUs may be a tick old, and a refusal on a stale one would send a person
        to wait for a GPU that is free. An admission that comes back after the spawn gave up
        waiting for it (LedgerTimeout) is closed at once, unstarted: nothing is billed."""
        catalog = self.catalog_version().catalog

        async def admit() -> Admission:
            return await self.context.lane.call(
                f"admission of {self._log_name}",
                lambda ledger: _admit(ledger, catalog, request),
                on_late=_undo_admission,
            )

        try:
            return await admit()
        except AdmissionRefused as exc:
            if exc.decision.reason != "no-free-gpu":
                raise
            if not await self.refresh_capacity(catalog):
                raise
        return await admit()

    async def refresh_capacity(self, catalog: Catalog) -> bool:
        """Record each GPU type's capacity afresh in the ledger; True when it did. Nothing here
        (local mode records its machine's GPUs as they change); GPUKubeSpawner reads the
        cluster."""
        return False

    async def waitlist_offer(self, plan: SpawnPlan) -> tuple[str, str] | None:
        """What a refusal that waiting can cure adds: where the person would stand in line and
        about when (a sentence), and where to join (the gpuhub service's wait-list page)."""
        catalog = self.catalog_version().catalog
        team, gpu_type = plan.team, plan.gpu_type_key
        if not catalog.waitlist.enabled or team is None or gpu_type is None:
            return None
        try:
            place, when = await self.context.lane.read(
                "wait-list preview",
                lambda ledger: ledger.preview(catalog, team, plan.user, gpu_type, plan.gpu_count),
            )
        except LEDGER_DOWN:
            return None
        url = waitlist_page_url(
            self.hub_base_url(), self.name, _join_options(plan, self.user_options)
        )
        return join_offer(place, when, utcnow()), url

    def hub_base_url(self) -> str:
        """The proxy's base URL of this hub ('/' by default)."""
        settings = getattr(self.user, "settings", None) or {}
        return str(settings.get("base_url", "/"))

    def count_refusal(self, plan: SpawnPlan, reason: str) -> None:
        """Count a refused GPU spawn for the metrics (written later if the billing database
        is down, like the billing writes)."""
        team, gpu_type, at = plan.team, plan.gpu_type_key, utcnow()
        if team is None or gpu_type is None or not self.ledger_url:
            return
        self.context.lane.write(
            f"refusal of {self._log_name} ({reason})",
            lambda ledger: ledger.count_refusal(team, gpu_type, reason, at),
        )

    async def metering_started(self, runtime_ref: str, at: datetime | None = None) -> None:
        """Billing starts at `at` (default now): the server runs with its GPUs bound. With the
        billing database down, the write waits in the hub's ledger lane and is retried (with
        this start time)."""
        self.runtime_ref = runtime_ref
        session, at = self.usage_session, at or utcnow()
        if session is None or not self.ledger_url:
            return
        await self.context.lane.settle(
            self.context.lane.write(
                f"start of session {session}",
                lambda ledger: ledger.mark_started(session, runtime_ref, at=at),
            )
        )

    async def metering_ended(
        self, reason: EndReason = EndReason.STOPPED, *, found_gone: bool = False
    ) -> None:
        """Billing ends (idempotent): now, when the hub stops the server; at the last time the
        server was seen running when it is `found_gone` (it may have died long before, e.g.
        while the hub was down). Closes the session this server carries and any session the
        service adopted for it; a reason the service asked for (budget, culling) wins. The
        session key is kept until here, whatever clear_state does."""
        server = ServerRef(self.user.name, self.name, self.usage_session, self.runtime_ref)
        self.usage_session = None
        self.runtime_ref = None
        if not self.ledger_url or (server.session is None and server.runtime_ref is None):
            return
        at = utcnow()
        written = self.context.lane.write(
            f"end of {server.user}/{server.server_name}",
            lambda ledger: ledger.close_server(server, reason, found_gone=found_gone, at=at),
            # Written late (the billing database was down): the service may have closed the
            # session meanwhile at its last-seen time; this stop record corrects that end.
            late=lambda ledger: ledger.close_server(
                server, reason, found_gone=found_gone, at=at, correct_earlier_end=True
            ),
        )
        await self.context.lane.settle(written)

    # --- lifecycle: what both spawners do around the concrete spawner's start/stop/poll ------

    def release_resources(self) -> None:
        """Give back what the server held besides its billing (local mode: its GPUs)."""

    def gone_reason(self) -> EndReason:
        """Why a server poll() finds gone ended (Kubernetes tells node-lost apart)."""
        return EndReason.STOPPED

    async def stop(self, now: bool = False) -> None:
        self.stopping = True
        running = True
        try:
            running = await self._still_running()
            await super().stop(now=now)
        finally:
            self.stopping = False
            self.release_resources()
            # Ran until now: billed until now. Already gone: billed until it was last seen
            # running (and, written late, never moves an end reconciliation recorded).
            await self.metering_ended(found_gone=not running)

    async def _still_running(self) -> bool:
        """Whether the server runs as the stop begins (True when that cannot be told)."""
        try:
            return await super().poll() is None
        except Exception as exc:
            self.log.warning("gpuhub: could not tell whether %s runs: %s", self._log_name, exc)
            return True

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None and not self.stopping:
            self.release_resources()
            await self.metering_ended(self.gone_reason(), found_gone=True)
        return status

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        if self.admission_warning:
            yield {"progress": 1, "message": f"Budget warning: {self.admission_warning}"}
        async for event in super().progress():
            yield event

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()
        if self.activity_url:
            env[ENV_SERVICE_URL] = self.activity_url
        return env

    # --- the hub's home page ----------------------------------------------------------------

    async def home_view(self) -> RunningServerView | None:
        """This server's row on the hub's home page (hub/home.py), None without a summary.
        Reads the ledger session's start: cost so far is what billing has counted."""
        summary = self.server_state().summary
        if summary is None:
            return None
        billed_since, note, part = None, None, None
        session = self.usage_session
        if session is None:
            note = "not metered"
        else:
            try:
                found = await self.context.lane.read(
                    f"session of {self._log_name}",
                    lambda ledger: _open_session_with_cost(
                        ledger, self.user.name, self.name, session
                    ),
                )
            except LEDGER_DOWN as exc:
                self.log.warning("gpuhub: home page without the billing database: %s", exc)
                found, note = None, "the billing database does not answer"
            if found is not None:
                row, earlier_cost = found
                billed_since = row.started_at
                part = BilledPart(
                    price_per_hour=row.price_per_hour,
                    borrowed=row.borrowed,
                    reclaim_at=row.reclaim_at,
                    run_since=row.run_started_at,
                    earlier_cost=earlier_cost,
                )
        started = getattr(getattr(self, "orm_spawner", None), "started", None)
        if started is not None and started.tzinfo is None:  # JupyterHub keeps naive UTC times
            started = started.replace(tzinfo=UTC)
        return running_server_view(
            self.name,
            summary,
            self.catalog_version().catalog,
            billed_since=billed_since,
            running_since=started,
            now=utcnow(),
            note=note,
            session=part,
        )

    async def stopped_notice(self) -> StoppedNotice | None:
        """Why gpuhub stopped this server, if it did in the last day (hub/home.py)."""
        if not self.ledger_url:
            return None
        try:
            found = await self.context.lane.read(
                f"last session of {self._log_name}",
                lambda ledger: _last_session_with_message(ledger, self.user.name, self.name),
            )
        except LEDGER_DOWN:
            return None
        if found is None:
            return None
        last, message = found
        return stopped_notice(self.name, last.end_reason, last.ended_at, message, utcnow())

    async def waiting_views(self) -> list[WaitingView]:
        """The user's live wait-list requests, for the home page (hub/waiting.py); none without
        the billing database or when it does not answer."""
        catalog = self.catalog_version().catalog
        if not self.ledger_url:
            return []
        try:
            requests = await self.context.lane.read(
                "wait-list requests", lambda ledger: ledger.requests(catalog, user=self.user.name)
            )
        except LEDGER_DOWN as exc:
            self.log.warning("gpuhub: home page without the wait-list: %s", exc)
            return []
        now, base_url = utcnow(), self.hub_base_url()
        return [waiting_view(r, catalog, base_url=base_url, now=now) for r in requests]

    # --- state -----------------------------------------------------------------------------

    def server_state(self) -> ServerState:
        """gpuhub's part of this spawner's state (see wire.py)."""
        summary = self.plan.summary if self.plan is not None else self.restored_summary
        return ServerState(
            summary=summary, session=self.usage_session, runtime_ref=self.runtime_ref
        )

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        state.update(write_state(self.server_state()))
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        ours = read_state(state)
        self.restored_summary = ours.summary
        self.usage_session = ours.session
        self.runtime_ref = ours.runtime_ref

    def clear_state(self) -> None:
        super().clear_state()
        self.plan = None
        self.restored_summary = None
        # usage_session and runtime_ref stay: LocalProcessSpawner.poll() clears state when it
        # finds the process gone, before the session is closed; metering_ended() drops them.

    restored_summary: ServerSummary | None = None
    """The server summary loaded from state after a hub restart (the plan itself is not kept)."""


def _services(config: Any) -> list[dict[str, Any]]:
    services = config.JupyterHub.get("services", []) if "JupyterHub" in config else []
    if hasattr(services, "get_value"):  # only appended to: a traitlets LazyConfigValue
        services = services.get_value([])
    return [s for s in services if isinstance(s, dict) and s.get("name") == SERVICE_NAME]


def _service_registered(config: Any) -> bool:
    return bool(_services(config))


def _service_url(config: Any) -> str | None:
    """The registered gpu-usage service's own URL and prefix, if it has a `url`."""
    for service in _services(config):
        if service.get("url"):
            return f"{str(service['url']).rstrip('/')}/services/{SERVICE_NAME}/"
    return None


def fits_own_quota(catalog: Catalog, plan: SpawnPlan) -> bool:
    """Whether the team's own quota of the type could ever hold the plan's server: the line
    waits for own quota, so a server bigger than it (one that can only borrow) is not offered a
    place in line."""
    if plan.team is None or plan.gpu_type_key is None:
        return False
    return plan.gpu_count <= catalog.teams[plan.team].quota.gpus.get(plan.gpu_type_key, 0)


def _form_lines(
    ledger: Ledger, catalog: Catalog, user: str, keys: Iterable[LineKey]
) -> dict[LineKey, LineSpot]:
    taken = [(s.gpu_type, s.gpu_count) for s in ledger.open_sessions()]
    taken += [(h.gpu_type, h.gpu_count) for h in ledger.holds()]
    usable = usable_capacities(catalog, ledger.capacities())
    free = free_gpus(usable, taken)
    lines = {}
    for team, gpu_type, gpu_count in keys:
        place, when = None, None
        if catalog.waitlist.enabled:
            place, when = ledger.preview(catalog, team, user, gpu_type, gpu_count)
        lines[team, gpu_type, gpu_count] = LineSpot(
            place, when, free.get(gpu_type), usable.get(gpu_type)
        )
    return lines


def _admit(ledger: Ledger, catalog: Catalog, request: Request) -> Admission:
    """Admission, tried a second time when the first found its pooled connection dead (the
    billing database restarted since it was last used)."""
    try:
        return ledger.admit(catalog, request)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return ledger.admit(catalog, request)


def _open_session_with_cost(
    ledger: Ledger, user: str, server_name: str, session: str
) -> tuple[UsageSession, Decimal] | None:
    """The server's open session of key `session`, with what its earlier parts cost."""
    found = ledger.session_of(user, server_name, session)
    if found is None or found.ended_at is not None:
        return None
    return found, ledger.earlier_cost(found)


def _last_session_with_message(
    ledger: Ledger, user: str, server_name: str
) -> tuple[UsageSession, str | None] | None:
    """The server's last session, with the message its stop left (if any)."""
    last = ledger.last_session(user, server_name)
    if last is None:
        return None
    return last, ActivityLedger(ledger).stop_message(last.id)


def _undo_admission(ledger: Ledger, admission: Admission) -> None:
    """Close an admission its spawn gave up waiting for (the server never starts)."""
    ledger.close(admission.session_id, EndReason.FAILED)


def _billing_unavailable(spawner: GPUSpawnerMixin, exc: Exception) -> web.HTTPError:
    spawner.log.error("gpuhub: the billing database is unavailable: %s", exc)
    return refusal(
        SpawnRefused(
            "Billing is unavailable right now (the billing database does not answer), so GPU "
            "servers cannot start; running servers are not affected. Try again in a minute, or "
            "start a CPU profile.",
            reason=BILLING_UNAVAILABLE,
        ),
        status_code=503,
    )


async def _render_options_form(spawner: GPUSpawnerMixin) -> str:
    return await spawner.render_options_form()


def _validate_user_options(spawner: GPUSpawnerMixin, user_options: Any) -> None:
    """JupyterHub's apply_user_options hook (>= 5.3): refuse bad options before start().
    The plan itself is made in start(), where admission happens."""
    spawner.resolve(user_options)


def _join_options(plan: SpawnPlan, user_options: Any) -> dict[str, str]:
    """The options a wait-list request starts the server with: the spawn's own, with its
    profile and team filled in."""
    options = {
        str(k): str(v)
        for k, v in (user_options or {}).items()
        if isinstance(v, str) and k != "waitlist"
    }
    options["profile"] = plan.profile.slug
    if plan.team is not None:
        options["team"] = plan.team
    return options
