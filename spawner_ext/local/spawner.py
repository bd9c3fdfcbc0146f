"""GPULocalSpawner: one machine, local processes, each server pinned to specific GPUs.

Devices come from NVML (or `simulated_gpus`), are claimed from one hub-wide Allocator when a
server starts, handed to the server as CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES, kept in
spawner state (so a hub restart keeps them), and released when the server stops.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Unicode

from ..catalog import Catalog
from ..hub.metering import Observer
from ..ledger.models import EndReason
from ..policy.request import SpawnRefused
from ..spawners.mixin import GPUSpawnerMixin, refusal
from .allocator import Allocator, NoFreeGPUs, RestoreError, to_state, visible_devices_env
from .inventory import (
    Device,
    Discovery,
    devices_by_type,
    discover,
    parse_simulation,
    unmatched,
    unmatched_message,
)
from .observer import LocalObserver

STATE_DEVICES = "gpuhub_devices"

_discoveries: dict[str, Discovery] = {}
_allocator: Allocator | None = None
_logged: set[str] = set()


def machine_devices(catalog: Catalog, simulated: str) -> Discovery:
    """This machine's devices: the simulated ones of `simulated`, or NVML's (looked up once)."""
    key = simulated or "nvml"
    if key not in _discoveries:
        _discoveries[key] = (
            Discovery(parse_simulation(simulated, catalog)) if simulated else discover()
        )
    return _discoveries[key]


def shared_allocator(catalog: Catalog, devices: tuple[Device, ...]) -> Allocator:
    """The hub's one Allocator, its device-to-type mapping refreshed from the catalog in force."""
    global _allocator
    by_type = devices_by_type(devices, catalog)
    if _allocator is None:
        _allocator = Allocator(by_type)
    else:
        _allocator.reconfigure(by_type)
    return _allocator


class GPULocalSpawner(GPUSpawnerMixin, LocalProcessSpawner):  # type: ignore[misc]
    """Runs each server as a local process holding the GPUs of its catalog profile."""

    server_user = Unicode(
        "",
        config=True,
        help="Whose account servers run under. '' (default): the hub process's own user, each "
        "JupyterHub user getting a directory under `user_root` (jupyterhub-singleuser is passed "
        "--allow-root when that user is root). 'system': each JupyterHub user's own unix account, "
        "as LocalProcessSpawner does (the accounts must exist).",
    )
    user_root = Unicode(
        "",
        config=True,
        help="With server_user '', the directory holding one working directory per user. "
        "Default: ~/gpuhub-users of the hub process's user.",
    )

    devices: tuple[Device, ...] = ()
    """The devices this server holds now."""

    # --- devices ---------------------------------------------------------------------------

    @property
    def server_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    def _allocator(self) -> Allocator:
        catalog = self.catalog_version().catalog
        found = machine_devices(catalog, self.simulated_gpus)
        notes = [found.reason] if found.reason and not found.devices else []
        notes += [unmatched_message(device) for device in unmatched(found.devices, catalog)]
        for note in notes:  # once each: this runs on every form render and spawn
            if note not in _logged:
                _logged.add(note)
                self.log.warning("gpuhub local mode: %s", note)
        return shared_allocator(catalog, found.devices)

    def machine_free_gpus(self) -> dict[str, int]:
        allocator = self._allocator()
        catalog = self.catalog_version().catalog
        return {gpu_type: allocator.free(gpu_type) for gpu_type in catalog.gpu_types}

    def _claim(self) -> None:
        plan = self.plan
        if plan is None or not plan.gpu_type_key:
            self.devices = ()
            return
        try:
            self.devices = self._allocator().claim(
                self.server_key, plan.gpu_type_key, plan.gpu_count
            )
        except NoFreeGPUs as exc:
            raise refusal(SpawnRefused(str(exc), reason="no-free-gpu")) from None

    def _release(self) -> None:
        if _allocator is not None:
            _allocator.release(self.server_key)
        self.devices = ()

    # --- Spawner API ------------------------------------------------------------------------

    async def start(self) -> Any:
        self._release()  # a previous run of this server that never reported its stop
        await self.plan_spawn()
        self.start_background_work()
        try:
            self._claim()
            url = await super().start()
        except BaseException:
            self._release()
            self.metering_ended(EndReason.FAILED)
            raise
        self.metering_started(f"local:{self.pid}")
        return url

    def release_resources(self) -> None:
        self._release()

    def observer(self) -> Observer:
        return LocalObserver(self.db)

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()
        env.update(visible_devices_env(self.devices))
        if self.plan is not None:
            env.update(
                {
                    "GPUHUB_TEAM": self.plan.team or "",
                    "GPUHUB_PROFILE": self.plan.profile.slug,
                    "GPUHUB_GPU_TYPE": self.plan.gpu_type_key or "",
                    "GPUHUB_GPU_COUNT": str(self.plan.gpu_count),
                }
            )
        return env

    def get_args(self) -> list[str]:
        args: list[str] = super().get_args()
        if not self.server_user and os.geteuid() == 0 and "--allow-root" not in args:
            args.append("--allow-root")
        return args

    # --- whose account -----------------------------------------------------------------------

    def _home(self) -> Path:
        root = Path(self.user_root or Path.home() / "gpuhub-users")
        return root / str(self.user.name)

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        if self.server_user == "system":
            preexec: Callable[[], None] = super().make_preexec_fn(name)
            return preexec
        home = self._home()
        home.mkdir(parents=True, exist_ok=True)

        def enter_home() -> None:
            os.chdir(home)

        return enter_home

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.server_user == "system":
            result: dict[str, str] = super().user_env(env)
            return result
        env["USER"] = self.user.name
        env["HOME"] = str(self._home())
        env["SHELL"] = "/bin/bash"
        return env

    # --- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.devices:
            state[STATE_DEVICES] = to_state(self.devices)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        uuids = state.get(STATE_DEVICES) or []
        if not uuids:
            return
        try:
            self.devices = self._allocator().restore(self.server_key, uuids)
        except RestoreError as exc:
            self.log.error("gpuhub: cannot restore the GPUs of %s: %s", self._log_name, exc)

    def clear_state(self) -> None:
        super().clear_state()
        self._release()
