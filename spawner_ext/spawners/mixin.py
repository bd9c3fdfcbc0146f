"""What GPUKubeSpawner and GPULocalSpawner share: the catalog in force, the options form with its
price and quota preview, validation of every spawn request, and the plan kept in spawner state.

Subclasses call `await self.plan_spawn()` before creating anything and build from `self.plan`.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from ..catalog.store import CatalogStore, CatalogVersion
from ..clock import utcnow
from ..hub.catalogs import shared_store
from ..hub.metering import Observer, ensure_reconciler, shared_ledger
from ..hub.usage import STATE_KEY, STATE_SESSION, RunningServersUsage, UsageSource
from ..ledger.engine import DEFAULT_URL, SchemaError
from ..ledger.models import EndReason
from ..ledger.store import AdmissionRefused, Ledger, Request
from ..policy.identity import Identity, teams_of
from ..policy.preview import TeamUsage
from ..policy.request import SpawnPlan, SpawnRefused, resolve_spawn
from .form import form_view, render_form, user_options_from_form

try:  # JupyterHub >= 5.3 (and 6): a policy refusal, logged without a traceback
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older JupyterHub
    SpawnException = None


def refusal(exc: SpawnRefused) -> web.HTTPError:
    """The HTTP 400 that tells the user why their spawn was refused."""
    if SpawnException is not None:
        error: web.HTTPError = SpawnException(exc.message, reason=exc.reason, status_code=400)
    else:
        error = web.HTTPError(400, exc.message.replace("%", "%%"))
    # What the spawn page shows, without the exception class and status in front.
    error.jupyterhub_message = exc.message  # type: ignore[attr-defined]
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
    simulated_gpus = Unicode(
        "",
        config=True,
        help="Set by `gpuhub up --simulate-gpus`: shown on the form so nobody mistakes "
        "simulated GPUs for real ones.",
    )

    plan: SpawnPlan | None = None
    """The plan of the current (or last) spawn; None before the first one."""
    usage_session_id: int | None = None
    """The ledger session of the current server (billing), if metering is on."""
    admission_warning: str | None = None
    stop_reason: EndReason | None = None
    """Why the next stop happens (set by the culler or budget enforcement); default: stopped."""
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
        if not self.catalog_path:
            raise web.HTTPError(
                500, "gpuhub: set c.GPUSpawnerMixin.catalog_path to the catalog YAML file"
            )
        return shared_store(self.catalog_path, self.log)

    def catalog_version(self) -> CatalogVersion:
        return self.catalog_store().current

    def identity(self) -> Identity:
        groups = frozenset(group.name for group in getattr(self.user, "groups", []) or [])
        return Identity(self.user.name, groups, bool(getattr(self.user, "admin", False)))

    def ledger(self) -> Ledger | None:
        if not self.ledger_url:
            return None
        try:
            return shared_ledger(self.ledger_url)
        except SchemaError as exc:
            self.log.error("gpuhub: %s", exc)
            raise web.HTTPError(503, f"The billing database is not ready: {exc}") from None

    def _usage(self) -> UsageSource:
        source: UsageSource = self.usage_source or self.ledger() or RunningServersUsage(self.db)
        return source

    # --- form ------------------------------------------------------------------------------

    async def render_options_form(self) -> str:
        version = self.catalog_version()
        catalog, who = version.catalog, self.identity()
        source = self._usage()
        teams = teams_of(catalog, who) or (None,)
        usage: dict[str | None, TeamUsage] = {
            team: await source.team_usage(catalog, team, who.name) for team in teams
        }
        view = form_view(
            catalog,
            who,
            usage,
            utcnow(),
            previous=self.submitted_options or self.user_options or {},
            simulated_gpus=self.simulated_gpus or None,
            catalog_version=version.version,
            machine_free=self.machine_free_gpus(),
        )
        return render_form(view)

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
                version.catalog, self.identity(), user_options, catalog_version=version.version
            )
        except SpawnRefused as exc:
            self.log.info("Refused spawn of %s: %s (%s)", self._log_name, exc.message, exc.reason)
            raise refusal(exc) from None

    async def plan_spawn(self) -> SpawnPlan:
        """Validate this spawn's user_options, admit it against the team's quotas and budget
        (opening its ledger session), and keep the plan. Call before creating anything."""
        plan = self.resolve(self.user_options)
        ledger = self.ledger()
        if ledger is not None:
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
            )
            try:
                admission = ledger.admit(self.catalog_version().catalog, request)
            except AdmissionRefused as exc:
                reason = exc.decision.reason or "quota"
                raise refusal(SpawnRefused(exc.decision.message, reason=reason)) from None
            self.usage_session_id = admission.session_id
            self.admission_warning = admission.warning
        self.plan = plan
        self.stop_reason = None
        return plan

    def metering_started(self, runtime_ref: str) -> None:
        """Billing starts: the server runs with its GPUs bound."""
        ledger = self.ledger()
        if ledger is not None and self.usage_session_id is not None:
            ledger.mark_started(self.usage_session_id, runtime_ref)

    def metering_ended(self, reason: EndReason | None = None, *, found_gone: bool = False) -> None:
        """Billing ends (idempotent): now, when the hub stops the server; at the last time the
        server was seen running when it is `found_gone` (it may have died long before, e.g.
        while the hub was down). The session id is kept until here, whatever clear_state does."""
        ledger = self.ledger()
        if ledger is not None and self.usage_session_id is not None:
            why = reason or self.stop_reason or EndReason.STOPPED
            if found_gone:
                ledger.close_found_gone(self.usage_session_id, why)
            else:
                ledger.close(self.usage_session_id, why)
        self.usage_session_id = None

    # --- lifecycle: what both spawners do around the concrete spawner's start/stop/poll ------

    def observer(self) -> Observer:
        """What lists this runtime's running servers, for reconciliation (per subclass)."""
        raise NotImplementedError

    def start_background_work(self) -> None:
        """Make sure the hub-wide reconciliation loop runs (idempotent, cheap)."""
        ledger = self.ledger()
        if ledger is not None:
            ensure_reconciler(self.ledger_url, ledger, self.observer(), self.catalog_store())

    def release_resources(self) -> None:
        """Give back what the server held besides its billing (local mode: its GPUs)."""

    def gone_reason(self) -> EndReason:
        """Why a server poll() finds gone ended (Kubernetes tells node-lost apart)."""
        return EndReason.STOPPED

    async def stop(self, now: bool = False) -> None:
        self.stopping = True
        try:
            await super().stop(now=now)
        finally:
            self.stopping = False
            self.release_resources()
            self.metering_ended()

    async def poll(self) -> int | None:
        if self.usage_session_id is not None:
            self.start_background_work()  # after a hub restart, before any new spawn
        status: int | None = await super().poll()
        if status is not None and not self.stopping:
            self.release_resources()
            self.metering_ended(self.gone_reason(), found_gone=True)
        return status

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        if self.admission_warning:
            yield {"progress": 1, "message": f"Budget warning: {self.admission_warning}"}
        async for event in super().progress():
            yield event

    # --- state -----------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        summary = plan_state(self.plan) if self.plan is not None else self.restored_plan
        if summary:
            state[STATE_KEY] = summary
        if self.usage_session_id is not None:
            state[STATE_SESSION] = self.usage_session_id
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.restored_plan = copy.deepcopy(state.get(STATE_KEY))
        session = state.get(STATE_SESSION)
        self.usage_session_id = session if isinstance(session, int) else None

    def clear_state(self) -> None:
        super().clear_state()
        self.plan = None
        self.restored_plan = None
        # usage_session_id stays: LocalProcessSpawner.poll() clears state when it finds the
        # process gone, before the session is closed; metering_ended() drops it.

    restored_plan: dict[str, Any] | None = None
    """The plan summary loaded from state after a hub restart (the plan itself is not kept)."""


async def _render_options_form(spawner: GPUSpawnerMixin) -> str:
    return await spawner.render_options_form()


def _validate_user_options(spawner: GPUSpawnerMixin, user_options: Any) -> None:
    """JupyterHub's apply_user_options hook (>= 5.3): refuse bad options before start().
    The plan itself is made in start(), where admission happens."""
    spawner.resolve(user_options)


def plan_state(plan: SpawnPlan) -> dict[str, Any]:
    """The JSON summary of a plan kept in spawner state (for usage counts and restarts)."""
    return {
        "team": plan.team,
        "profile": plan.profile.slug,
        "gpu_type": plan.gpu_type_key,
        "gpu_count": plan.gpu_count,
        "price_per_hour": str(plan.price_per_hour),
        "currency": plan.currency,
        "catalog_version": plan.catalog_version,
    }
