"""This machine's GPUs as one hub sees them: what NVML (or `--simulate-gpus`) found, the Allocator
of which server holds which device, and the warnings about devices no catalog type takes (logged
once each). One LocalMachine per hub, kept in its HubContext.

A hub started again rebuilds the Allocator from every live server process before it hands out a
GPU: each local server carries its devices in its environment (wire.server_env), so even a server
whose state JupyterHub never committed (the hub was killed right after starting it) keeps its GPUs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..catalog import Catalog
from ..wire import ServerEnv
from .allocator import Allocator, RestoreError
from .inventory import (
    Discovery,
    devices_by_type,
    discover,
    parse_simulation,
    unmatched,
    unmatched_message,
)

Processes = Callable[[], Iterable[tuple[int, ServerEnv]]]
"""The live server processes of this hub (`processes.live_servers` of its API URL)."""


class LocalMachine:
    def __init__(
        self,
        catalog: Catalog,
        simulated: str,
        log: logging.Logger,
        *,
        processes: Processes,
    ) -> None:
        self.simulated = simulated
        self.log = log
        self.discovery = (
            Discovery(parse_simulation(simulated, catalog)) if simulated else discover()
        )
        self._logged: set[str] = set()
        self.recorded_capacity: dict[str, int] | None = None
        """The GPUs per type last written to the ledger (local/spawner.py)."""
        self._allocator = Allocator(devices_by_type(self.discovery.devices, catalog))
        self.rebuilt = self._rebuild(processes())

    def allocator(self, catalog: Catalog) -> Allocator:
        """The Allocator, its device-to-type mapping refreshed from the catalog in force."""
        found = self.discovery
        notes = [found.reason] if found.reason and not found.devices else []
        notes += [
            unmatched_message(device, catalog) for device in unmatched(found.devices, catalog)
        ]
        for note in notes:  # once each: this runs on every form render and spawn
            if note not in self._logged:
                self._logged.add(note)
                self.log.warning("gpuhub local mode: %s", note)
        self._allocator.reconfigure(devices_by_type(found.devices, catalog))
        return self._allocator

    def _rebuild(self, servers: Iterable[tuple[int, ServerEnv]]) -> dict[str, tuple[str, ...]]:
        """Record the devices of every live server process; server key -> uuids restored."""
        restored: dict[str, tuple[str, ...]] = {}
        for pid, server in servers:
            if not server.devices:
                continue
            try:
                self._allocator.restore(server.server_key, server.devices)
            except RestoreError as exc:
                self.log.error("gpuhub local mode: live server (pid %s): %s", pid, exc)
                continue
            restored[server.server_key] = server.devices
            self.log.info(
                "gpuhub local mode: %s (pid %s) still holds %s",
                server.server_key,
                pid,
                ", ".join(server.devices),
            )
        return restored
