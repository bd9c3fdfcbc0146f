"""The sampler against the fake NVML, loaded by unmodified pynvml in a process of its own:
exactly the server's GPUs, busy, idle, a burst, a GPU lost, MIG devices, NVML absent, and a
config changed while the process runs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from spawner_ext.fakenvml import (
    DRIVER_NOT_LOADED,
    GPU_IS_LOST,
    FakeGPU,
    FakeMIG,
    FakeNVML,
    FakeProcess,
)
from tests.notebook.conftest import FakeGPUs, SamplerProcess

GIB = 2**30
H100 = FakeGPU("GPU-11111111-aaaa", "NVIDIA H100 80GB HBM3", 80 * GIB)
OTHER = FakeGPU("GPU-22222222-bbbb", "NVIDIA H100 80GB HBM3", 80 * GIB, utilization=99)
A100_MIG = FakeGPU(
    "GPU-33333333-cccc",
    "NVIDIA A100-SXM4-80GB",
    80 * GIB,
    migs=(
        FakeMIG("MIG-44444444-dddd", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", 10 * GIB),
        FakeMIG("MIG-55555555-eeee", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", 10 * GIB),
    ),
)


def machine(*gpus: FakeGPU, **changes: Any) -> FakeNVML:
    return replace(FakeNVML(gpus=gpus), **changes)


def test_only_the_servers_own_gpu_is_sampled(fake_gpus: FakeGPUs, sampler_for: Any) -> None:
    fake_gpus.set(machine(H100, OTHER))
    answer = sampler_for(H100.uuid).sample()
    assert [s["uuid"] for s in answer["samples"]] == [H100.uuid], "not the other server's GPU"
    assert answer["samples"][0]["utilization"] == 0
    assert answer["samples"][0]["memory_total"] == 80 * GIB
    assert answer["activity"] == "idle", "the neighbour's 99 % is not this server's"
    by_index = sampler_for("1", "NVIDIA_VISIBLE_DEVICES").sample()
    assert [s["uuid"] for s in by_index["samples"]] == [OTHER.uuid]
    assert by_index["activity"] == "busy"
    assert sampler_for("none").sample() == {"samples": [], "activity": "none"}


def test_busy_idle_and_a_burst_as_the_config_changes_under_a_running_process(
    fake_gpus: FakeGPUs, sampler_for: Any
) -> None:
    fake_gpus.set(machine(replace(H100, utilization=87, processes=(FakeProcess(4242, GIB),))))
    sampler: SamplerProcess = sampler_for(H100.uuid)
    busy = sampler.sample()
    assert busy["activity"] == "busy"
    assert (busy["samples"][0]["utilization"], busy["samples"][0]["processes"]) == (87, 1)
    # the training run ends; its process keeps the memory (a CUDA context): still idle
    fake_gpus.set(machine(replace(H100, memory_used=30 * GIB, processes=(FakeProcess(4242),))))
    idle = sampler.sample()
    assert idle["activity"] == "idle"
    assert idle["samples"][0]["memory_used"] == 30 * GIB
    fake_gpus.set(machine(replace(H100, utilization=6)))  # a burst just above the threshold
    assert sampler.sample(threshold=5)["activity"] == "busy"
    assert sampler.sample(threshold=10)["activity"] == "idle"


def test_a_lost_gpu_is_reported_and_is_not_idle(fake_gpus: FakeGPUs, sampler_for: Any) -> None:
    fake_gpus.set(machine(H100))
    sampler: SamplerProcess = sampler_for(H100.uuid)
    assert sampler.sample()["activity"] == "idle"
    fake_gpus.set(machine(replace(H100, fail=GPU_IS_LOST)))
    lost = sampler.sample()
    assert lost["activity"] == "unknown", "a GPU that cannot be read is never judged idle"
    assert "lost" in lost["samples"][0]["error"].lower()
    fake_gpus.set(machine())  # gone from the machine altogether
    assert sampler.sample()["activity"] == "unknown"
    fake_gpus.set(machine(H100))
    assert sampler.sample()["activity"] == "idle", "it recovers when the GPU is back"


def test_mig_devices_are_judged_by_their_processes_never_by_utilization(
    fake_gpus: FakeGPUs, sampler_for: Any
) -> None:
    fake_gpus.set(machine(A100_MIG))
    mine = A100_MIG.migs[0].uuid
    sampler: SamplerProcess = sampler_for(mine)
    empty = sampler.sample()
    assert [(s["uuid"], s["is_mig"], s["utilization"]) for s in empty["samples"]] == [
        (mine, True, None)
    ]
    assert empty["activity"] == "idle", "no process can be computing on it"
    with_process = replace(A100_MIG.migs[0], processes=(FakeProcess(7, GIB),), memory_used=GIB)
    fake_gpus.set(machine(replace(A100_MIG, migs=(with_process, A100_MIG.migs[1]))))
    assert sampler.sample()["activity"] == "unknown", "NVML cannot say whether it computes"


def test_nvml_absent_or_without_driver_is_unavailable_not_a_crash(
    fake_gpus: FakeGPUs, sampler_for: Any
) -> None:
    fake_gpus.set(machine(H100, fail_init=DRIVER_NOT_LOADED))
    sampler: SamplerProcess = sampler_for(H100.uuid)
    assert "Driver Not Loaded" in sampler.sample()["unavailable"]
    fake_gpus.set(machine(H100))
    assert sampler.sample()["activity"] == "idle", "initialised on a later try"
    env = fake_gpus.env(CUDA_VISIBLE_DEVICES=H100.uuid, LD_LIBRARY_PATH="/nonexistent")
    missing = SamplerProcess(env)
    try:
        assert "NVML cannot be initialised" in missing.sample()["unavailable"]
    finally:
        missing.close()
