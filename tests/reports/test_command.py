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


def test_hints_print_the_suggestion_and_the_saving(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """bob's 2 H100s ('h100-duo', a profile since removed) for 2 hours at 8.20 on 3 Nov,
    measured all along: one GPU in use at most, busy all the time, at most 30 GiB. Another GPU
    type is out (not light use), so one H100 (4.10) would have done: (8.20 - 4.10) x 2 h saved.
    broken once: the GPUs in use taken as all the session's GPUs (2): no hint."""
    from sqlalchemy.orm import Session

    from spawner_ext.ledger.models import UTILIZATION_COLUMNS, SessionGPUUse

    engine = make_engine(db_url)
    day = datetime(2026, 11, 3, 9, tzinfo=UTC)
    bob = add_session(
        engine, "bob", day, day.replace(hour=11), profile="h100-duo", gpus=2, price="8.20"
    )
    with Session(engine) as db, db.begin():
        db.add(
            SessionGPUUse(
                session_id=bob,
                day=datetime(2026, 11, 3, tzinfo=UTC).date(),
                reports=720,
                observed_seconds=7200,
                busy_seconds=7200,
                busy_gpu_seconds=7200,
                utilization_unknown=False,
                peak_memory_mib=30 * 1024,
                memory_total_mib=80 * 1024,
                peak_gpus_in_use=1,
                **{**dict.fromkeys(UTILIZATION_COLUMNS, 0), UTILIZATION_COLUMNS[-1]: 7200},
            )
        )
    engine.dispose()
    catalog = str(ROOT / "hub_config" / "catalog.yaml")
    base = ("--db-url", db_url, "--team", "vision", "--hints", "--config", catalog, *PERIOD)
    code, text, _ = run(capsys, *base)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:9] == [
        "team",
        "user",
        "profile",
        "sessions",
        "gpu_hours",
        "busy_percent",
        "suggested_profile",
        "possible_saving",
        "currency",
    ]
    assert lines[2].split()[:9] == [
        "vision", "bob", "h100-duo", "1", "4.0", "100%", "h100-single", "8.20", "USD"
    ]  # fmt: skip
    assert "on 1 of its 2 GPUs" in lines[2]
    _, as_json, _ = run(capsys, *base, "--format", "json")
    _, as_csv, _ = run(capsys, *base, "--format", "csv")
    rows = json.loads(as_json)["rows"]
    parsed = list(csv.DictReader(io.StringIO(as_csv)))
    found = [(r["user"], r["profile"], r["possible_saving"]) for r in rows]
    assert found == [("bob", "h100-duo", 8.2), ("ada", "h100-single", 0.0), ("lin", "a100", 0.0)]
    assert [(r["user"], float(r["possible_saving"])) for r in parsed] == [
        (user, saving) for user, _, saving in found
    ]
    assert rows[1]["hint"] == "not measured: no report from the notebook extension"
    code, _, err = run(capsys, "--db-url", db_url, "--hints")
    assert code == 2 and "--hints needs --config" in err
