"""Every kind of catalog error gets FILE:LINE:COL: path: message, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from spawner_ext.catalog import CatalogError, load_catalog, parse_catalog

BASE = """\
gpu_types:
  h100:
    display_name: H100
    price_per_hour: 4
    gpus_per_node: 8
  mig:
    display_name: MIG 1g.10gb
    resource: nvidia.com/mig-1g.10gb
    price_per_hour: 0.5
teams:
  vision:
    groups: [vision]
    quota: {gpus: {h100: 4}, gpus_per_user: 2, monthly_gpu_hours: 100}
profiles:
  - display_name: CPU
    slug: cpu
  - display_name: One H100
    slug: h100-one
    gpu: {type: h100, count: 1}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "cat.yaml")
    return [str(p) for p in info.value.problems]


def test_base_is_valid() -> None:
    catalog = parse_catalog(BASE, "cat.yaml")
    assert [p.slug for p in catalog.profiles] == ["cpu", "h100-one"]


CASES = [
    # (id, replace this, with this, expected problem line)
    (
        "typo in a key suggests the closest key",
        "    display_name: H100\n",
        "    dispaly_name: H100\n",
        "cat.yaml:3:5: gpu_types.h100.dispaly_name: unknown key 'dispaly_name'; "
        "did you mean 'display_name'?",
    ),
    (
        "typo in a top-level key",
        "teams:\n",
        "teamz:\n",
        "cat.yaml:10:1: teamz: unknown key 'teamz'; did you mean 'teams'?",
    ),
    (
        "unknown GPU type in a profile",
        "gpu: {type: h100, count: 1}",
        "gpu: {type: h10, count: 1}",
        "cat.yaml:19:17: profiles[1].gpu.type: unknown GPU type 'h10'; did you mean 'h100'?",
    ),
    (
        "unknown GPU type in a quota",
        "gpus: {h100: 4}",
        "gpus: {a100: 4}",
        "cat.yaml:13:20: teams.vision.quota.gpus.a100: unknown GPU type 'a100'",
    ),
    (
        "unknown team in allowed_teams",
        "    slug: cpu\n",
        "    slug: cpu\n    allowed_teams: [visoin]\n",
        "cat.yaml:17:21: profiles[0].allowed_teams[0]: unknown team 'visoin'; "
        "did you mean 'vision'?",
    ),
    (
        "unknown profile in a team's profiles",
        "    groups: [vision]\n",
        "    groups: [vision]\n    profiles: [cpu, h100-on]\n",
        "cat.yaml:13:21: teams.vision.profiles[1]: unknown profile slug 'h100-on'; "
        "did you mean 'h100-one'?",
    ),
    (
        "duplicate slugs",
        "    slug: h100-one\n",
        "    slug: cpu\n",
        "cat.yaml:18:11: profiles[1].slug: duplicate slug 'cpu', also used by profiles[0]",
    ),
    (
        "duplicate slug derived from display_name",
        "  - display_name: CPU\n    slug: cpu\n  - display_name: One H100\n    slug: h100-one\n",
        "  - display_name: One H100\n  - display_name: one h100\n",
        "cat.yaml:16:19: profiles[1].display_name: duplicate slug 'one-h100', also used by "
        "profiles[0]",
    ),
    (
        "negative quota",
        "gpus_per_user: 2",
        "gpus_per_user: -2",
        "cat.yaml:13:45: teams.vision.quota.gpus_per_user: must be at least 0, got -2",
    ),
    (
        "non-numeric quota",
        "gpus: {h100: 4}",
        "gpus: {h100: four}",
        "cat.yaml:13:26: teams.vision.quota.gpus.h100: expected a whole number, got 'four'",
    ),
    (
        "non-numeric budget",
        "monthly_gpu_hours: 100",
        "monthly_gpu_hours: lots",
        "teams.vision.quota.monthly_gpu_hours: expected a number of GPU-hours such as 500, "
        "got 'lots'",
    ),
    (
        "negative budget",
        "monthly_gpu_hours: 100",
        "monthly_gpu_hours: -1",
        "teams.vision.quota.monthly_gpu_hours: GPU-hours cannot be negative, got -1",
    ),
    (
        "negative price",
        "price_per_hour: 4\n",
        "price_per_hour: -4\n",
        "cat.yaml:4:21: gpu_types.h100.price_per_hour: a price cannot be negative, got -4",
    ),
    (
        "non-numeric price",
        "price_per_hour: 4\n",
        "price_per_hour: cheap\n",
        "cat.yaml:4:21: gpu_types.h100.price_per_hour: expected a price such as 2.50, got 'cheap'",
    ),
    (
        "boolean where a count goes",
        "gpus_per_node: 8",
        "gpus_per_node: true",
        "cat.yaml:5:20: gpu_types.h100.gpus_per_node: expected a whole number, got True",
    ),
    (
        "unparsable duration",
        "    slug: cpu\n",
        "    slug: cpu\n    idle_timeout: 5 minutes\n",
        "cat.yaml:17:19: profiles[0].idle_timeout: cannot read '5 minutes' as a duration",
    ),
    (
        "zero duration",
        "    slug: cpu\n",
        "    slug: cpu\n    max_age: 0s\n",
        "cat.yaml:17:14: profiles[0].max_age: a duration must be longer than zero",
    ),
    (
        "gpu.count of 0",
        "gpu: {type: h100, count: 1}",
        "gpu: {type: h100, count: 0}",
        "cat.yaml:19:30: profiles[1].gpu.count: gpu.count must be at least 1 (got 0); "
        "for a CPU-only profile remove `gpu`",
    ),
    (
        "MIG type with several slices",
        "gpu: {type: h100, count: 1}",
        "gpu: {type: mig, count: 2}",
        "cat.yaml:19:29: profiles[1].gpu.count: 'mig' is a MIG slice (nvidia.com/mig-1g.10gb); "
        "a process can use only one MIG device, so gpu.count must be 1 (got 2)",
    ),
    (
        "more GPUs than a node has",
        "gpu: {type: h100, count: 1}",
        "gpu: {type: h100, count: 16}",
        "cat.yaml:19:30: profiles[1].gpu.count: no node has 16 GPUs of type 'h100'",
    ),
    (
        "duplicate key",
        "    slug: cpu\n",
        "    slug: cpu\n    slug: cpu2\n",
        "cat.yaml:17:5: profiles[0].slug: duplicate key 'slug' (first set at line 16)",
    ),
    (
        "bad team name",
        "  vision:\n",
        "  Vision Team:\n",
        "cat.yaml:11:3: teams.Vision Team: 'Vision Team' is not a valid name",
    ),
    (
        "invalid validation_regex",
        "    slug: cpu\n",
        "    slug: cpu\n    profile_options:\n      image:\n        display_name: Image\n"
        "        unlisted_choice: {enabled: true, validation_regex: '[a-'}\n",
        "cat.yaml:20:60: profiles[0].profile_options.image.unlisted_choice.validation_regex: "
        "not a valid regular expression",
    ),
    (
        "option with nothing to choose",
        "    slug: cpu\n",
        "    slug: cpu\n    profile_options:\n      image:\n        display_name: Image\n",
        "cat.yaml:19:9: profiles[0].profile_options.image: an option needs `choices` or an "
        "enabled `unlisted_choice`",
    ),
    (
        "KubeSpawner setting misspelt in an override",
        "    slug: cpu\n",
        "    slug: cpu\n    kubespawner_override: {cpu_limt: 2}\n",
        "cat.yaml:17:28: profiles[0].kubespawner_override.cpu_limt: 'cpu_limt' is not a "
        "KubeSpawner setting, so it would do nothing; did you mean 'cpu_limit'?",
    ),
    (
        "missing required key",
        "    display_name: H100\n",
        "",
        "cat.yaml:3:5: gpu_types.h100.display_name: missing required key 'display_name'",
    ),
    (
        "a list where a mapping goes",
        "    groups: [vision]\n    quota:",
        "    groups: [vision]\n    leads: [ada]\n    quota:",
        "cat.yaml:13:12: teams.vision.leads: expected a mapping of keys to values, got a list",
    ),
    (
        "bad toleration operator",
        "    gpus_per_node: 8\n",
        "    gpus_per_node: 8\n    tolerations: [{key: gpu, operator: Exist}]\n",
        "profiles",  # placeholder replaced below
    ),
]
CASES[-1] = (
    CASES[-1][0],
    CASES[-1][1],
    CASES[-1][2],
    "cat.yaml:6:40: gpu_types.h100.tolerations[0].operator: expected one of 'Exists' or 'Equal', "
    "got 'Exist'",
)


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_problem(old: str, new: str, expected: str) -> None:
    assert old in BASE
    found = problems_of(BASE.replace(old, new, 1))
    assert any(expected in line for line in found), "\n".join(found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "cat.yaml:1:1: the file is empty; a catalog needs at least `profiles:`"),
        ("# only a comment\n", "cat.yaml:1:1: the file is empty"),
        ("- a\n- b\n", "cat.yaml:1:1: the catalog must be a mapping with keys such as gpu_types"),
        ("just text\n", "cat.yaml:1:1: the catalog must be a mapping"),
        ("profiles: [\n  {display_name: a\n", "cat.yaml:3:1: YAML syntax error"),
        ("teams:\n  a: b: c\n", "cat.yaml:2:7: YAML syntax error"),
        ("gpu_types: {}\n", "cat.yaml:1:1: profiles: missing required key 'profiles'"),
        ("profiles: !!python/name:os.system ''\n", "cat.yaml:1:11: profiles: cannot read"),
        ("profiles:\n  cpu: {display_name: CPU}\n", "cat.yaml:2:3: profiles: expected a list"),
    ],
)
def test_document_level_problems(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_every_problem_at_once_in_file_order() -> None:
    text = (
        BASE.replace("price_per_hour: 4\n", "price_per_hour: -4\n")
        .replace("gpus: {h100: 4}", "gpus: {h10: 4}")
        .replace("gpu: {type: h100, count: 1}", "gpu: {type: h100, count: 0}")
    )
    found = problems_of(text)
    assert len(found) == 3
    lines = [int(line.split(":")[1]) for line in found]
    assert lines == sorted(lines) == [4, 13, 19]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"missing\.yaml:1:1: cannot read the file"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"profiles:\n  - display_name: Caf\xe9\n")
    with pytest.raises(CatalogError, match=r"latin1\.yaml:2:22: the file is not UTF-8"):
        load_catalog(bad)


def test_catalog_values_are_frozen() -> None:
    catalog = parse_catalog(
        textwrap.dedent(
            """
            profiles:
              - display_name: CPU
                kubespawner_override: {extra_labels: {a: b}}
            """
        )
    )
    profile = catalog.profiles[0]
    with pytest.raises(TypeError):
        profile.kubespawner_override["extra_labels"]["a"] = "c"  # type: ignore[index]
    with pytest.raises(ValueError, match="frozen"):
        profile.slug = "other"  # type: ignore[misc]
