"""Which local GPUs each server holds: a pure choice of devices, the environment that makes them
visible to a server, and the hub-wide in-memory record of holdings. No I/O; the spawner persists
`to_state(...)` in its state and calls `Allocator.restore` after a hub restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from ..wire import ENV_SIMULATED_DEVICES
from .inventory import Device, device_order


class AllocationError(Exception):
    """A holding of local GPUs cannot be made; the message says why and what to do."""


class NoFreeGPUs(AllocationError):
    """Not enough devices of a GPU type are free for a claim."""


class RestoreError(AllocationError):
    """A holding saved before a hub restart does not fit the devices or holdings of now."""


# --- pure decisions ----------------------------------------------------------------------------


def choose(free: Sequence[Device], count: int) -> tuple[Device, ...] | None:
    """`count` of the free devices, lowest GPU index (then MIG index) first; None if there are
    fewer. Lowest-first keeps a server's GPUs together and the high indices free for big claims."""
    if count < 0:
        raise ValueError(f"a server cannot hold {count} GPUs; the count must be 0 or more")
    if count > len(free):
        return None
    return tuple(sorted(free, key=device_order)[:count])


def visible_devices_env(devices: Sequence[Device]) -> dict[str, str]:
    """The environment that shows a server exactly its devices and no others.

    `CUDA_VISIBLE_DEVICES` names full GPUs by NVML index, with `CUDA_DEVICE_ORDER=PCI_BUS_ID` so
    CUDA numbers them as NVML and nvidia-smi do (CUDA's default puts the fastest GPU first), and MIG
    devices by their `MIG-...` uuid. `NVIDIA_VISIBLE_DEVICES` lists uuids for the NVIDIA container
    runtime. No devices: `CUDA_VISIBLE_DEVICES=""` and `NVIDIA_VISIBLE_DEVICES=void`, so a CPU
    server sees no GPU. Simulated devices do not exist, so they hide every real GPU the same way
    and are named in `GPUHUB_SIMULATED_DEVICES` instead (the fake NVML reports those): simulation
    never hands out a real GPU.
    """
    real = [d for d in devices if not d.simulated]
    simulated = [d for d in devices if d.simulated]
    env: dict[str, str] = {}
    if real:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(d.uuid if d.is_mig else str(d.index) for d in real)
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(d.uuid for d in real)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    if simulated:
        env[ENV_SIMULATED_DEVICES] = ",".join(d.uuid for d in simulated)
    return env


def to_state(devices: Iterable[Device]) -> list[str]:
    """What the spawner saves in its state to restore a holding: the devices' uuids."""
    return [d.uuid for d in devices]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# --- the hub-wide record -----------------------------------------------------------------------


