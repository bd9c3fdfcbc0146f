"""`gpuhub migrate VALUES.yaml`: a z2jh values file's profileList becomes a catalog that the real
loader takes once the admin has answered its TODOs, with the GPUs of its GPU profiles kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, CatalogError, parse_catalog
from spawner_ext.catalog.loader import catalog_warnings
from spawner_ext.catalog.migrate import MARK, migrate_values
from spawner_ext.catalog.override_gpus import gpu_type_name
from spawner_ext.cli import main

HERE = Path(__file__).parent
VALUES = HERE / "z2jh-values.yaml"
LISTS = sorted((HERE / "z2jh").glob("*.yaml"))
ANSWERS = {
    "price_per_hour": "1.50",
    "node_selector": "{}",
    "display_name": "NVIDIA GPU",
    "groups": "[gpu-users]",
}


def answered(text: str) -> str:
    """The catalog with every TODO answered, as an admin would."""

    def answer(line: str) -> str:
        if MARK not in line or ": TODO  #" not in line:
            return line
        key = line.split(":", 1)[0].strip().removeprefix("- ")
        return line[: line.index(": TODO  #")] + ": " + ANSWERS.get(key, "4")

    return "\n".join(answer(line) for line in text.splitlines()) + "\n"


def values(profile_list: str) -> str:
    body = "\n".join("    " + line for line in profile_list.splitlines())
    return "singleuser:\n  profileList:\n" + body + "\n"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["migrate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_example_keeps_its_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(VALUES))
    assert code == 1, "questions left: exit 1, and the catalog is written"
    with pytest.raises(CatalogError) as refused:
        parse_catalog(out)
    lines = out.splitlines()
    assert all(MARK in lines[p.line - 1] for p in refused.value.problems), refused.value
    assert "price_per_hour: TODO  # TODO(gpuhub migrate)" in out
    assert f"{VALUES}:83:7: singleuser.profileList[5]: TODO: profile 'Some GPU' asks" in err
    assert "did you mean 'image_pull_policy'?" in err

    catalog = parse_catalog(answered(out))
    assert catalog_warnings(answered(out)) == [], "no GPU left in an override"

    def gpu(slug: str) -> tuple[str, int, str, dict[str, str]]:
        profile = catalog.profile(slug)
        assert profile is not None and profile.gpu is not None, slug
        gpu_type = catalog.gpu_types[profile.gpu.type]
        return profile.gpu.type, profile.gpu.count, gpu_type.resource, dict(gpu_type.node_selector)

    a100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert gpu("two-a100-80gb") == ("a100-sxm4-80gb", 2, "nvidia.com/gpu", a100)
    assert gpu("mig") == ("a100-sxm4-80gb-mig-1g-10gb", 1, "nvidia.com/mig-1g.10gb", a100)
    t4 = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert gpu("gke-t4") == ("tesla-t4", 1, "nvidia.com/gpu", t4)
    assert gpu("gke-l4x2")[:2] == ("l4", 2)
    assert gpu("aws-t4")[0] == "g4dn-xlarge"
    assert catalog.gpu_types["g4dn-xlarge"].display_name == "NVIDIA T4 (g4dn.xlarge)"
    assert gpu("some-gpu") == ("unknown-gpu", 1, "nvidia.com/gpu", {})
    tolerations = catalog.gpu_types["a100-sxm4-80gb"].tolerations
    assert [(t.key, t.operator) for t in tolerations] == [("nvidia.com/gpu", "Exists")]

    a100_profile = catalog.profile("two-a100-80gb")
    assert a100_profile is not None
    assert dict(a100_profile.kubespawner_override["node_selector"]) == {
        "hub.jupyter.org/node-purpose": "user"
    }
    assert "tolerations" not in a100_profile.kubespawner_override
    cpu = catalog.profile("cpu")
    assert cpu is not None and cpu.gpu is None and cpu.default
    image = cpu.profile_options["image"]
    assert image.choices["staff"].allowed_groups == ("org:staff",)
    assert image.choices["scipy"].slug == "scipy"
    assert image.unlisted_choice.allowed_groups == ("org:staff",)
    gke = catalog.profile("gke-t4")
    assert gke is not None and list(gke.profile_options) == ["image"]
    assert gke.allowed_groups == ("org:ml",)
    assert catalog.teams["gpu-users"].quota.gpus["tesla-t4"] == 4


def test_a_list_without_gpus_loads_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values("- display_name: Small\n  kubespawner_override: {cpu_limit: 1}\n"))
    code, out, err = run(capsys, str(path))
    assert (code, err) == (0, ""), "nothing to answer: exit 0"
    assert ": TODO  #" not in out
    assert parse_catalog(out).profiles[0].slug == "small"
    assert run(capsys, str(tmp_path / "missing.yaml"))[:2] == (2, "")


@pytest.mark.parametrize("path", LISTS, ids=[p.stem for p in LISTS])
def test_existing_profile_lists_migrate(path: Path) -> None:
    migration = migrate_values(values(path.read_text()), str(path))
    catalog: Catalog = parse_catalog(answered(migration.text))
    assert catalog.profiles


BAD: list[tuple[str, str, str]] = [
    ("not yaml", "singleuser: [\n", ":2:1: YAML syntax error"),
    ("a list", "- a\n", ":1:1: expected a mapping with `singleuser:`"),
    ("no singleuser", "hub: {}\n", ":1:1: there is no singleuser.profileList"),
    ("no profileList", "hub: {}\nsingleuser:\n  image: {}\n", ":3:3: singleuser: there is no"),
    ("not a list", "singleuser:\n  profileList: {a: 1}\n", ":2:16: singleuser.profileList: must"),
    ("empty", "singleuser:\n  profileList: []\n", ":2:16: singleuser.profileList: singleuser"),
    ("no name", values("- slug: x\n"), ":3:7: singleuser.profileList[0]: each profile must"),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_writes_nothing(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    code, out, err = run(capsys, str(path))
    assert (code, out) == (2, "")
    assert f"{path}{expected}".replace(": must", ": singleuser.profileList must") in err


QUESTIONS: list[tuple[str, str, str]] = [
    (
        "two MIG slices",
        "- display_name: M\n  kubespawner_override:\n"
        "    extra_resource_limits: {nvidia.com/mig-1g.10gb: 2}\n",
        "asks for 2 MIG slices",
    ),
    (
        "two resources",
        "- display_name: M\n  kubespawner_override:\n"
        "    extra_resource_limits: {nvidia.com/gpu: 1, nvidia.com/mig-1g.10gb: 1}\n",
        "asks for several GPU resources",
    ),
    (
        "a count that is not a number",
        "- display_name: M\n  kubespawner_override:\n"
        "    extra_resource_limits: {nvidia.com/gpu: lots}\n",
        "not a whole number of GPUs",
    ),
    (
        "two options choose GPUs",
        "- display_name: M\n  profile_options:\n"
        + "".join(
            f"    {o}:\n      display_name: {o}\n      choices:\n"
            f"        one: {{display_name: one, kubespawner_override: "
            f"{{extra_resource_limits: {{nvidia.com/gpu: 1}}}}}}\n"
            f"        two: {{display_name: two, kubespawner_override: "
            f"{{extra_resource_limits: {{nvidia.com/gpu: 2}}}}}}\n"
            for o in ("a", "b")
        ),
        "the options a, b each change its GPUs",
    ),
]


@pytest.mark.parametrize(
    ("text", "asks"), [q[1:] for q in QUESTIONS], ids=[q[0] for q in QUESTIONS]
)
def test_what_it_cannot_tell_it_asks(text: str, asks: str) -> None:
    migration = migrate_values(values(text), "values.yaml")
    assert any(asks in q.message and q.line == 3 for q in migration.questions), migration
    assert "gpu: TODO  # TODO(gpuhub migrate)" in migration.text
    with pytest.raises(CatalogError):
        parse_catalog(migration.text)


def test_no_gpus_and_odd_slugs() -> None:
    text = values(
        "- display_name: Zero\n  slug: Big_One\n  kubespawner_override:\n"
        "    extra_resource_limits: {nvidia.com/gpu: '0', memory: 1G}\n"
        "- display_name: Again\n  slug: big-one\n"
    )
    migration = migrate_values(text, "values.yaml", override_keys={"extra_resource_limits"})
    catalog = parse_catalog(migration.text, override_keys={"extra_resource_limits"})
    assert [p.slug for p in catalog.profiles] == ["big-one", "big-one-2"]
    assert catalog.profiles[0].gpu is None
    notes = [n.message for n in migration.notes]
    assert any("slug 'Big_One' is not a valid name" in n for n in notes)
    assert any("slug 'big-one' was taken" in n for n in notes)


@pytest.mark.parametrize(
    ("resource", "selector", "expected"),
    [
        (
            "nvidia.com/gpu",
            {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            ("h100-80gb-hbm3", "NVIDIA H100 80GB HBM3", None),
        ),
        (
            "nvidia.com/gpu",
            {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
            ("tesla-t4", "NVIDIA Tesla T4", None),
        ),
        (
            "nvidia.com/gpu",
            {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
            ("p4d-24xlarge", "NVIDIA A100 40GB (p4d.24xlarge)", None),
        ),
        (
            "nvidia.com/gpu",
            {"node.kubernetes.io/instance-type": "x9.huge"},
            ("x9-huge", "GPU (x9.huge)", "the GPU of x9.huge nodes is not known to gpuhub migrate"),
        ),
        ("nvidia.com/mig-3g.40gb", {}, ("mig-3g-40gb", "MIG 3g.40gb slice", None)),
        ("nvidia.com/gpu", {"hub.jupyter.org/node-purpose": "user"}, None),
    ],
)
def test_gpu_type_names(
    resource: str, selector: dict[str, str], expected: tuple[str, str, str | None] | None
) -> None:
    assert gpu_type_name(resource, selector) == expected
