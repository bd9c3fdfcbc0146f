"""Local mode's GPU inventory: NVML discovery through a fake NVML, --simulate-gpus specs, and the
mapping of devices to catalog GPU types."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from spawner_ext.catalog.schema import Catalog
from spawner_ext.local.inventory import (
    Device,
    devices_by_type,
    discover,
    gpu_type_of,
    mig_profile_name,
    nvml_inventory,
    parse_simulation,
    unmatched,
    unmatched_message,
)

MIB = 1024 * 1024

CATALOG = Catalog.model_validate(
    {
        "gpu_types": {
            "h100-80gb": {
                "display_name": "NVIDIA H100 80GB",
                "price_per_hour": 4.10,
                "device_names": ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"],
            },
            "a100-40gb": {
                "display_name": "NVIDIA A100 40GB",
                "price_per_hour": 1.80,
                "device_names": ["NVIDIA A100-SXM4-40GB"],
            },
            "a100-1g10gb": {
                "display_name": "A100 MIG slice 1g.10gb",
                "resource": "nvidia.com/mig-1g.10gb",
                "price_per_hour": 0.30,
                "device_names": ["1g.10gb"],
            },
            # A MIG type without device_names matches the profile of its resource.
            "a100-3g40gb": {
                "display_name": "A100 MIG slice 3g.40gb",
                "resource": "nvidia.com/mig-3g.40gb",
                "price_per_hour": 1.00,
            },
            "l4": {
                "display_name": "NVIDIA L4 24GB",
                "price_per_hour": 0.70,
                "device_names": ["NVIDIA L4"],
            },
        },
        "profiles": [],
    }
)


# --- a fake NVML with pynvml's function names ---------------------------------------------------


@dataclass(frozen=True)
class Memory:
    total: int


@dataclass(frozen=True)
class Attributes:
    gpuInstanceSliceCount: int
    computeInstanceSliceCount: int
    memorySizeMB: int


@dataclass(frozen=True)
class FakeMig:
    uuid: str
    name: str
    memory_mib: int
    attributes: Attributes | None = None


@dataclass(frozen=True)
class FakeGPU:
    name: str
    uuid: str
    memory_mib: int
    mig: tuple[FakeMig | None, ...] | None = None  # None: MIG mode off; None slot: empty
    broken: bool = False


@dataclass
class FakeNVML:
    gpus: Sequence[FakeGPU] = ()
    init_error: type[pynvml.NVMLError] | None = None
    mig_not_supported: bool = False
    calls: list[str] = field(default_factory=list)

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error()

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if self.gpus[index].broken:
            raise pynvml.NVMLError_GpuIsLost()
        return ("gpu", index)

    def _gpu(self, handle: Any) -> FakeGPU:
        return self.gpus[int(handle[1])]

    def _mig(self, handle: Any) -> FakeMig:
        mig = self._gpu(handle).mig
        assert mig is not None
        slot = mig[int(handle[2])]
        assert slot is not None
        return slot

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle).name if handle[0] == "gpu" else self._mig(handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._gpu(handle).uuid if handle[0] == "gpu" else self._mig(handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        if handle[0] == "gpu":
            assert self._gpu(handle).mig is None, "a GPU in MIG mode is not itself a device"
            return Memory(self._gpu(handle).memory_mib * MIB)
        return Memory(self._mig(handle).memory_mib * MIB)

    def nvmlDeviceGetMigMode(self, handle: Any) -> Sequence[int]:
        if self.mig_not_supported:
            raise pynvml.NVMLError_NotSupported()
        on = self._gpu(handle).mig is not None
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if on else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        return len(self._gpu(handle).mig or ())

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        mig = self._gpu(handle).mig
        if mig is None or mig[index] is None:
            raise pynvml.NVMLError_NotFound()
        return ("mig", handle[1], index)

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:
        attributes = self._mig(handle).attributes
        assert attributes is not None
        return attributes


H100 = FakeGPU("NVIDIA H100 80GB HBM3", "GPU-h100-0", 81559)
H100_B = FakeGPU("NVIDIA H100 80GB HBM3", "GPU-h100-1", 81559)
L40S = FakeGPU("NVIDIA L40S", "GPU-l40s-0", 46068)
A100_MIG = FakeGPU(
    "NVIDIA A100-SXM4-80GB",
    "GPU-a100-0",
    81920,
    mig=(
        FakeMig("MIG-aaa", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192),
        None,  # an empty slot
        FakeMig("MIG-bbb", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", 9856),
        # An older driver's name without the profile: from slices and memory.
        FakeMig("MIG-ccc", "A100-SXM4-80GB", 9856, Attributes(1, 1, 9856)),
    ),
)


def full(index: int, uuid: str, name: str, memory: int) -> Device:
    return Device(index, uuid, name, memory, None, simulated=False)


def mig(
    index: int, mig_index: int, uuid: str, profile: str, memory: int, parent: str | None = None
) -> Device:
    return Device(index, uuid, profile, memory, mig_index, simulated=False, parent_name=parent)


A100_80 = "NVIDIA A100-SXM4-80GB"
H100_80 = "NVIDIA H100 80GB HBM3"


DISCOVERY_CASES = {
    "full GPUs": (
        [H100, L40S, H100_B],
        (
            full(0, "GPU-h100-0", "NVIDIA H100 80GB HBM3", 81559),
            full(1, "GPU-l40s-0", "NVIDIA L40S", 46068),
            full(2, "GPU-h100-1", "NVIDIA H100 80GB HBM3", 81559),
        ),
    ),
    "a GPU in MIG mode offers its MIG devices, not itself": (
        [H100, A100_MIG],
        (
            full(0, "GPU-h100-0", "NVIDIA H100 80GB HBM3", 81559),
            mig(1, 0, "MIG-aaa", "3g.40gb", 40192, A100_80),
            mig(1, 2, "MIG-bbb", "1g.10gb", 9856, A100_80),
            mig(1, 3, "MIG-ccc", "1g.10gb", 9856, A100_80),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(DISCOVERY_CASES))
def test_discovery_through_fake_nvml(case: str) -> None:
    gpus, expected = DISCOVERY_CASES[case]
    nvml = FakeNVML(gpus)
    found = discover(nvml)
    assert found.devices == expected
    assert found.reason is None
    assert found.problems == ()
    assert nvml.calls == ["init", "shutdown"]
    assert nvml_inventory(FakeNVML(gpus)) == expected


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (pynvml.NVMLError_LibraryNotFound, "no NVIDIA driver found"),
        (pynvml.NVMLError_DriverNotLoaded, "installed but not loaded"),
        (pynvml.NVMLError_NoPermission, "insufficient permissions"),
        (pynvml.NVMLError_Unknown, "NVML could not start (Unknown Error)"),
    ],
)
def test_no_nvml_is_an_empty_inventory_with_a_reason(
    error: type[pynvml.NVMLError], says: str
) -> None:
    nvml = FakeNVML([H100], init_error=error)
    found = discover(nvml)
    assert found.devices == ()
    assert found.reason is not None
    assert says in found.reason
    assert nvml.calls == ["init"]  # no shutdown without a successful init
    assert nvml_inventory(FakeNVML([H100], init_error=error)) == ()


def test_no_gpus_has_a_reason() -> None:
    found = discover(FakeNVML([]))
    assert found.devices == ()
    assert found.reason is not None
    assert "reports no GPUs" in found.reason


def test_a_lost_gpu_is_skipped_and_reported() -> None:
    found = discover(FakeNVML([FakeGPU("x", "GPU-x", 1, broken=True), H100]))
    assert [d.uuid for d in found.devices] == ["GPU-h100-0"]
    assert found.problems == ("GPU 0: NVML failed (GPU is lost); skipped, see nvidia-smi",)


def test_a_gpu_in_mig_mode_without_mig_devices_is_reported() -> None:
    empty = FakeGPU("NVIDIA A100-SXM4-80GB", "GPU-a100-0", 81920, mig=(None, None))
    found = discover(FakeNVML([empty]))
    assert found.devices == ()
    assert found.reason is not None
    assert "hub log" in found.reason
    assert len(found.problems) == 1
    assert (
        "GPU 0 'NVIDIA A100-SXM4-80GB' is in MIG mode but has no MIG devices" in (found.problems[0])
    )


def test_gpus_without_mig_support_are_full_gpus() -> None:
    found = discover(FakeNVML([L40S], mig_not_supported=True))
    assert found.devices == (full(0, "GPU-l40s-0", "NVIDIA L40S", 46068),)


@pytest.mark.parametrize(
    ("name", "attributes", "profile"),
    [
        ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", None, "1g.10gb"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", None, "1g.10gb+me"),
        ("NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb", None, "1c.3g.20gb"),
        ("A100-SXM4-40GB", Attributes(1, 1, 4864), "1g.5gb"),
        ("A100-SXM4-80GB", Attributes(7, 7, 81152), "7g.80gb"),
        ("A100-SXM4-40GB", Attributes(3, 1, 19968), "1c.3g.20gb"),
        ("A100-SXM4-40GB", Attributes(0, 0, 0), None),
        ("A100-SXM4-40GB", None, None),
    ],
)
def test_mig_profile_name(name: str, attributes: Attributes | None, profile: str | None) -> None:
    assert mig_profile_name(name, attributes) == profile


# --- --simulate-gpus ---------------------------------------------------------------------------


def sim(
    index: int,
    uuid: str,
    key: str,
    memory: int,
    mig_index: int | None = None,
    parent: str | None = None,
) -> Device:
    return Device(index, uuid, key, memory, mig_index, simulated=True, parent_name=parent)


SIMULATION_CASES = {
    "4xH100-80GB": (
        sim(0, "GPU-sim-00000000-h100-80gb", "h100-80gb", 81920),
        sim(1, "GPU-sim-00000001-h100-80gb", "h100-80gb", 81920),
        sim(2, "GPU-sim-00000002-h100-80gb", "h100-80gb", 81920),
        sim(3, "GPU-sim-00000003-h100-80gb", "h100-80gb", 81920),
    ),
    "1xh100-80gb, 2 x L4": (
        sim(0, "GPU-sim-00000000-h100-80gb", "h100-80gb", 81920),
        sim(1, "GPU-sim-00000000-l4", "l4", 24576),
        sim(2, "GPU-sim-00000001-l4", "l4", 24576),
    ),
    "1xl4,3xa100-1g10gb,1xa100-40gb": (
        sim(0, "GPU-sim-00000000-l4", "l4", 24576),
        sim(1, "MIG-sim-00000000-a100-1g10gb", "a100-1g10gb", 10240, 0, "a100-1g10gb"),
        sim(1, "MIG-sim-00000001-a100-1g10gb", "a100-1g10gb", 10240, 1, "a100-1g10gb"),
        sim(1, "MIG-sim-00000002-a100-1g10gb", "a100-1g10gb", 10240, 2, "a100-1g10gb"),
        sim(2, "GPU-sim-00000000-a100-40gb", "a100-40gb", 40960),
    ),
}


@pytest.mark.parametrize("spec", sorted(SIMULATION_CASES))
def test_parse_simulation(spec: str) -> None:
    devices = parse_simulation(spec, CATALOG)
    assert devices == SIMULATION_CASES[spec]
    assert unmatched(devices, CATALOG) == ()


def test_simulated_uuids_stay_when_the_spec_gains_a_type() -> None:
    before = {d.uuid for d in parse_simulation("2xh100-80gb", CATALOG)}
    after = {d.uuid for d in parse_simulation("2xl4,2xh100-80gb", CATALOG)}
    assert before <= after


BAD_SPECS = {
    "": "--simulate-gpus is empty; expected COUNTxTYPE",
    "   ": "--simulate-gpus is empty; expected COUNTxTYPE",
    "h100-80gb": "cannot read 'h100-80gb' in --simulate-gpus 'h100-80gb'; expected COUNTxTYPE",
    "4xh100-80gb,": "cannot read '' in --simulate-gpus '4xh100-80gb,'; expected COUNTxTYPE",
    "-1xl4": "cannot read '-1xl4'",
    "2xh200": "unknown GPU type 'h200' in --simulate-gpus '2xh200'; catalog types: a100-1g10gb, "
    "a100-3g40gb, a100-40gb, h100-80gb, l4",
    "2xNVIDIA-L4-24GB": "unknown GPU type 'nvidia-l4-24gb'",
    "0xl4": "count must be 1..64 in '0xl4' of --simulate-gpus '0xl4'",
    "65xl4": "count must be 1..64 in '65xl4'",
    "1xl4,2xL4": "GPU type 'l4' appears twice in --simulate-gpus '1xl4,2xL4'; give it once",
}


@pytest.mark.parametrize("spec", sorted(BAD_SPECS))
def test_bad_simulation_specs_say_what_to_write(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape(BAD_SPECS[spec])):
        parse_simulation(spec, CATALOG)


def test_simulation_with_no_gpu_types() -> None:
    with pytest.raises(ValueError, match=r"catalog types: none \(the catalog defines no gpu_types"):
        parse_simulation("1xl4", Catalog.model_validate({"profiles": []}))


# --- mapping devices to GPU types --------------------------------------------------------------

TYPE_CASES = [
    (full(0, "GPU-0", "NVIDIA H100 80GB HBM3", 81559), "h100-80gb"),
    (full(0, "GPU-0", "nvidia h100 pcie", 81559), "h100-80gb"),  # case does not matter
    (full(0, "GPU-0", "NVIDIA H100", 81559), None),  # but the rest is exact
    (full(0, "GPU-0", "NVIDIA A100-SXM4-40GB", 40960), "a100-40gb"),
    (full(0, "GPU-0", "NVIDIA L40S", 46068), None),
    (full(0, "GPU-0", "1g.10gb", 9856), None),  # a full GPU never matches a MIG type
    (mig(0, 0, "MIG-0", "1g.10gb", 9856), "a100-1g10gb"),
    (mig(0, 0, "MIG-0", "3g.40gb", 40192), "a100-3g40gb"),  # from the resource
    (mig(0, 0, "MIG-0", "2g.20gb", 19968), None),
    (mig(0, 0, "MIG-0", "NVIDIA L4", 9856), None),  # a MIG device never matches a full type
    (sim(0, "GPU-sim-00000000-l4", "l4", 24576), "l4"),
    (sim(0, "GPU-sim-00000000-h200", "h200", 0), None),  # its type left the catalog
]


@pytest.mark.parametrize(("device", "gpu_type"), TYPE_CASES)
def test_gpu_type_of(device: Device, gpu_type: str | None) -> None:
    assert gpu_type_of(device, CATALOG) == gpu_type


def test_devices_by_type_and_unmatched() -> None:
    devices = discover(FakeNVML([H100_B, L40S, A100_MIG, H100])).devices
    by_type = devices_by_type(devices, CATALOG)
    assert list(by_type) == list(CATALOG.gpu_types)
    assert {k: [d.uuid for d in v] for k, v in by_type.items()} == {
        "h100-80gb": ["GPU-h100-1", "GPU-h100-0"],  # NVML index order
        "a100-40gb": [],
        "a100-1g10gb": ["MIG-bbb", "MIG-ccc"],
        "a100-3g40gb": ["MIG-aaa"],
        "l4": [],
    }
    lost = unmatched(devices, CATALOG)
    assert [d.uuid for d in lost] == ["GPU-l40s-0"]
    assert unmatched_message(lost[0]) == (
        "GPU 1 'NVIDIA L40S' matches no gpu_types entry; add 'NVIDIA L40S' to the device_names "
        "of its type"
    )


def test_unmatched_messages_for_mig_and_simulated_devices() -> None:
    assert unmatched_message(mig(2, 5, "MIG-0", "2g.20gb", 19968)) == (
        "GPU 2 MIG 5 (MIG profile '2g.20gb') matches no MIG gpu_types entry; add '2g.20gb' to "
        "the device_names of a type with resource nvidia.com/mig-2g.20gb"
    )
    assert "was simulated as 'h200', which is no longer a gpu_types entry" in unmatched_message(
        sim(0, "GPU-sim-00000000-h200", "h200", 0)
    )


# --- MIG devices: profile and parent GPU -------------------------------------------------------

H100_MIG = FakeGPU(
    H100_80,
    "GPU-h100-mig",
    81559,
    mig=(
        FakeMig("MIG-hhh", f"{H100_80} MIG 1g.10gb", 9984),
        # An older driver's name without the profile: the parent's name still comes from NVML.
        FakeMig("MIG-iii", "H100 80GB HBM3", 9984, Attributes(1, 1, 9984)),
    ),
)
TWO_PARENTS = (A100_MIG, H100_MIG)  # GPU 0 and GPU 1, both in MIG mode with 1g.10gb slices


def mig_type(parent: str | None = None, **more: Any) -> dict[str, Any]:
    parent_key = {} if parent is None else {"mig_parent": parent}
    return {
        "display_name": "MIG slice 1g.10gb",
        "resource": "nvidia.com/mig-1g.10gb",
        "price_per_hour": 0.30,
        **parent_key,
        **more,
    }


def catalog_of(gpu_types: dict[str, Any]) -> Catalog:
    return Catalog.model_validate({"gpu_types": gpu_types, "profiles": []})


AMBIGUOUS = (
    "GPU 0 MIG 2 (MIG profile '1g.10gb' of 'NVIDIA A100-SXM4-80GB') is ambiguous: gpu_types "
    "a100-1g10gb and h100-1g10gb share that profile and none of them sets mig_parent, so the "
    "device is left unused; set mig_parent on each to part of the NVML name of the GPU its slices "
    "are cut from, such as 'A100' or 'H100' (`nvidia-smi -L` prints the names)"
)
OTHER_PARENT = (
    "GPU 1 MIG 0 (MIG profile '1g.10gb' of 'NVIDIA H100 80GB HBM3') matches no MIG gpu_types "
    "entry: a100-1g10gb has mig_parent 'A100', not part of its GPU's name 'NVIDIA H100 80GB "
    "HBM3'; add a type with resource nvidia.com/mig-1g.10gb and a mig_parent that is part of "
    "that name, or remove mig_parent from a type to take slices of any GPU"
)

# name -> (gpu_types, the 1g.10gb slices of TWO_PARENTS by type, first unmatched message or None)
MIG_PARENT_CASES: dict[str, tuple[dict[str, Any], dict[str, list[str]], str | None]] = {
    "an A100 and an H100 slice of one profile are two types": (
        {"a100-1g10gb": mig_type("A100"), "h100-1g10gb": mig_type("h100 80gb")},
        {"a100-1g10gb": ["MIG-bbb", "MIG-ccc"], "h100-1g10gb": ["MIG-hhh", "MIG-iii"]},
        None,
    ),
    "the parent is matched on the parent GPU, not on the MIG device's name": (
        {"h100-1g10gb": mig_type("NVIDIA H100"), "a100-1g10gb": mig_type("A100-SXM4-80GB")},
        {"h100-1g10gb": ["MIG-hhh", "MIG-iii"], "a100-1g10gb": ["MIG-bbb", "MIG-ccc"]},
        None,
    ),
    "one type without mig_parent takes the slices of any GPU": (
        {"any-1g10gb": mig_type(device_names=["1g.10gb"])},
        {"any-1g10gb": ["MIG-bbb", "MIG-ccc", "MIG-hhh", "MIG-iii"]},
        None,
    ),
    "a type naming the parent beats one that names none": (
        {"any-1g10gb": mig_type(), "h100-1g10gb": mig_type("H100")},
        {"any-1g10gb": ["MIG-bbb", "MIG-ccc"], "h100-1g10gb": ["MIG-hhh", "MIG-iii"]},
        None,
    ),
    "of two types naming the parent, the first wins": (
        {"a": mig_type("A100"), "b": mig_type("NVIDIA"), "c": mig_type("H100")},
        {"a": ["MIG-bbb", "MIG-ccc"], "b": ["MIG-hhh", "MIG-iii"], "c": []},
        None,
    ),
    "two types of one profile without mig_parent are ambiguous": (
        {"a100-1g10gb": mig_type(), "h100-1g10gb": mig_type()},
        {"a100-1g10gb": [], "h100-1g10gb": []},
        AMBIGUOUS,
    ),
    "a parent naming another GPU leaves the slice out": (
        {"a100-1g10gb": mig_type("A100")},
        {"a100-1g10gb": ["MIG-bbb", "MIG-ccc"]},
        OTHER_PARENT,
    ),
}


@pytest.mark.parametrize("case", sorted(MIG_PARENT_CASES))
def test_mig_devices_match_profile_and_parent_gpu(case: str) -> None:
    gpu_types, expected, message = MIG_PARENT_CASES[case]
    catalog = catalog_of(gpu_types)
    devices = discover(FakeNVML(TWO_PARENTS)).devices
    slices = [d for d in devices if d.name == "1g.10gb"]
    assert [d.parent_name for d in slices] == [A100_80, A100_80, H100_80, H100_80]
    by_type = devices_by_type(slices, catalog)
    assert {key: [d.uuid for d in group] for key, group in by_type.items()} == expected
    lost = unmatched(slices, catalog)
    taken = {uuid for group in expected.values() for uuid in group}
    assert [d.uuid for d in lost] == [d.uuid for d in slices if d.uuid not in taken]
    if message is None:
        assert lost == ()
    else:
        assert unmatched_message(lost[0], catalog) == message


def test_ambiguity_names_every_type_and_the_field() -> None:
    catalog = catalog_of({"a": mig_type(), "b": mig_type(), "c": mig_type(), "d": mig_type("X")})
    device = mig(0, 1, "MIG-0", "1g.10gb", 9856, H100_80)
    assert gpu_type_of(device, catalog) is None
    assert "gpu_types a, b and c share that profile and none of them sets mig_parent" in (
        unmatched_message(device, catalog)
    )


def test_unmatched_mig_message_without_the_catalog_names_the_parent_field() -> None:
    assert unmatched_message(mig(1, 0, "MIG-0", "2g.20gb", 19968, H100_80)) == (
        "GPU 1 MIG 0 (MIG profile '2g.20gb' of 'NVIDIA H100 80GB HBM3') matches no MIG gpu_types "
        "entry; add '2g.20gb' to the device_names of a type with resource nvidia.com/mig-2g.20gb; "
        "if other GPU models have this profile too, also set its mig_parent to part of the GPU's "
        "name"
    )


def test_simulated_mig_devices_name_their_parent() -> None:
    catalog = catalog_of({"h100-1g10gb": mig_type("H100"), "any-1g10gb": mig_type()})
    devices = parse_simulation("2xh100-1g10gb,1xany-1g10gb", catalog)
    assert devices == (
        sim(0, "MIG-sim-00000000-h100-1g10gb", "h100-1g10gb", 10240, 0, "H100"),
        sim(0, "MIG-sim-00000001-h100-1g10gb", "h100-1g10gb", 10240, 1, "H100"),
        sim(1, "MIG-sim-00000000-any-1g10gb", "any-1g10gb", 10240, 0, "any-1g10gb"),
    )
    assert [gpu_type_of(d, catalog) for d in devices] == ["h100-1g10gb"] * 2 + ["any-1g10gb"]
    assert all(d.parent_name is None for d in parse_simulation("2xl4", CATALOG))


@pytest.mark.parametrize(
    ("gpu_type", "error"),
    [
        (
            {"display_name": "H100", "price_per_hour": 4, "mig_parent": "H100"},
            "mig_parent is only for MIG types, and resource is 'nvidia.com/gpu'; remove mig_parent",
        ),
        (mig_type("  "), "mig_parent is empty; give part of the parent GPU's NVML name"),
    ],
)
def test_mig_parent_is_checked(gpu_type: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        catalog_of({"t": gpu_type})


def test_mig_parent_is_stripped() -> None:
    assert catalog_of({"t": mig_type(" H100 ")}).gpu_types["t"].mig_parent == "H100"
