"""`gpuhub report` on a real ledger file: the terminal table, CSV and JSON carry the same rows,
and wrong arguments exit 2 with the reason."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spawner_ext.cli import main
from spawner_ext.ledger.engine import make_engine, upgrade
from tests.reports.conftest import add_session

ROOT = Path(__file__).parents[2]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    day = datetime(2026, 11, 3, 9, tzinfo=UTC)
    add_session(engine, "ada", day, day.replace(hour=11), gpus=2, price="8.20")
    add_session(engine, "lin", day, day.replace(hour=10), profile="a100", gpu_type="a100-40gb")
    add_session(engine, "grace", day, day.replace(hour=12), team="nlp")
    engine.dispose()
    return url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


PERIOD = ("--since", "2026-11-01", "--until", "2026-12-01")


def test_table_csv_and_json_have_the_same_rows(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--db-url", db_url, "--team", "vision", "--by", "user,gpu-type", *PERIOD)
    code, text, _ = run(capsys, *base)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == [
        "team",
        "user",
        "gpu_type",
        "gpu_hours",
        "cost",
        "currency",
        "idle_gpu_hours",
        "sessions",
        "busy_gpu_hours",
        "measured_gpu_hours",
        "utilization",
    ]
    unmeasured = ["-", "0.0", "-"]  # busy, measured, utilisation: no report measured any
    ada = ["vision", "ada", "h100-80gb", "4.0", "16.40", "USD", "-", "1", *unmeasured]
    lin = ["vision", "lin", "a100-40gb", "1.0", "4.10", "USD", "-", "1", *unmeasured]
    assert lines[2].split() == ada
    assert lines[3].split() == lin
    _, as_csv, _ = run(capsys, *base, "--format", "csv")
    _, as_json, _ = run(capsys, *base, "--format", "json")
    rows = json.loads(as_json)["rows"]
    parsed = list(csv.DictReader(io.StringIO(as_csv)))
    assert [r["user"] for r in parsed] == [r["user"] for r in rows] == ["ada", "lin"]
    assert [float(r["gpu_hours"]) for r in parsed] == [r["gpu_hours"] for r in rows] == [4.0, 1.0]
    assert parsed[0]["idle_gpu_hours"] == "" and rows[0]["idle_gpu_hours"] is None


def test_every_team_without_team(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(capsys, "--db-url", db_url, *PERIOD, "--format", "json")
    assert code == 0
    assert [(r["team"], r["gpu_hours"]) for r in json.loads(text)["rows"]] == [
        ("nlp", 3.0),
        ("vision", 5.0),
    ]


def test_an_empty_period_says_so(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(
        capsys, "--db-url", db_url, "--since", "2026-10-01", "--until", "2026-10-02"
    )
    assert code == 0 and "(no usage in this period)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--team", "robotics"), "unknown team 'robotics'; teams: nlp, vision"),
        (("--by", "week"), "by='week' is not a grouping"),
        (("--since", "2026-12-01", "--until", "2026-11-01"), "must be before until"),
        (
            ("--team", "robotics", "--config", str(ROOT / "hub_config" / "catalog.yaml")),
            "teams: nlp, teaching, vision",
        ),
    ],
)
def test_wrong_arguments_exit_2_with_the_reason(
    db_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "--db-url", db_url, *args)
    assert (code, out) == (2, "")
    assert err.startswith("gpuhub report: ") and message in err


def test_a_database_without_the_schema_names_the_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--db-url", f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert code == 2 and "gpuhub db upgrade" in err
