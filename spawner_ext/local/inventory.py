"""The GPUs of this machine in local mode: NVML discovery, `--simulate-gpus` specs, and their
mapping to catalog GPU types.

Only `discover`/`nvml_inventory` do I/O, and only through the NVML object they are given (the
`pynvml` module unless a test passes a fake with the same function names). Everything else is pure.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import pynvml

from ..catalog.schema import Catalog, GPUType

MIB = 1024 * 1024
MAX_SIMULATED_PER_TYPE = 64

# --- devices -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One allocatable GPU: a full GPU, or a MIG device (a slice of a GPU in MIG mode)."""

    index: int
    """NVML index of the physical GPU (for a MIG device, its parent's index)."""
    uuid: str
    """`GPU-...` for a full GPU, `MIG-...` for a MIG device (`GPU-sim-`/`MIG-sim-` if simulated)."""
    name: str
    """NVML name ('NVIDIA H100 80GB HBM3'); for a MIG device its profile ('1g.10gb'); for a
    simulated device the key of its catalog GPU type ('h100-80gb')."""
    memory_mib: int
    mig_index: int | None
    """MIG device index within the parent GPU; None for a full GPU."""
    simulated: bool
    parent_name: str | None = None
    """For a MIG device, the NVML name of its parent GPU ('NVIDIA A100-SXM4-80GB'); for a
    simulated MIG device its type's `mig_parent`, or the type's key when it names none. None for
    a full GPU."""

    @property
    def is_mig(self) -> bool:
        """True for a MIG device."""
        return self.mig_index is not None

    @property
    def label(self) -> str:
        """How logs and pages name the device: 'GPU 2' or 'GPU 0 MIG 3'."""
        where = f"GPU {self.index}"
        if self.mig_index is not None:
            where += f" MIG {self.mig_index}"
        return f"{where} (simulated)" if self.simulated else where


def device_order(device: Device) -> tuple[int, int, str]:
    """Sort key: by GPU index, a GPU's MIG devices by MIG index, then by uuid."""
    return (device.index, -1 if device.mig_index is None else device.mig_index, device.uuid)


# --- NVML discovery ----------------------------------------------------------------------------