class Allocator:
    """The hub-wide record of which server holds which local devices.

    A server key is 'user/servername' ('ada/' for a default server, 'ada/train' for a named one).
    Every method is synchronous and awaits nothing, so under asyncio a claim runs to its end before
    any other coroutine runs: two spawns cannot take the same device. Keep it that way; a claim that
    awaited between choosing and recording would need a lock.

    The record lives in memory only. Before a hub restart the spawner has saved `to_state(...)` of
    its holding; after it, `restore` records the holding again before any new claim is made.
    """

    def __init__(self, by_type: Mapping[str, Sequence[Device]]) -> None:
        """`by_type` is `devices_by_type(...)`: each catalog GPU type and its devices."""
        self._by_type: dict[str, tuple[Device, ...]] = {}
        self._holdings: dict[str, tuple[Device, ...]] = {}
        self.reconfigure(by_type)

    def reconfigure(self, by_type: Mapping[str, Sequence[Device]]) -> None:
        """Take a new mapping of devices to types (after a catalog reload changed `device_names`).
        Holdings are kept: a held device stays held until its server releases it."""
        sorted_by_type = {
            key: tuple(sorted(group, key=device_order)) for key, group in by_type.items()
        }
        seen: dict[str, str] = {}
        for key, group in sorted_by_type.items():
            for device in group:
                if device.uuid in seen:
                    raise ValueError(
                        f"device {device.uuid} is listed under both {seen[device.uuid]!r} and "
                        f"{key!r}; a device is of one GPU type"
                    )
                seen[device.uuid] = key
        self._by_type = sorted_by_type

    # --- queries ---

    def total(self, gpu_type: str) -> int:
        """Devices of a type on this machine (0 for a type with none, or no such type)."""
        return len(self._by_type.get(gpu_type, ()))

    def free(self, gpu_type: str) -> int:
        """Devices of a type that no server holds."""
        return len(self._free(gpu_type))

    def holdings(self) -> Mapping[str, tuple[Device, ...]]:
        """A read-only copy of every server's devices."""
        return MappingProxyType(dict(self._holdings))

    def _held_by(self) -> dict[str, str]:
        return {d.uuid: server for server, held in self._holdings.items() for d in held}

    def _free(self, gpu_type: str) -> tuple[Device, ...]:
        held = self._held_by()
        return tuple(d for d in self._by_type.get(gpu_type, ()) if d.uuid not in held)

    # --- changes ---

    def claim(
        self, server: str, gpu_type: str, count: int, *, reserved: int = 0
    ) -> tuple[Device, ...]:
        """Record that `server` holds `count` free devices of `gpu_type` and return them, lowest
        index first. `reserved`: devices of the type held for other people in line (their
        turn came), which this claim must leave free. Raises NoFreeGPUs when too few are free,
        AllocationError when the server already holds devices (release them first)."""
        if count < 1:
            raise ValueError(f"{server}: a claim is for 1 GPU or more, not {count}")
        if server in self._holdings:
            held = ", ".join(d.label for d in self._holdings[server])
            raise AllocationError(
                f"{server} already holds {held}; the hub must release them before a new claim"
            )
        free = self._free(gpu_type)
        chosen = choose(free, count) if len(free) - max(reserved, 0) >= count else None
        if chosen is None:
            raise NoFreeGPUs(self._exhausted(server, gpu_type, count, reserved))
        self._holdings[server] = chosen
        return chosen

    def _exhausted(self, server: str, gpu_type: str, count: int, reserved: int = 0) -> str:
        wanted = f"{server} needs {_plural(count, gpu_type + ' GPU')}"
        total = self.total(gpu_type)
        if total == 0:
            return (
                f"{wanted}, but this machine has none. Choose another profile; an admin can list "
                f"the device's NVML name in gpu_types.{gpu_type}.device_names."
            )
        mine = set(self._by_type[gpu_type])
        holders = sorted(
            (server_, sum(d in mine for d in held))
            for server_, held in self._holdings.items()
            if any(d in mine for d in held)
        )
        held_by = ", ".join(f"{s} ({n})" for s, n in holders)
        free = self.free(gpu_type)
        if count > total:
            advice = f"Choose a profile with at most {total}."
        else:
            advice = "Try again when one of those servers stops, or choose another profile."
        held_for = f" ({reserved} of them held for people in line)" if reserved else ""
        return (
            f"{wanted}; this machine has {total}, {free} free{held_for}, held by "
            f"{held_by or 'no one'}. {advice}"
        )

    def release(self, server: str) -> None:
        """Forget the server's devices; nothing happens if it holds none."""
        self._holdings.pop(server, None)

    def restore(self, server: str, uuids: Sequence[str]) -> tuple[Device, ...]:
        """Record again a holding saved before a hub restart (the uuids from `to_state`). All or
        nothing: raises RestoreError, recording nothing, when a uuid is no device of this machine
        now or another server holds it. Restoring the same holding twice is harmless."""
        known = {d.uuid: d for group in self._by_type.values() for d in group}
        missing = [u for u in uuids if u not in known]
        if missing:
            raise RestoreError(
                f"{server} held {', '.join(missing)} before the hub restarted, but no GPU of a "
                "catalog type has that uuid now (a changed --simulate-gpus, MIG layout or "
                "device_names?). Stop the server so that it releases its GPUs, then start it again."
            )
        devices = tuple(sorted({known[u] for u in uuids}, key=device_order))
        held_by = self._held_by()
        taken = [(d, held_by[d.uuid]) for d in devices if held_by.get(d.uuid, server) != server]
        if taken:
            who = ", ".join(f"{d.label} {d.uuid} by {s}" for d, s in taken)
            raise RestoreError(
                f"{server} held devices before the hub restarted that another server holds now: "
                f"{who}. Two servers cannot share a GPU; stop one of them."
            )
        current = self._holdings.get(server)
        if current is not None and current != devices:
            raise RestoreError(
                f"{server} already holds {', '.join(d.uuid for d in current)}, not the "
                f"{', '.join(u for u in uuids)} it is being restored with; release it first"
            )
        if devices:
            self._holdings[server] = devices
        return devices
