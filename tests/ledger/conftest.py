"""Ledger fixtures: a fresh, migrated database per test, on SQLite (always) and PostgreSQL
(when the test setup has started a server; see tests/postgres.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spawner_ext.catalog import Catalog, load_catalog
from spawner_ext.ledger.engine import upgrade
from spawner_ext.ledger.store import Ledger

ROOT = Path(__file__).parents[2]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def race(
    db_url: str,
    clock: FakeClock,
    jobs: Sequence[Callable[[Ledger], str]],
    install: str | None,
    refused: Callable[[Exception], str | None],
) -> list[str]:
    """Run `jobs` at once, each in a thread with a ledger of its own (its own engine: another hub
    or service process), released together by a barrier. Each result is the job's answer, or
    what `refused` makes of the exception it raised (None: raise it)."""
    barrier = threading.Barrier(len(jobs))
    results: list[str] = [""] * len(jobs)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        own = Ledger.open(db_url, clock=clock, install=install)
        try:
            barrier.wait()
            try:
                results[n] = jobs[n](own)
            except Exception as exc:
                said = refused(exc)
                if said is None:
                    raise
                results[n] = said
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            own.engine.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(ROOT / "hub_config" / "catalog.yaml")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        from tests.postgres import fresh_database

        yield from fresh_database(request)


@pytest.fixture
def ledger(db_url: str, clock: FakeClock) -> Iterator[Ledger]:
    upgrade(db_url)
    opened = Ledger.open(db_url, clock=clock)
    yield opened
    opened.engine.dispose()
