"""Which GPUs a server holds, from the variables its spawner set: GPUHUB_SIMULATED_DEVICES (the
simulated GPUs of `gpuhub up --simulate-gpus`, which the fake NVML reports), else
CUDA_VISIBLE_DEVICES (what CUDA sees), else NVIDIA_VISIBLE_DEVICES (what the NVIDIA container
runtime mounted). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..wire import ENV_SIMULATED_DEVICES

VARIABLES = (ENV_SIMULATED_DEVICES, "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Visible:
    """The server's GPUs: NVML indices or UUIDs (`GPU-...`, `MIG-...`), in the given order;
    `every` when the variable says `all` (or is absent on a machine that shows all GPUs)."""

    selectors: tuple[str, ...] = ()
    every: bool = False
    source: str | None = None
    """The variable read; None when neither is set."""


def visible_gpus(env: Mapping[str, str]) -> Visible:
    """The first variable set wins (in VARIABLES' order; an empty GPUHUB_SIMULATED_DEVICES is
    skipped). `none`, `void` or empty: no GPU. Unset: none either (a server the platform gave
    no GPU has nothing to sample)."""
    for name in VARIABLES:
        if name not in env or (name == ENV_SIMULATED_DEVICES and not env[name].strip()):
            continue
        value = env[name].strip()
        if value.lower() in ("", "none", "void", "-1"):
            return Visible(source=name)
        if value.lower() == "all":
            return Visible(every=True, source=name)
        parts = tuple(p.strip() for p in value.split(",") if p.strip())
        return Visible(selectors=parts, source=name)
    return Visible()
