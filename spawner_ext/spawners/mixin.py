"""What GPUKubeSpawner and GPULocalSpawner share: the catalog in force, the options form with its
price and quota preview, validation of every spawn request, and the plan kept in spawner state.

Subclasses call `await self.plan_spawn()` before creating anything and build from `self.plan`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from ..catalog.store import CatalogVersion
from ..clock import utcnow
from ..hub.catalogs import shared_store
from ..hub.usage import STATE_KEY, RunningServersUsage, UsageSource
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
        return error
    return web.HTTPError(400, exc.message.replace("%", "%%"))


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
    simulated_gpus = Unicode(
        "",
        config=True,
        help="Set by `gpuhub up --simulate-gpus`: shown on the form so nobody mistakes "
        "simulated GPUs for real ones.",
    )

    plan: SpawnPlan | None = None
    """The plan of the current (or last) spawn; None before the first one."""

    @default("options_form")
    def _options_form_default(self) -> Any:
        return _render_options_form

    @default("options_from_form")
    def _options_from_form_default(self) -> Any:
        return self._user_options_from_form

    # --- catalog and identity -------------------------------------------------------------

    def catalog_version(self) -> CatalogVersion:
        if not self.catalog_path:
            raise web.HTTPError(
                500, "gpuhub: set c.GPUSpawnerMixin.catalog_path to the catalog YAML file"
            )
        return shared_store(self.catalog_path, self.log).current

    def identity(self) -> Identity:
        groups = frozenset(group.name for group in getattr(self.user, "groups", []) or [])
        return Identity(self.user.name, groups, bool(getattr(self.user, "admin", False)))

    def _usage(self) -> UsageSource:
        source: UsageSource = self.usage_source or RunningServersUsage(self.db)
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
            previous=self.user_options or {},
            simulated_gpus=self.simulated_gpus or None,
            catalog_version=version.version,
        )
        return render_form(view)

    def _user_options_from_form(self, formdata: Mapping[str, list[Any]]) -> dict[str, str]:
        options = user_options_from_form(formdata)
        self.resolve(options)  # refuse now, so the form comes back with the reason
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
        """Validate this spawn's user_options and keep the resulting plan. Call before creating
        anything. Subclasses extend this with admission (quotas) once metering is configured."""
        self.plan = self.resolve(self.user_options)
        return self.plan

    # --- state -----------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        summary = plan_state(self.plan) if self.plan is not None else self.restored_plan
        if summary:
            state[STATE_KEY] = summary
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.restored_plan = copy.deepcopy(state.get(STATE_KEY))

    def clear_state(self) -> None:
        super().clear_state()
        self.plan = None
        self.restored_plan = None

    restored_plan: dict[str, Any] | None = None
    """The plan summary loaded from state after a hub restart (the plan itself is not kept)."""


async def _render_options_form(spawner: GPUSpawnerMixin) -> str:
    return await spawner.render_options_form()


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
