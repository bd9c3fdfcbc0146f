"""The fake NVML's picture of `--simulate-gpus` devices, and what its config file refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spawner_ext.catalog import load_catalog
from spawner_ext.fakenvml import FakeGPU, FakeNVML, render
from spawner_ext.local.fakegpus import fake_nvml_for
from spawner_ext.local.inventory import parse_simulation

CATALOG = load_catalog(Path(__file__).parents[2] / "hub_config" / "catalog.yaml")


def test_simulated_gpus_and_mig_devices_become_fake_nvml_devices() -> None:
    devices = parse_simulation("2xh100-80gb,3xa100-1g10gb", CATALOG)
    fake = fake_nvml_for(devices, CATALOG)
    full = [g for g in fake.gpus if not g.migs]
    assert [g.uuid for g in full] == [d.uuid for d in devices if not d.is_mig]
    assert full[0].name == "NVIDIA H100 80GB" and full[0].utilization == 0
    (parent,) = [g for g in fake.gpus if g.migs]
    assert [m.uuid for m in parent.migs] == [d.uuid for d in devices if d.is_mig]
    text = render(fake)
    assert text.count("\ngpu\t") == 3 and text.count("\nmig\t") == 3
    assert text.startswith("# gpuhub fake NVML"), "the notes are comments"


def test_values_that_would_break_the_file_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold a tab"):
        render(FakeNVML(gpus=(FakeGPU("GPU-1", "bad\tname", 1),)))


def test_local_mode_discovers_the_fake_nvmls_gpus_and_mig_devices(fake_gpus: Any) -> None:
    """Local mode's NVML discovery (local/inventory.py) through unmodified pynvml, in a process
    that loads the fake NVML: full GPUs and the MIG devices of a GPU in MIG mode."""
    import json
    import subprocess
    import sys

    from spawner_ext.fakenvml import FakeMIG

    fake_gpus.set(
        FakeNVML(
            gpus=(
                FakeGPU("GPU-a", "NVIDIA H100 80GB HBM3", 80 * 2**30),
                FakeGPU(
                    "GPU-b",
                    "NVIDIA A100-SXM4-80GB",
                    80 * 2**30,
                    migs=(FakeMIG("MIG-c", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", 10 * 2**30),),
                ),
            )
        )
    )
    code = (
        "import json; from spawner_ext.local.inventory import discover; d = discover();"
        "print(json.dumps([[x.uuid, x.name, x.mig_index] for x in d.devices]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=fake_gpus.env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        ["GPU-a", "NVIDIA H100 80GB HBM3", None],
        ["MIG-c", "1g.10gb", 0],
    ]
