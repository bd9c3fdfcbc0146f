"""GPULocalSpawner: one machine, local processes, each server pinned to specific GPUs.

Devices come from NVML (or `simulated_gpus`), are claimed from one hub-wide Allocator when a
server starts, handed to the server as CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES, kept in
spawner state and in the server's environment (so a hub restart keeps them, see machine.py), and
released when the server stops.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Unicode

from ..end_reason import EndReason
from ..fakenvml import BuildError, build, environment, write_config
from ..hub.ledger_lane import LEDGER_DOWN
from ..notebook import NOTEBOOK_CONFIG, NOTEBOOK_DATA
from ..policy.request import SpawnRefused
from ..spawners.mixin import GPUSpawnerMixin, refusal
from ..wire import ServerState, read_state, server_env
from .allocator import Allocator, NoFreeGPUs, RestoreError, visible_devices_env
from .fakegpus import FakeNVMLFiles, fake_nvml_for
from .inventory import Device
from .machine import LocalMachine
from .processes import live_servers, pid_alive, process_start_time


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

    fake_nvml_config = Unicode(
        "",
        config=True,
        help="With simulated_gpus: the file the fake NVML (spawner_ext/fakenvml) reads, written "
        "with the simulated GPUs at first use; servers load the fake libnvidia-ml.so.1 with it, "
        "so their GPU samples come from it. Edit a GPU's utilization= there to see GPU-aware "
        "culling work. Empty: servers see no NVML.",
    )

    devices: tuple[Device, ...] = ()
    """The devices this server holds now."""

    # --- devices ---------------------------------------------------------------------------

    @property
    def server_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    def machine(self) -> LocalMachine:
        """This hub's one LocalMachine (made, and rebuilt from live servers, on first use)."""
        catalog = self.catalog_version().catalog
        api_url = self.hub.api_url if self.hub is not None else None

        def make() -> LocalMachine:
            servers = lambda: live_servers(api_url)  # noqa: E731
            return LocalMachine(catalog, self.simulated_gpus, self.log, processes=servers)

        return self.context.part(LocalMachine, make)

    def _allocator(self) -> Allocator:
        machine = self.machine()
        catalog = self.catalog_version().catalog
        allocator = machine.allocator(catalog)
        self._record_capacity(machine, allocator, catalog)
        return allocator

    def _record_capacity(self, machine: LocalMachine, allocator: Allocator, catalog: Any) -> None:
        """Tell the ledger (and so the gpuhub service's wait-list) how many GPUs of each type
        this machine has, whenever that changes (first use, a catalog reload)."""
        totals = {gpu_type: allocator.total(gpu_type) for gpu_type in catalog.gpu_types}
        if not self.ledger_url or totals == machine.recorded_capacity:
            return
        machine.recorded_capacity = totals

        def record(ledger: Any) -> None:
            for gpu_type, total in totals.items():
                ledger.set_capacity(gpu_type, total)

        self.context.lane.write("this machine's GPUs", record)

    async def _held_for_others(self, gpu_type: str) -> int:
        """GPUs of a type held for other people in line (0 when the ledger does not answer:
        admission, which counts holds, has let this spawn through already)."""
        if not self.ledger_url:
            return 0
        try:
            holds = await self.context.lane.read("holds", lambda ledger: ledger.holds())
        except LEDGER_DOWN:
            return 0
        return sum(
            h.gpu_count
            for h in holds
            if h.gpu_type == gpu_type and (h.user, h.server_name) != (self.user.name, self.name)
        )

    def machine_free_gpus(self) -> dict[str, int]:
        allocator = self._allocator()
        catalog = self.catalog_version().catalog
        return {gpu_type: allocator.free(gpu_type) for gpu_type in catalog.gpu_types}

    def form_runtime(self) -> str:
        """Local processes: profile options that only set `kubespawner_override` keys (the
        image) do nothing here, and the form says so."""
        return "local"

    async def _claim(self) -> None:
        plan = self.plan
        if plan is None or not plan.gpu_type_key:
            self.devices = ()
            return
        reserved = await self._held_for_others(plan.gpu_type_key)
        try:
            self.devices = self._allocator().claim(
                self.server_key, plan.gpu_type_key, plan.gpu_count, reserved=reserved
            )
        except NoFreeGPUs as exc:
            raise refusal(SpawnRefused(str(exc), reason="no-free-gpu")) from None

    def _release(self) -> None:
        machine = self.context.peek(LocalMachine) if self.catalog_path else None
        if machine is not None:
            machine.allocator(self.catalog_version().catalog).release(self.server_key)
        self.devices = ()

    # --- Spawner API ------------------------------------------------------------------------

    async def start(self) -> Any:
        self._release()  # a previous run of this server that never reported its stop
        await self.plan_spawn()
        try:
            await self._claim()
            url = await super().start()
        except BaseException:
            self._release()
            await self.metering_ended(EndReason.FAILED)
            raise
        # Billed from the process's start: it holds its GPUs from then on, whatever JupyterHub
        # records (reconciliation of a server the hub never recorded bills from there too).
        await self.metering_started(f"local:{self.pid}", process_start_time(self.pid))
        return url

    def release_resources(self) -> None:
        self._release()

    async def wait_for_death(self, timeout: float = 10) -> bool:  # noqa: ASYNC109 - its API
        """Wait up to `timeout` seconds for the server to end, looking every `death_interval`.
        JupyterHub's own wait backs off to 5 s between looks, and a stop is billed until the
        hub sees the process gone: up to 5 s too much."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.poll() is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(self.death_interval)
        return True

    async def _signal(self, sig: int) -> bool:
        """LocalProcessSpawner's liveness check, with an exited server that nobody has reaped yet
        (its parent was a hub that died) counted as gone: it holds no GPU and is not billed."""
        if sig == 0 and self.proc is None and self.pid and not pid_alive(self.pid):
            return False
        alive: bool = await super()._signal(sig)
        return alive

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()
        env["JUPYTER_CONFIG_PATH"] = str(NOTEBOOK_CONFIG)  # enables the notebook extension
        env["JUPYTER_PATH"] = str(NOTEBOOK_DATA)  # where JupyterLab finds the warning
        if self.simulated_gpus and self.fake_nvml_config:
            env.update(self._fake_nvml_env(env))
        env.update(visible_devices_env(self.devices))
        summary = self.plan.summary if self.plan is not None else None
        uuids = tuple(d.uuid for d in self.devices)
        env.update(server_env(summary, self.server_key, self.usage_session, uuids))
        return env

    def _fake_nvml_env(self, env: dict[str, str]) -> dict[str, str]:
        """The fake NVML for this server: built once, its config written once per hub."""
        config = Path(self.fake_nvml_config)

        def make() -> FakeNVMLFiles:
            library = build()
            catalog = self.catalog_version().catalog
            write_config(config, fake_nvml_for(self.machine().discovery.devices, catalog))
            return FakeNVMLFiles(library, config)

        try:
            files = self.context.part(FakeNVMLFiles, make)
        except BuildError as exc:
            self.log.warning("gpuhub: simulated GPUs without a fake NVML: %s", exc)
            return {}
        return environment(files.library_dir, files.config, env)

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

    def server_state(self) -> ServerState:
        return replace(super().server_state(), devices=tuple(d.uuid for d in self.devices))

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        uuids = read_state(state).devices
        if not uuids:
            return
        try:
            self.devices = self._allocator().restore(self.server_key, uuids)
        except RestoreError as exc:
            self.log.error("gpuhub: cannot restore the GPUs of %s: %s", self._log_name, exc)

    def clear_state(self) -> None:
        super().clear_state()
        self._release()
