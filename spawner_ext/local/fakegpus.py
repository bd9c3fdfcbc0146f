"""The fake NVML's picture of simulated GPUs (`--simulate-gpus`): every simulated device as a
GPU, or as a MIG device of a simulated parent, idle. Pure; the local spawner writes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..catalog import Catalog
from ..fakenvml import FakeGPU, FakeMIG, FakeNVML
from .inventory import MIB, Device


@dataclass(frozen=True)
class FakeNVMLFiles:
    """The fake NVML a hub's simulated servers load: its library's directory, its config."""

    library_dir: Path
    config: Path


def fake_nvml_for(devices: Sequence[Device], catalog: Catalog) -> FakeNVML:
    """Full GPUs in index order; the MIG devices of one parent index under one parent GPU."""
    gpus: list[FakeGPU] = []
    migs: dict[int, list[FakeMIG]] = {}
    parents: dict[int, str] = {}
    for device in devices:
        gpu_type = catalog.gpu_types.get(device.name)
        name = gpu_type.display_name if gpu_type else device.name
        memory = device.memory_mib * MIB
        if device.is_mig:
            migs.setdefault(device.index, []).append(FakeMIG(device.uuid, name, memory))
            parents[device.index] = device.parent_name or device.name
        else:
            gpus.append(FakeGPU(device.uuid, name, memory))
    for index, children in sorted(migs.items()):
        total = sum(m.memory_total for m in children)
        uuid = f"GPU-sim-parent-{index}"
        gpus.append(FakeGPU(uuid, parents[index], total, migs=tuple(children)))
    return FakeNVML(
        gpus=tuple(gpus),
        notes=("simulated GPUs of gpuhub up --simulate-gpus: edit utilization= to try culling",),
    )
