"""Reconciliation decisions, and how pods and local processes are observed."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spawner_ext.kube.observer import running_pods
from spawner_ext.ledger.models import EndReason
from spawner_ext.ledger.reconcile import Close, OpenSession, RunningServer, reconcile
from spawner_ext.local.observer import process_start_time, running_from_states

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def server(session_id: int | None, started: datetime = T0) -> RunningServer:
    return RunningServer(
        user="ada",
        server_name="",
        team="vision",
        profile="h100-single",
        gpu_type="h100-80gb",
        gpu_count=1,
        price_per_hour=Decimal("4.1"),
        currency="USD",
        session_id=session_id,
        started_at=started,
        runtime_ref="gpuhub-vision/jupyter-ada",
    )


def test_running_sessions_are_seen_and_lost_ones_closed_at_last_seen() -> None:
    sessions = [
        OpenSession(1, T0, T0, T0 + timedelta(minutes=9)),
        OpenSession(2, T0, T0, T0 + timedelta(minutes=7)),
        OpenSession(3, T0 + timedelta(minutes=5), None, None),  # admitted, pod still pending
        OpenSession(4, T0 - timedelta(hours=1), None, None),  # hub died mid-spawn
    ]
    actions = reconcile(sessions, [server(1)], {}, T0 + timedelta(minutes=10))
    assert actions.seen == (1,)
    assert actions.close == (
        Close(2, T0 + timedelta(minutes=7), EndReason.NODE_LOST),
        Close(4, T0 - timedelta(hours=1), EndReason.FAILED),
    )
    assert actions.adopt == ()


def test_adoption_never_bills_twice() -> None:
    closed_at = T0 + timedelta(minutes=30)
    actions = reconcile(
        [], [server(7), server(None), server(8)], {7: closed_at}, T0, stopping=frozenset({8})
    )
    starts = {a.server.session_id: a.start for a in actions.adopt}
    assert starts == {7: closed_at, None: T0}, "session 8 is being stopped by the hub"


def test_a_server_unseen_for_less_than_a_tick_is_not_closed() -> None:
    # Just started: the observer may not see it yet (its state is not committed).
    sessions = [OpenSession(1, T0, T0, T0)]
    actions = reconcile(sessions, [], {}, T0 + timedelta(seconds=5), tick=timedelta(seconds=30))
    assert actions.close == ()
    later = reconcile(sessions, [], {}, T0 + timedelta(seconds=30), tick=timedelta(seconds=30))
    assert later.close == (Close(1, T0, EndReason.NODE_LOST),)


def test_process_start_time_of_this_process() -> None:
    started = process_start_time(os.getpid())
    assert started is not None
    assert started <= datetime.now(UTC)
    assert process_start_time(2**22 + 12345) is None


def test_reconciliation_is_idempotent() -> None:
    sessions = [OpenSession(1, T0, T0, T0)]
    once = reconcile(sessions, [server(1)], {}, T0)
    assert once == reconcile(sessions, [server(1)], {}, T0)


def test_pods_observed_from_manifests() -> None:
    pod = {
        "metadata": {
            "name": "jupyter-ada",
            "namespace": "gpuhub-vision",
            "labels": {
                "gpuhub.io/session": "12",
                "gpuhub.io/team": "vision",
                "gpuhub.io/profile": "h100-quad",
                "gpuhub.io/gpu-type": "h100-80gb",
                "gpuhub.io/gpu-count": "4",
            },
            "annotations": {
                "gpuhub.io/user": "ada",
                "gpuhub.io/price-per-hour": "16.4",
                "hub.jupyter.org/servername": "train",
            },
        },
        "status": {"phase": "Running", "startTime": "2026-11-24T12:00:00Z"},
    }
    pending = {"metadata": {"labels": {}}, "status": {"phase": "Pending"}}
    deleting = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "x"}}
    (found,) = running_pods([pod, pending, deleting])
    assert found.session_id == 12
    assert (found.user, found.server_name, found.gpu_count) == ("ada", "train", 4)
    assert found.price_per_hour == Decimal("16.4")
    assert found.started_at == T0
    assert found.runtime_ref == "gpuhub-vision/jupyter-ada"


def test_local_processes_observed_from_spawner_states() -> None:
    states = [
        (
            "ada",
            "",
            {
                "pid": 10,
                "gpuhub_session": 3,
                "gpuhub": {
                    "team": "vision",
                    "profile": "l4-single",
                    "gpu_type": "l4",
                    "gpu_count": 1,
                    "price_per_hour": "0.7",
                },
            },
        ),
        ("bob", "", {"pid": 11, "gpuhub": {"profile": "cpu-small", "gpu_count": 0}}),
        ("cy", "", {"pid": 0}),
    ]
    found = running_from_states(states, alive=lambda pid: pid == 10, started=lambda pid: T0)
    assert [(s.user, s.session_id, s.gpu_type, s.runtime_ref) for s in found] == [
        ("ada", 3, "l4", "local:10")
    ]


def test_sessions_that_started_after_the_observation_are_not_judged() -> None:
    observed = T0 + timedelta(minutes=10)
    late = OpenSession(2, observed, observed + timedelta(seconds=1), None)
    actions = reconcile([late], [], {}, T0 + timedelta(hours=1), observed_at=observed)
    assert actions.close == ()
