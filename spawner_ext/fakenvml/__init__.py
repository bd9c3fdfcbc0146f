"""A fake NVML for machines without NVIDIA GPUs: `fake_nvml.c`, compiled with gcc into a
`libnvidia-ml.so.1` that unmodified pynvml loads through LD_LIBRARY_PATH, and the file that
says what its GPUs report, which a test (or `gpuhub up --simulate-gpus`) rewrites while it runs.

`render` is pure; `write_config` replaces the file atomically (the library re-reads it when it
changes); `build` compiles the library once per source version into a cache directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..wire import ENV_FAKE_NVML_CONFIG

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY = "libnvidia-ml.so.1"
DEFAULT_CACHE = Path.home() / ".cache" / "gpuhub" / "fakenvml"

# NVML return codes a test may make a device or nvmlInit answer.
GPU_IS_LOST = 15
DRIVER_NOT_LOADED = 9
UNKNOWN_ERROR = 999


@dataclass(frozen=True)
class FakeProcess:
    pid: int
    used_memory: int = 0
    """Bytes of GPU memory."""


@dataclass(frozen=True)
class FakeMIG:
    """A MIG device of a GPU in MIG mode. NVML reports no utilization for it."""

    uuid: str
    name: str
    memory_total: int
    memory_used: int = 0
    processes: tuple[FakeProcess, ...] = ()
    fail: int = 0


@dataclass(frozen=True)
class FakeGPU:
    uuid: str
    name: str
    memory_total: int
    memory_used: int = 0
    utilization: int = 0
    """Percent of the last sample period a kernel ran."""
    memory_utilization: int = 0
    processes: tuple[FakeProcess, ...] = ()
    fail: int = 0
    """An NVML return code every query of this GPU answers (GPU_IS_LOST); 0: none."""
    migs: tuple[FakeMIG, ...] = ()
    """Its MIG devices; a GPU with any is in MIG mode (no utilization either)."""


@dataclass(frozen=True)
class FakeNVML:
    gpus: tuple[FakeGPU, ...] = ()
    driver: str = "550.54.15"
    fail_init: int = 0
    """What nvmlInit answers (DRIVER_NOT_LOADED); 0: success."""
    notes: Sequence[str] = field(default=())


def _clean(value: str) -> str:
    if any(c in value for c in "\t\r\n="):
        raise ValueError(f"{value!r}: a fake NVML value cannot hold a tab, newline or '='")
    return value


def _fields(kind: str, values: Mapping[str, object]) -> str:
    return "\t".join([kind, *(f"{k}={_clean(str(v))}" for k, v in values.items())])


def _processes(processes: Sequence[FakeProcess]) -> str:
    return ",".join(f"{p.pid}:{p.used_memory}" for p in processes)


def render(config: FakeNVML) -> str:
    """The config file's text for `config` (the format is described in fake_nvml.c)."""
    lines = ["# gpuhub fake NVML (spawner_ext/fakenvml)"]
    lines += [f"# {note}" for note in config.notes if "\n" not in note and "\r" not in note]
    lines.append(_fields("system", {"driver": config.driver, "fail_init": config.fail_init}))
    for index, gpu in enumerate(config.gpus):
        lines.append(
            _fields(
                "gpu",
                {
                    "uuid": gpu.uuid,
                    "name": gpu.name,
                    "memory_total": gpu.memory_total,
                    "memory_used": gpu.memory_used,
                    "utilization": gpu.utilization,
                    "memory_utilization": gpu.memory_utilization,
                    "processes": _processes(gpu.processes),
                    "fail": gpu.fail,
                    "mig_mode": 1 if gpu.migs else 0,
                },
            )
        )
        for mig in gpu.migs:
            lines.append(
                _fields(
                    "mig",
                    {
                        "parent": index,
                        "uuid": mig.uuid,
                        "name": mig.name,
                        "memory_total": mig.memory_total,
                        "memory_used": mig.memory_used,
                        "processes": _processes(mig.processes),
                        "fail": mig.fail,
                    },
                )
            )
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: FakeNVML) -> None:
    """Replace the config file at `path` atomically: the library never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(render(config))
    os.replace(temporary, path)


class BuildError(RuntimeError):
    """gcc is missing or failed; the message says what to install or what it printed."""


def build(cache: Path = DEFAULT_CACHE) -> Path:
    """The directory holding the compiled `libnvidia-ml.so.1` (put it on LD_LIBRARY_PATH),
    compiled once per version of the source."""
    source = SOURCE.read_bytes()
    directory = cache / hashlib.sha256(source).hexdigest()[:16]
    library = directory / LIBRARY
    if library.exists():
        return directory
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BuildError(
            "the fake NVML needs a C compiler: install gcc (Debian: apt-get install gcc)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{LIBRARY}.{os.getpid()}"
    command = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(partial), str(SOURCE)]
    command.append("-lpthread")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"compiling {SOURCE} failed:\n{done.stderr.strip()}")
    os.replace(partial, library)
    return directory


def environment(library_dir: Path, config: Path, base: Mapping[str, str]) -> dict[str, str]:
    """Variables that make a process's pynvml load the fake NVML with `config`."""
    paths = [str(library_dir), *filter(None, base.get("LD_LIBRARY_PATH", "").split(":"))]
    return {"LD_LIBRARY_PATH": ":".join(paths), ENV_FAKE_NVML_CONFIG: str(config)}
