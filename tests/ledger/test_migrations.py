"""Migrations from an empty database and from the previous schema; refusing an old schema."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, text

from spawner_ext.ledger.engine import (
    SchemaError,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from spawner_ext.ledger.store import Ledger


def test_from_empty(db_url: str) -> None:
    with pytest.raises(SchemaError, match=r"has no ledger schema.*Run: gpuhub db upgrade --db-url"):
        Ledger.open(db_url)
    upgrade(db_url)
    engine = make_engine(db_url)
    assert current_revision(engine) == head_revision()
    assert {"usage_sessions", "team_locks"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    Ledger.open(db_url).engine.dispose()


def test_from_previous_schema_keeps_data(db_url: str) -> None:
    upgrade(db_url, "0001")
    with pytest.raises(SchemaError, match="has ledger schema 0001; this gpuhub needs"):
        Ledger.open(db_url)
    engine = make_engine(db_url)
    started = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO usage_sessions ("user", team, server_name, profile, gpu_type, '
                "gpu_count, price_per_hour, currency, requested_at, started_at, catalog_version) "
                "VALUES ('ada', 'vision', '', 'h100-single', 'h100-80gb', 1, 4.1, 'USD', "
                ":t, :t, 'v')"
            ),
            {"t": started.replace(tzinfo=None) if engine.dialect.name == "sqlite" else started},
        )
    engine.dispose()
    upgrade(db_url)
    ledger = Ledger.open(db_url)
    (row,) = ledger.open_sessions()
    assert row.user == "ada"
    assert row.last_seen_at == started, "open sessions were last seen when they started"
    assert row.uid == str(row.id), "a session from before keys keeps its id as its key"
    assert row.install is None
    ledger.engine.dispose()


def test_from_0002_backfills_monthly_totals(db_url: str) -> None:
    upgrade(db_url, "0002")
    engine = make_engine(db_url)
    naive = engine.dialect.name == "sqlite"

    def t(value: datetime) -> datetime:
        return value.replace(tzinfo=None) if naive else value

    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO usage_sessions ("user", team, server_name, profile, gpu_type, '
                "gpu_count, price_per_hour, currency, requested_at, started_at, ended_at, "
                "end_reason, gpu_seconds, cost, catalog_version) VALUES ('ada', 'vision', '', "
                "'h100-quad', 'h100-80gb', 4, 16.4, 'USD', :s, :s, :e, 'stopped', 0, 0, 'v')"
            ),
            {
                "s": t(datetime(2026, 10, 31, 23, 0, tzinfo=UTC)),
                "e": t(datetime(2026, 11, 1, 2, 0, tzinfo=UTC)),
            },
        )
    engine.dispose()
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT team, month, gpu_seconds FROM team_month_usage ORDER BY month")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("vision", "2026-10", 4 * 3600),
        ("vision", "2026-11", 4 * 7200),
    ]
