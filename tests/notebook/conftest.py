"""The fake NVML (compiled by this setup from spawner_ext/fakenvml/fake_nvml.c) and a sampler
in a process of its own that loads it through LD_LIBRARY_PATH, as a notebook server would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spawner_ext.fakenvml import FakeNVML, build, environment, write_config
from spawner_ext.notebook.visible import VARIABLES

SAMPLER = """
import json, sys
from dataclasses import asdict
from spawner_ext.notebook.sampler import Sampler, NVMLUnavailable, gpu_activity
from spawner_ext.notebook.visible import visible_gpus
import os
sampler = Sampler(visible_gpus(os.environ))
for line in sys.stdin:
    try:
        samples = sampler.sample()
        answer = {"samples": [asdict(s) for s in samples],
                  "activity": gpu_activity(samples, int(line)).value}
    except NVMLUnavailable as exc:
        answer = {"unavailable": str(exc)}
    print(json.dumps(answer), flush=True)
"""


@dataclass
class FakeGPUs:
    """The fake NVML's config file and library."""

    config: Path
    library_dir: Path

    def set(self, nvml: FakeNVML) -> None:
        write_config(self.config, nvml)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **environment(self.library_dir, self.config, os.environ), **extra}


@pytest.fixture(scope="session")
def fake_nvml_library() -> Path:
    return build()


@pytest.fixture
def fake_gpus(tmp_path: Path, fake_nvml_library: Path) -> FakeGPUs:
    gpus = FakeGPUs(tmp_path / "fake-nvml.conf", fake_nvml_library)
    gpus.set(FakeNVML())
    return gpus


class SamplerProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SAMPLER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def sample(self, threshold: int = 5) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{threshold}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the sampler process died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(10)
        self.process.stdout.close()


@pytest.fixture
def sampler_for(fake_gpus: FakeGPUs) -> Iterator[Any]:
    started: list[SamplerProcess] = []

    def start(visible: str, variable: str = "CUDA_VISIBLE_DEVICES") -> SamplerProcess:
        env = fake_gpus.env()
        for name in VARIABLES:
            env.pop(name, None)
        env[variable] = visible
        process = SamplerProcess(env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