class NVML(Protocol):
    """The part of `pynvml` that discovery uses. Tests pass a fake with the same names; the fake
    raises `pynvml.NVMLError` subclasses as the real library does."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMigMode(self, handle: Any) -> Sequence[int]: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any: ...
    def nvmlDeviceGetAttributes(self, handle: Any) -> Any: ...


@dataclass(frozen=True)
class Discovery:
    """What NVML found: the allocatable devices, why there are none (for the UI), and problems
    with single GPUs (for the hub log)."""

    devices: tuple[Device, ...]
    reason: str | None = None
    """Why no GPU was found at all, in words for a person; None when devices were found."""
    problems: tuple[str, ...] = ()


_NO_NVML = (
    "no NVIDIA driver found: the NVML library (libnvidia-ml.so.1) is not installed. Install the "
    "NVIDIA driver, or start the hub with --simulate-gpus to try GPU profiles without GPUs."
)
_NOT_LOADED = (
    "the NVIDIA driver is installed but not loaded; check that `nvidia-smi` works (a reboot after "
    "a driver install, or `modprobe nvidia`), or start the hub with --simulate-gpus."
)
_NO_PERMISSION = (
    "NVML refused access to the GPUs (insufficient permissions); run the hub as a user that may "
    "open /dev/nvidia*."
)
_NO_GPUS = "the NVIDIA driver is loaded but reports no GPUs; check `nvidia-smi -L`."
_NOT_ALLOCATABLE = "none of this machine's GPUs can be allocated; the hub log says why."

_MIG_PROFILE = re.compile(r"(?:\d+c\.)?\d+g\.\d+gb(?:\+[a-z0-9]+)*", re.IGNORECASE)


def _why_unavailable(error: pynvml.NVMLError) -> str:
    if isinstance(error, pynvml.NVMLError_LibraryNotFound):
        return _NO_NVML
    if isinstance(error, pynvml.NVMLError_DriverNotLoaded):
        return _NOT_LOADED
    if isinstance(error, pynvml.NVMLError_NoPermission):
        return _NO_PERMISSION
    return f"NVML could not start ({error}); check `nvidia-smi`, or start with --simulate-gpus."


def mig_profile_name(device_name: str, attributes: Any | None = None) -> str | None:
    """The MIG profile of a MIG device ('1g.10gb', '1c.3g.40gb', '1g.10gb+me').

    First from the device's NVML name, which drivers spell '<GPU name> MIG 1g.10gb'; failing that
    from its NVML attributes: GPU-instance slices and memory rounded up to whole GiB, as NVIDIA
    names its profiles (a 9,856 MiB slice is '1g.10gb'), with a 'Nc.' prefix when the compute
    instance has fewer slices than the GPU instance. None when neither gives a name.
    """
    found = _MIG_PROFILE.search(device_name)
    if found:
        return found.group(0).lower()
    if attributes is None:
        return None
    slices = int(attributes.gpuInstanceSliceCount)
    compute = int(attributes.computeInstanceSliceCount)
    memory_mb = int(attributes.memorySizeMB)
    if slices < 1 or memory_mb < 1:
        return None
    gigabytes = math.ceil(memory_mb / 1024)
    prefix = f"{compute}c." if 0 < compute < slices else ""
    return f"{prefix}{slices}g.{gigabytes}gb"


def _mig_devices(
    nvml: NVML, parent: Any, index: int, name: str
) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    devices: list[Device] = []
    problems: list[str] = []
    for mig_index in range(nvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
        try:
            handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, mig_index)
        except pynvml.NVMLError_NotFound:
            continue  # an empty slot: no MIG device was created there
        mig_name = nvml.nvmlDeviceGetName(handle)
        attributes = None if _MIG_PROFILE.search(mig_name) else nvml.nvmlDeviceGetAttributes(handle)
        profile = mig_profile_name(mig_name, attributes)
        if profile is None:
            problems.append(
                f"GPU {index} MIG {mig_index} '{mig_name}': cannot tell its MIG profile; skipped"
            )
            continue
        devices.append(
            Device(
                index=index,
                uuid=nvml.nvmlDeviceGetUUID(handle),
                name=profile,
                memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
                mig_index=mig_index,
                simulated=False,
                parent_name=name,
            )
        )
    if not devices:
        problems.append(
            f"GPU {index} '{name}' is in MIG mode but has no MIG devices, so it offers nothing to "
            f"allocate; create some (nvidia-smi mig -i {index} -cgi <profiles> -C) or disable "
            f"MIG mode (nvidia-smi -i {index} -mig 0)"
        )
    return tuple(devices), tuple(problems)


def _gpu(nvml: NVML, index: int) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    try:
        current_mig_mode = nvml.nvmlDeviceGetMigMode(handle)[0]
    except pynvml.NVMLError_NotSupported:
        current_mig_mode = pynvml.NVML_DEVICE_MIG_DISABLE
    if current_mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
        return _mig_devices(nvml, handle, index, name)
    device = Device(
        index=index,
        uuid=nvml.nvmlDeviceGetUUID(handle),
        name=name,
        memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
        mig_index=None,
        simulated=False,
    )
    return (device,), ()


def discover(nvml: NVML = pynvml) -> Discovery:
    """Ask NVML for this machine's allocatable GPUs: every full GPU, and for a GPU in MIG mode its
    MIG devices instead of the GPU itself. A GPU NVML fails on is skipped and named in `problems`.
    No driver or no NVML library is not an error: an empty inventory with a `reason`."""
    try:
        nvml.nvmlInit()
    except pynvml.NVMLError as error:
        return Discovery((), reason=_why_unavailable(error))
    try:
        devices: list[Device] = []
        problems: list[str] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                found, trouble = _gpu(nvml, index)
            except pynvml.NVMLError as error:
                problems.append(f"GPU {index}: NVML failed ({error}); skipped, see nvidia-smi")
                continue
            devices.extend(found)
            problems.extend(trouble)
    except pynvml.NVMLError as error:
        return Discovery((), reason=_why_unavailable(error))
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            nvml.nvmlShutdown()
    if not devices:
        reason = _NOT_ALLOCATABLE if problems else _NO_GPUS
        return Discovery((), reason=reason, problems=tuple(problems))
    return Discovery(tuple(sorted(devices, key=device_order)), problems=tuple(problems))


def nvml_inventory(nvml: NVML = pynvml) -> tuple[Device, ...]:
    """The allocatable devices NVML finds; () without a driver (`discover` says why)."""
    return discover(nvml).devices


# --- simulation --------------------------------------------------------------------------------

_SPEC_ITEM = re.compile(r"^\s*(\d+)\s*[xX]\s*(\S+)\s*$")
_EXAMPLE = "expected COUNTxTYPE[,COUNTxTYPE...] such as 4xh100-80gb or 4xh100-80gb,2xl4"
_GIB = re.compile(r"(\d+)\s*gb", re.IGNORECASE)


def _simulated_memory_mib(key: str, gpu_type: GPUType) -> int:
    """A plausible memory size from the type's names ('80gb' -> 81920 MiB); 0 if none says."""
    for text in (key, *gpu_type.device_names, gpu_type.display_name, gpu_type.resource):
        found = _GIB.findall(text)
        if found:
            return int(found[-1]) * 1024
    return 0


