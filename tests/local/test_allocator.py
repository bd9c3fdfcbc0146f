"""Local mode's GPU allocation: choosing devices, the environment that shows them to a server,
and the hub-wide record of holdings, including restore after a hub restart."""

from __future__ import annotations

import re

import pytest

from spawner_ext.local.allocator import (
    AllocationError,
    Allocator,
    NoFreeGPUs,
    RestoreError,
    choose,
    to_state,
    visible_devices_env,
)
from spawner_ext.local.inventory import Device


def gpu(index: int, *, simulated: bool = False) -> Device:
    return Device(index, f"GPU-{index}", "NVIDIA H100 80GB HBM3", 81559, None, simulated)


def mig(index: int, mig_index: int) -> Device:
    return Device(index, f"MIG-{index}-{mig_index}", "1g.10gb", 9856, mig_index, False)


H100 = tuple(gpu(i) for i in range(4))
SLICES = tuple(mig(4, j) for j in range(3))


def allocator() -> Allocator:
    return Allocator({"h100-80gb": H100, "a100-1g10gb": SLICES, "l4": ()})


# --- choose ------------------------------------------------------------------------------------

CHOOSE_CASES = [
    ((gpu(3), gpu(1), gpu(2)), 2, (gpu(1), gpu(2))),
    ((gpu(3), gpu(1)), 2, (gpu(1), gpu(3))),
    ((gpu(3), gpu(1)), 3, None),
    ((gpu(0),), 0, ()),
    ((), 1, None),
    ((mig(4, 2), mig(4, 0), mig(1, 5)), 2, (mig(1, 5), mig(4, 0))),
]


@pytest.mark.parametrize(("free", "count", "chosen"), CHOOSE_CASES)
def test_choose_lowest_indices_first(
    free: tuple[Device, ...], count: int, chosen: tuple[Device, ...] | None
) -> None:
    assert choose(free, count) == chosen


def test_choose_a_negative_count() -> None:
    with pytest.raises(ValueError, match="the count must be 0 or more"):
        choose(H100, -1)


# --- environment -------------------------------------------------------------------------------

