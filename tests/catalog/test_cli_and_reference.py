"""The `gpuhub` CLI as an admin runs it, the shipped example, and the generated reference page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from spawner_ext.catalog import load_catalog
from spawner_ext.catalog.reference import json_schema, markdown

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "hub_config" / "catalog.yaml"


def gpuhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spawner_ext.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_example_catalog_is_realistic() -> None:
    catalog = load_catalog(EXAMPLE)
    assert len(catalog.gpu_types) >= 3
    assert any(t.is_mig for t in catalog.gpu_types.values())
    assert len(catalog.teams) == 3
    assert any(p.gpu is None for p in catalog.profiles)
    assert any(p.gpu is not None for p in catalog.profiles)
    assert any(p.profile_options for p in catalog.profiles)


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    ok = gpuhub("validate", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "ok (4 GPU types, 3 teams, 6 profiles)" in ok.stdout

    text = EXAMPLE.read_text()
    line = text[: text.index("price_per_hour: 4.10")].count("\n") + 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("price_per_hour: 4.10", "price_per_hour: -4.10"))
    result = gpuhub("validate", str(EXAMPLE), str(bad))
    assert result.returncode == 1
    expected = f"{bad}:{line}:21: gpu_types.h100-80gb.price_per_hour: a price cannot be negative"
    assert expected in result.stderr


def test_validate_usage_errors() -> None:
    assert gpuhub("validate").returncode == 2
    assert gpuhub().returncode == 2
    missing = gpuhub("validate", "/nonexistent/catalog.yaml")
    assert missing.returncode == 1
    assert "/nonexistent/catalog.yaml:1:1: cannot read the file" in missing.stderr


def test_schema_command_prints_json_schema_that_accepts_the_example() -> None:
    result = gpuhub("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema == json_schema()
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"profiles": [{"display_name": "x", "gpu": {"typ": "a"}}]}, schema)


def test_reference_page_is_generated_from_the_schema() -> None:
    committed = (ROOT / "docs" / "reference" / "catalog.md").read_text()
    assert committed == markdown(), (
        "regenerate: gpuhub schema --markdown > docs/reference/catalog.md"
    )
    assert gpuhub("schema", "--markdown").stdout == committed


def test_db_upgrade_creates_and_reports_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    first = gpuhub("db", "upgrade", "--db-url", url)
    assert first.returncode == 0, first.stderr
    assert f"{url}: billing schema at" in first.stdout
    again = gpuhub("db", "upgrade", "--db-url", url)
    assert again.returncode == 0
    bad = gpuhub("db", "upgrade", "--db-url", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    assert bad.returncode == 1
    assert "gpuhub db upgrade: cannot upgrade" in bad.stderr
    assert gpuhub("db").returncode == 2


def test_validate_warns_about_gpus_asked_for_in_overrides(tmp_path: Path) -> None:
    z2jh = (Path(__file__).parent / "z2jh" / "hub-with-groups.yaml").read_text()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("profiles:\n" + "\n".join("  " + line for line in z2jh.splitlines()) + "\n")
    text = catalog.read_text()
    line = text[: text.index("nvidia.com/gpu:")].count("\n") + 1
    result = gpuhub("validate", str(catalog))
    assert result.returncode == 0, "an existing z2jh list still loads"
    assert (
        f"warning: {catalog}:{line}:9: profiles[1].kubespawner_override.extra_resource_limits."
        "nvidia.com/gpu: nvidia.com/gpu here is removed from the pod" in result.stderr
    )
    assert "warning" not in gpuhub("validate", str(EXAMPLE)).stderr