def parse_simulation(spec: str, catalog: Catalog) -> tuple[Device, ...]:
    """Simulated devices from a `--simulate-gpus` spec such as '4xh100-80gb,2xl4'.

    TYPE is a key of the catalog's `gpu_types`, matched case-insensitively (keys only, not display
    names: keys are the one name profiles and quotas use). Devices get sequential GPU indices in
    spec order; the COUNT devices of a MIG type hang off one simulated parent index. A device's
    uuid is 'GPU-sim-<n>-<type>' or 'MIG-sim-<n>-<type>' with n counting within its type, so the
    same type keeps its uuids when the spec gains other types, and held devices can be restored
    after a restart. Raises ValueError with a message for the person who typed the spec.
    """
    if not spec.strip():
        raise ValueError(f"--simulate-gpus is empty; {_EXAMPLE}")
    known = ", ".join(sorted(catalog.gpu_types)) or "none (the catalog defines no gpu_types)"
    devices: list[Device] = []
    seen: set[str] = set()
    index = 0
    for item in spec.split(","):
        match = _SPEC_ITEM.match(item)
        if match is None:
            raise ValueError(
                f"cannot read {item.strip()!r} in --simulate-gpus {spec!r}; {_EXAMPLE}"
            )
        count, key = int(match.group(1)), match.group(2).lower()
        if key not in catalog.gpu_types:
            raise ValueError(
                f"unknown GPU type {key!r} in --simulate-gpus {spec!r}; catalog types: {known}"
            )
        if not 1 <= count <= MAX_SIMULATED_PER_TYPE:
            raise ValueError(
                f"count must be 1..{MAX_SIMULATED_PER_TYPE} in {item.strip()!r} of "
                f"--simulate-gpus {spec!r}"
            )
        if key in seen:
            raise ValueError(
                f"GPU type {key!r} appears twice in --simulate-gpus {spec!r}; give it once with "
                "the total count"
            )
        seen.add(key)
        gpu_type = catalog.gpu_types[key]
        memory = _simulated_memory_mib(key, gpu_type)
        for n in range(count):
            devices.append(
                Device(
                    index=index if gpu_type.is_mig else index + n,
                    uuid=f"{'MIG' if gpu_type.is_mig else 'GPU'}-sim-{n:08x}-{key}",
                    name=key,
                    memory_mib=memory,
                    mig_index=n if gpu_type.is_mig else None,
                    simulated=True,
                    parent_name=(gpu_type.mig_parent or key) if gpu_type.is_mig else None,
                )
            )
        index += 1 if gpu_type.is_mig else count
    return tuple(devices)


# --- mapping to catalog GPU types --------------------------------------------------------------


def _names(gpu_type: GPUType) -> frozenset[str]:
    names = set(gpu_type.device_names)
    prefix = "nvidia.com/mig-"
    if gpu_type.is_mig and not names:
        names.add(gpu_type.resource.removeprefix(prefix))
    return frozenset(name.casefold() for name in names)


class _MigMatch(NamedTuple):
    """The MIG types of a MIG device's profile, sorted by how they take its parent GPU."""

    by_parent: tuple[str, ...]
    """Types whose `mig_parent` is part of the parent GPU's name, in catalog order."""
    any_parent: tuple[str, ...]
    """Types without `mig_parent`, in catalog order."""
    other_parent: tuple[tuple[str, str], ...]
    """Types whose `mig_parent` names another GPU, as (key, mig_parent)."""


def _mig_match(device: Device, catalog: Catalog) -> _MigMatch:
    profile = device.name.casefold()
    parent = (device.parent_name or "").casefold()
    by_parent: list[str] = []
    any_parent: list[str] = []
    other_parent: list[tuple[str, str]] = []
    for key, gpu_type in catalog.gpu_types.items():
        if not gpu_type.is_mig or profile not in _names(gpu_type):
            continue
        if gpu_type.mig_parent is None:
            any_parent.append(key)
        elif gpu_type.mig_parent.casefold() in parent:
            by_parent.append(key)
        else:
            other_parent.append((key, gpu_type.mig_parent))
    return _MigMatch(tuple(by_parent), tuple(any_parent), tuple(other_parent))