ENV_CASES = {
    "no devices: a CPU server sees no GPU": (
        (),
        {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"},
    ),
    "one GPU": (
        (gpu(2),),
        {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": "2",
            "NVIDIA_VISIBLE_DEVICES": "GPU-2",
        },
    ),
    "several GPUs": (
        (gpu(0), gpu(1), gpu(3)),
        {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": "0,1,3",
            "NVIDIA_VISIBLE_DEVICES": "GPU-0,GPU-1,GPU-3",
        },
    ),
    "MIG devices by uuid": (
        (mig(4, 0), mig(4, 2)),
        {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": "MIG-4-0,MIG-4-2",
            "NVIDIA_VISIBLE_DEVICES": "MIG-4-0,MIG-4-2",
        },
    ),
    "simulated GPUs hide the real ones": (
        (gpu(0, simulated=True), gpu(1, simulated=True)),
        {
            "CUDA_VISIBLE_DEVICES": "",
            "NVIDIA_VISIBLE_DEVICES": "void",
            "GPUHUB_SIMULATED_DEVICES": "GPU-0,GPU-1",
        },
    ),
}


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_visible_devices_env(case: str) -> None:
    devices, env = ENV_CASES[case]
    assert visible_devices_env(devices) == env


def test_to_state_is_the_uuids() -> None:
    assert to_state((gpu(1), mig(4, 0))) == ["GPU-1", "MIG-4-0"]
    assert to_state(()) == []


# --- Allocator ---------------------------------------------------------------------------------


def test_claim_and_release() -> None:
    hub = allocator()
    assert (hub.total("h100-80gb"), hub.free("h100-80gb")) == (4, 4)
    assert hub.claim("ada/", "h100-80gb", 2) == (gpu(0), gpu(1))
    assert hub.claim("bob/train", "h100-80gb", 1) == (gpu(2),)
    assert hub.claim("cy/", "a100-1g10gb", 1) == (mig(4, 0),)
    assert (hub.total("h100-80gb"), hub.free("h100-80gb")) == (4, 1)
    assert hub.free("a100-1g10gb") == 2
    assert dict(hub.holdings()) == {
        "ada/": (gpu(0), gpu(1)),
        "bob/train": (gpu(2),),
        "cy/": (mig(4, 0),),
    }
    hub.release("ada/")
    hub.release("ada/")  # idempotent
    hub.release("nobody/")
    assert hub.free("h100-80gb") == 3
    assert hub.claim("dee/", "h100-80gb", 3) == (gpu(0), gpu(1), gpu(3))
    assert set(hub.holdings()) == {"bob/train", "cy/", "dee/"}


def test_holdings_is_a_copy() -> None:
    hub = allocator()
    before = hub.holdings()
    hub.claim("ada/", "h100-80gb", 1)
    assert dict(before) == {}


EXHAUSTION_CASES = {
    "too few free": (
        "h100-80gb",
        2,
        "eve/ needs 2 h100-80gb GPUs; this machine has 4, 1 free, held by ada/ (2), bob/x (1). "
        "Try again when one of those servers stops, or choose another profile.",
    ),
    "more than the machine has": (
        "h100-80gb",
        5,
        "eve/ needs 5 h100-80gb GPUs; this machine has 4, 1 free, held by ada/ (2), bob/x (1). "
        "Choose a profile with at most 4.",
    ),
    "a type with no devices": (
        "l4",
        1,
        "eve/ needs 1 l4 GPU, but this machine has none. Choose another profile; an admin can "
        "list the device's NVML name in gpu_types.l4.device_names.",
    ),
    "a type the allocator does not know": ("h200", 1, "eve/ needs 1 h200 GPU, but this machine"),
}


@pytest.mark.parametrize("case", sorted(EXHAUSTION_CASES))
def test_exhaustion_says_who_holds_the_gpus(case: str) -> None:
    gpu_type, count, message = EXHAUSTION_CASES[case]
    hub = allocator()
    hub.claim("bob/x", "h100-80gb", 1)
    hub.claim("ada/", "h100-80gb", 2)
    hub.claim("cy/", "a100-1g10gb", 1)
    with pytest.raises(NoFreeGPUs, match=re.escape(message)):
        hub.claim("eve/", gpu_type, count)
    assert "eve/" not in hub.holdings()


def test_a_server_claims_once() -> None:
    hub = allocator()
    hub.claim("ada/", "h100-80gb", 1)
    with pytest.raises(AllocationError, match="ada/ already holds GPU 0; the hub must release"):
        hub.claim("ada/", "h100-80gb", 1)


def test_a_claim_is_for_one_gpu_or_more() -> None:
    with pytest.raises(ValueError, match="ada/: a claim is for 1 GPU or more, not 0"):
        allocator().claim("ada/", "h100-80gb", 0)


def test_restore_after_a_hub_restart() -> None:
    before = allocator()
    saved = {
        "ada/": to_state(before.claim("ada/", "h100-80gb", 2)),
        "cy/": to_state(before.claim("cy/", "a100-1g10gb", 2)),
    }
    after = allocator()  # a new hub: same devices, empty record
    for server, uuids in saved.items():
        after.restore(server, uuids)
    assert after.holdings() == before.holdings()
    assert after.restore("ada/", saved["ada/"]) == (gpu(0), gpu(1))  # again: harmless
    assert after.restore("fay/", []) == ()  # a CPU server holds nothing
    assert "fay/" not in after.holdings()
    assert after.claim("bob/", "h100-80gb", 2) == (gpu(2), gpu(3))


RESTORE_CONFLICTS = {
    "a device that is gone": (
        "ada/",
        ["GPU-0", "GPU-9"],
        "ada/ held GPU-9 before the hub restarted, but no GPU of a catalog type has that uuid now",
    ),
    "a device another server holds": (
        "ada/",
        ["GPU-0", "GPU-1"],
        "another server holds now: GPU 1 GPU-1 by bob/. Two servers cannot share a GPU",
    ),
    "a server restored with other devices": (
        "bob/",
        ["GPU-2"],
        "bob/ already holds GPU-1, not the GPU-2 it is being restored with",
    ),
}


@pytest.mark.parametrize("case", sorted(RESTORE_CONFLICTS))
def test_conflicting_restore_records_nothing(case: str) -> None:
    server, uuids, message = RESTORE_CONFLICTS[case]
    hub = allocator()
    hub.restore("bob/", ["GPU-1"])
    with pytest.raises(RestoreError, match=re.escape(message)):
        hub.restore(server, uuids)
    assert dict(hub.holdings()) == {"bob/": (gpu(1),)}
    assert hub.free("h100-80gb") == 3


def test_reconfigure_keeps_holdings() -> None:
    hub = allocator()
    hub.claim("ada/", "h100-80gb", 1)
    hub.reconfigure({"h100-80gb": H100[:2], "h100-extra": H100[2:]})
    assert hub.holdings()["ada/"] == (gpu(0),)
    assert (hub.total("h100-80gb"), hub.free("h100-80gb")) == (2, 1)
    assert hub.free("h100-extra") == 2


def test_a_device_is_of_one_type() -> None:
    with pytest.raises(ValueError, match="GPU-0 is listed under both 'a' and 'b'"):
        Allocator({"a": H100[:1], "b": H100[:1]})
