"""The billing database fails over under a real hub: its ledger on a PostgreSQL primary with a
synchronous standby (tests/pg_replica.py), reached through a multi-host URL; the primary killed
during a small spawn storm (GPU and CPU servers through the REST API, benchmarks/failover.py);
the standby promoted 5 s later by the test, standing in for the operator or Patroni. Neither the
hub nor its service is restarted. Asserted (correctness, not speed; the times are the
benchmark's):

- no admitted session is lost: every spawn the hub answered as admitted has its session in the
  promoted database (the synchronous standby confirmed each commit);
- GPU spawns meanwhile are refused with "billing is unavailable", and GPU spawns are admitted
  again after the promotion; the gpuhub service ticks again;
- the servers running when the primary went run on untouched;
- every GPU server is billed once, for its life as a /proc watcher saw it (tests/faultdriver.py).

Broken once (2026-12-06): the hub given only the primary's host instead of the multi-host URL
(`url` in benchmarks/failover.run): "no GPU spawn was admitted after the promotion" (the hub
kept connecting to the dead primary). With pool_pre_ping off (spawner_ext/ledger/engine.py) the
test still passed: a connection found dead invalidates the whole pool, and admission retries once
on an invalidated connection (spawners/mixin.py `_admit`), so pre-ping only spares that retry."""

from __future__ import annotations

import threading
from contextlib import suppress
from pathlib import Path

import pytest

from benchmarks.failover import BILLING_UNAVAILABLE, report, run
from spawner_ext.ledger.engine import CONNECT_TIMEOUT_SECONDS, server_options
from tests.pg_replica import start_pair


def test_server_engines_test_pooled_connections_and_time_out_connecting() -> None:
    assert server_options("postgresql+psycopg://u@db/x") == {
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    }
    failover = "postgresql+psycopg://u@/x?host=a:5432&host=b:5432&connect_timeout=2"
    assert server_options(failover) == {"pool_pre_ping": True}, "the URL's own timeout wins"


@pytest.mark.postgres
def test_a_promoted_standby_commits_without_waiting_only_once_its_standby_name_is_reset() -> None:
    """Why promotion resets synchronous_standby_names (copied from the primary by
    pg_basebackup): until then every commit waits for a standby that does not exist. The wait
    is cut here by cancelling the statement, which PostgreSQL reports as a warning (the
    transaction stays committed on the new primary alone).

    Broken once (2026-12-06): `reset_synchronous_standby_names` doing nothing: "Left contains one
    more item: 'canceling wait for synchronous replication due to user request'"."""
    import psycopg

    pairs = start_pair()
    pair = next(pairs)
    try:
        pair.kill_primary()
        pair.standby.pg_ctl("-w", "promote")
        conninfo = f"host={pair.standby.host} port={pair.standby.port} user={pair.standby.user}"
        with psycopg.connect(f"{conninfo} dbname=postgres", autocommit=True) as conn:
            warnings: list[str] = []
            conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary))
            cancel = threading.Timer(1.0, conn.cancel_safe)  # as a client that gives up
            cancel.start()
            conn.execute("CREATE TABLE waits (i int)")
            cancel.join()
            assert any("synchronous replication" in w for w in warnings), warnings
            pair.reset_synchronous_standby_names()
            warnings.clear()
            guard = threading.Timer(5.0, conn.cancel_safe)  # a wait fails the test, not hangs it
            guard.start()
            conn.execute("CREATE TABLE goes_on (i int)")
            guard.cancel()
            assert warnings == []
    finally:
        with suppress(StopIteration):
            next(pairs)


@pytest.mark.integration
@pytest.mark.postgres
def test_a_killed_primary_and_a_promoted_standby_lose_no_admitted_session(
    tmp_path: Path,
) -> None:
    figures = run(
        tmp_path,
        gpu_users=3,
        cpu_users=1,
        loss="kill",
        lose_after=6,
        promote_after=5,
        run_after=0,
    )
    print(report(figures))
    assert figures.admitted, "spawns were admitted"
    assert figures.lost == set(), f"admitted sessions lost: {figures.lost}"
    assert figures.admitted_without_key == 0
    gpu_probe = [a for a in figures.attempts if a.user == "probe-gpu"]  # from the loss on
    assert BILLING_UNAVAILABLE in gpu_probe[0].message.lower(), gpu_probe[0]
    assert gpu_probe[-1].admitted, "the same person's GPU spawn is admitted in the end"
    (cpu_probe,) = [a for a in figures.attempts if a.user == "probe-cpu"]
    assert cpu_probe.ready, "CPU spawns go on: JupyterHub's database is not the ledger"
    refused = [
        a
        for a in figures.attempts
        if a.kind == "gpu" and figures.lost_at <= a.asked and not a.admitted
    ]
    assert all(BILLING_UNAVAILABLE in a.message.lower() for a in refused), [
        a.outcome for a in refused
    ]
    again = [a for a in figures.attempts if a.kind == "gpu" and a.asked > figures.promoted_at]
    assert any(a.admitted for a in again), "no GPU spawn was admitted after the promotion"
    assert figures.service_recovered_after is not None, "the service ticks again"
    assert figures.pinned_untouched == {"pinned-gpu": True, "pinned-cpu": True}
    assert figures.billing is not None, figures.billing_problem