def gpu_type_of(device: Device, catalog: Catalog) -> str | None:
    """The key of the catalog GPU type a device is, or None.

    A simulated device is the type it was simulated as (its name is the key). A full GPU matches a
    non-MIG type whose `device_names` holds its NVML name, compared case-insensitively but otherwise
    exactly ('NVIDIA H100 80GB HBM3' does not match 'NVIDIA H100'); if two types list the same
    name, the first in the catalog wins.

    A MIG device matches a MIG type by its profile and its parent GPU. The profile ('1g.10gb') must
    be in the type's `device_names`, or, for a type without `device_names`, be the profile of its
    resource (`nvidia.com/mig-1g.10gb`). Of the types with the profile:

    | the type's `mig_parent`                  | the device is that type                      |
    |------------------------------------------|----------------------------------------------|
    | part of the parent GPU's NVML name       | yes; the first such type wins                |
    | absent, and it is the only such type     | yes, when no type above matched              |
    | absent, on two or more types             | no: ambiguous (`unmatched_message` says so)  |
    | another GPU's name                       | no                                           |
    """
    if device.simulated:
        return device.name if device.name in catalog.gpu_types else None
    if device.is_mig:
        match = _mig_match(device, catalog)
        if match.by_parent:
            return match.by_parent[0]
        return match.any_parent[0] if len(match.any_parent) == 1 else None
    name = device.name.casefold()
    for key, gpu_type in catalog.gpu_types.items():
        if not gpu_type.is_mig and name in _names(gpu_type):
            return key
    return None


def devices_by_type(
    devices: Iterable[Device], catalog: Catalog
) -> Mapping[str, tuple[Device, ...]]:
    """Every catalog GPU type (in catalog order, including types with no device) and its devices,
    lowest index first. Devices of no type are left out; `unmatched` lists them."""
    found: dict[str, list[Device]] = {key: [] for key in catalog.gpu_types}
    for device in devices:
        key = gpu_type_of(device, catalog)
        if key is not None:
            found[key].append(device)
    return MappingProxyType(
        {key: tuple(sorted(group, key=device_order)) for key, group in found.items()}
    )


def unmatched(devices: Iterable[Device], catalog: Catalog) -> tuple[Device, ...]:
    """The devices that match no catalog GPU type (so no profile can use them)."""
    return tuple(d for d in devices if gpu_type_of(d, catalog) is None)


def _keys(keys: Sequence[str]) -> str:
    return ", ".join(keys[:-1]) + f" and {keys[-1]}" if len(keys) > 1 else keys[0]


def unmatched_message(device: Device, catalog: Catalog | None = None) -> str:
    """A log line for a device of no GPU type, saying what to change in the catalog. With the
    catalog it can say why a MIG device matched none of the types that have its profile (two types
    without `mig_parent`, or parents that name other GPUs)."""
    if device.simulated:
        return (
            f"{device.label} was simulated as {device.name!r}, which is no longer a gpu_types "
            "entry; restart the hub with a --simulate-gpus spec that names catalog types"
        )
    if not device.is_mig:
        return (
            f"{device.label} {device.name!r} matches no gpu_types entry; add {device.name!r} to "
            "the device_names of its type"
        )
    profile = device.name
    of_gpu = f" of {device.parent_name!r}" if device.parent_name else ""
    what = f"{device.label} (MIG profile {profile!r}{of_gpu})"
    match = _mig_match(device, catalog) if catalog is not None else _MigMatch((), (), ())
    if len(match.any_parent) > 1:
        return (
            f"{what} is ambiguous: gpu_types {_keys(match.any_parent)} share that profile and "
            "none of them sets mig_parent, so the device is left unused; set mig_parent on each "
            "to part of the NVML name of the GPU its slices are cut from, such as 'A100' or "
            "'H100' (`nvidia-smi -L` prints the names)"
        )
    if match.other_parent:
        parents = ", ".join(f"{key} has mig_parent {part!r}" for key, part in match.other_parent)
        return (
            f"{what} matches no MIG gpu_types entry: {parents}, not part of its GPU's name "
            f"{device.parent_name or ''!r}; add a type with resource nvidia.com/mig-{profile} "
            "and a mig_parent that is part of that name, or remove mig_parent from a type to "
            "take slices of any GPU"
        )
    hint = (
        "; if other GPU models have this profile too, also set its mig_parent to part of the "
        "GPU's name"
        if device.parent_name
        else ""
    )
    return (
        f"{what} matches no MIG gpu_types entry; add {profile!r} to the device_names of a type "
        f"with resource nvidia.com/mig-{profile}{hint}"
    )
