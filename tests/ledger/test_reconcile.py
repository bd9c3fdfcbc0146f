"""Reconciliation decisions, and how pods and local processes are observed."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from spawner_ext.end_reason import EndReason
from spawner_ext.kube.observer import running_pods
from spawner_ext.ledger.reconcile import (
    Actions,
    Close,
    ClosedSession,
    OpenSession,
    RunningServer,
    Start,
    reconcile,
)
from spawner_ext.local.observer import running_from_states
from spawner_ext.local.processes import process_start_time

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def server(
    session_id: int | None, started: datetime = T0, ref: str = "gpuhub-vision/jupyter-ada"
) -> RunningServer:
    return RunningServer(
        user="ada",
        server_name="",
        team="vision",
        profile="h100-single",
        gpu_type="h100-80gb",
        gpu_count=1,
        price_per_hour=Decimal("4.1"),
        currency="USD",
        session=None if session_id is None else str(session_id),
        started_at=started,
        runtime_ref=ref,
    )


def opened(
    sid: int,
    requested: datetime = T0,
    started: datetime | None = T0,
    seen: datetime | None = T0,
    *,
    user: str = "ada",
    ref: str | None = "gpuhub-vision/jupyter-ada",
) -> OpenSession:
    return OpenSession(sid, str(sid), requested, started, seen, user, "", ref if started else None)


def ended(sid: int, at: datetime, reason: EndReason, user: str = "ada") -> ClosedSession:
    return ClosedSession(str(sid), at, reason, user, "")


def test_running_sessions_are_seen_and_lost_ones_closed_at_last_seen() -> None:
    sessions = [
        opened(1, seen=T0 + timedelta(minutes=9)),
        opened(2, seen=T0 + timedelta(minutes=7), user="bob", ref="ns/jupyter-bob"),
        opened(3, T0 + timedelta(minutes=5), None, None),  # admitted, pod still pending
        opened(4, T0 - timedelta(hours=1), None, None, user="cy"),  # hub died mid-spawn
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
    stopping_since = T0 + timedelta(minutes=59)
    closed = {
        "7": ended(7, closed_at, EndReason.NODE_LOST),
        "8": ended(8, stopping_since, EndReason.STOPPED),
    }
    servers = [server(7), server(None, ref="a"), server(8, ref="b")]
    actions = reconcile([], servers, closed, T0 + timedelta(hours=1))
    starts = {a.server.session: a.start for a in actions.adopt}
    assert starts == {"7": closed_at, None: T0}, "session 8 is being stopped by the hub"


def test_a_server_whose_stop_failed_is_billed_again_from_its_close() -> None:
    stopped_at = T0 + timedelta(minutes=30)
    closed = {"8": ended(8, stopped_at, EndReason.STOPPED)}
    soon = reconcile([], [server(8)], closed, stopped_at + timedelta(minutes=9))
    assert soon.adopt == ()
    later = reconcile([], [server(8)], closed, stopped_at + timedelta(minutes=10))
    assert [a.start for a in later.adopt] == [stopped_at]


def test_an_adopted_server_is_matched_by_its_runtime_reference() -> None:
    """The bug: a server carrying an id the ledger does not know was adopted on every tick."""
    adopted = opened(20, T0, T0, T0 + timedelta(minutes=1))
    actions = reconcile([adopted], [server(5)], {}, T0 + timedelta(minutes=2))
    assert (actions.seen, actions.close, actions.adopt) == ((20,), (), ())


def test_a_reused_id_of_another_users_session_is_not_claimed() -> None:
    """Restored from a backup, the ledger handed id 5 to bob's new server; ada's names it too."""
    bobs = opened(5, user="bob", ref="gpuhub-vision/jupyter-bob")
    actions = reconcile([bobs], [server(5)], {}, T0 + timedelta(minutes=1))
    assert actions.seen == ()
    assert [a.server.user for a in actions.adopt] == ["ada"]
    assert [c.session_id for c in actions.close] == [5]


def test_a_running_server_whose_start_was_never_recorded_starts_billing_at_its_own_start() -> None:
    admitted = opened(3, T0, None, None)
    actions = reconcile(
        [admitted], [server(3, T0 + timedelta(seconds=40))], {}, T0 + timedelta(minutes=1)
    )
    assert actions.seen == (3,)
    assert actions.start == (Start("3", T0 + timedelta(seconds=40), "gpuhub-vision/jupyter-ada"),)


def test_a_server_unseen_for_less_than_a_tick_is_not_closed() -> None:
    # Just started: the observer may not see it yet (its state is not committed).
    sessions = [opened(1)]
    actions = reconcile(sessions, [], {}, T0 + timedelta(seconds=5), tick=timedelta(seconds=30))
    assert actions.close == ()
    later = reconcile(sessions, [], {}, T0 + timedelta(seconds=30), tick=timedelta(seconds=30))
    assert later.close == (Close(1, T0, EndReason.NODE_LOST),)


def test_the_failed_start_grace_is_a_parameter() -> None:
    admitted = [opened(4, T0, None, None)]
    assert (
        reconcile(admitted, [], {}, T0 + timedelta(minutes=3), grace=timedelta(minutes=5)).close
        == ()
    )
    late = reconcile(admitted, [], {}, T0 + timedelta(minutes=5), grace=timedelta(minutes=5))
    assert late.close == (Close(4, T0, EndReason.FAILED),)


def test_process_start_time_of_this_process() -> None:
    started = process_start_time(os.getpid())
    assert started is not None
    assert started <= datetime.now(UTC)
    assert process_start_time(2**22 + 12345) is None


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
    assert found.session == "12"
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
    assert [(s.user, s.session, s.gpu_type, s.runtime_ref) for s in found] == [
        ("ada", "3", "l4", "local:10")
    ]


def test_sessions_that_started_after_the_observation_are_not_judged() -> None:
    observed = T0 + timedelta(minutes=10)
    late = opened(2, observed, observed + timedelta(seconds=1), None)
    actions = reconcile([late], [], {}, T0 + timedelta(hours=1), observed_at=observed)
    assert actions.close == ()


def test_an_adoption_starts_after_every_session_billed_at_its_runtime_reference() -> None:
    """An orphan names session 7, closed by reconciliation at 12:30; it was adopted since, and
    a new spawn of the same server closed that adopted session at 12:45 while the orphan ran on.
    Adopting it again from 12:30 would bill 12:30-12:45 twice."""
    closed = {"7": ended(7, T0 + timedelta(minutes=30), EndReason.RECONCILED)}
    until = {"gpuhub-vision/jupyter-ada": T0 + timedelta(minutes=45)}
    actions = reconcile([], [server(7)], closed, T0 + timedelta(hours=1), billed_until=until)
    assert [a.start for a in actions.adopt] == [T0 + timedelta(minutes=45)]
    unknown = reconcile([], [server(None)], {}, T0 + timedelta(hours=1), billed_until=until)
    assert [a.start for a in unknown.adopt] == [T0 + timedelta(minutes=45)]


# --- idempotence: reconcile fed its own output ---------------------------------------------

PAIRS = [("ada", ""), ("ada", "train"), ("bob", ""), ("cy", "")]
NOW = T0 + timedelta(hours=2)


@dataclass
class Book:
    """The ledger in memory: what reconcile reads, and what applying its actions changes."""

    open: dict[int, OpenSession]
    closed: dict[int, ClosedSession]

    def apply(self, actions: Actions, running: list[RunningServer], now: datetime) -> None:
        for start in actions.start:
            (s,) = (o for o in self.open.values() if o.uid == start.session)
            self.open[s.id] = replace(s, started_at=start.at, runtime_ref=start.runtime_ref)
        for sid in actions.seen:
            self.open[sid] = replace(self.open[sid], last_seen_at=now)
        for close in actions.close:
            s = self.open.pop(close.session_id)
            self.closed[s.id] = ClosedSession(s.uid, close.at, close.reason, s.user, s.server_name)
        for adopt in actions.adopt:
            sid = max([*self.open, *self.closed, 0]) + 1
            srv = adopt.server
            self.open[sid] = OpenSession(
                sid,
                str(sid),
                adopt.start,
                adopt.start,
                now,
                srv.user,
                srv.server_name,
                srv.runtime_ref,
            )

    def tick(self, running: list[RunningServer], now: datetime) -> Actions:
        named = {s.session for s in running}
        closed = {c.uid: c for c in self.closed.values() if c.uid in named}
        actions = reconcile(
            list(self.open.values()), running, closed, now, grace=timedelta(0), tick=timedelta(0)
        )
        self.apply(actions, running, now)
        return actions


def running_server(user: str, name: str, sid: int | None) -> RunningServer:
    return replace(server(sid, ref=f"pod/{user}-{name}"), user=user, server_name=name)


@st.composite
def disagreements(draw: st.DrawFn) -> tuple[Book, list[RunningServer]]:
    """A ledger and a cluster that disagree in every way: unknown, stale, reused and closed ids,
    sessions of servers that are gone, adopted sessions, sessions never marked started."""
    ids = st.one_of(st.none(), st.integers(1, 8))
    pairs = draw(st.lists(st.sampled_from(PAIRS), unique=True, max_size=4))
    running = [running_server(user, name, draw(ids)) for user, name in pairs]
    book = Book({}, {})
    for sid in draw(st.lists(st.integers(1, 8), unique=True, max_size=8)):
        user, name = draw(st.sampled_from(PAIRS))
        ref = draw(st.sampled_from([f"pod/{user}-{name}", "pod/elsewhere", None]))
        started = draw(st.sampled_from([T0, None]))
        if draw(st.booleans()):
            book.open[sid] = OpenSession(sid, str(sid), T0, started, started, user, name, ref)
        else:
            reason = draw(st.sampled_from(list(EndReason)))
            book.closed[sid] = ClosedSession(
                str(sid), T0 + timedelta(minutes=5), reason, user, name
            )
    return book, running


def claims(session: OpenSession, srv: RunningServer) -> bool:
    mine = (session.user, session.server_name) == (srv.user, srv.server_name)
    return (mine and srv.runtime_ref in (session.runtime_ref, None)) or (
        mine and session.uid == srv.session
    )


@settings(max_examples=400, deadline=None)
@given(disagreements())
def test_one_tick_leaves_one_open_session_per_server_and_the_next_changes_nothing(
    case: tuple[Book, list[RunningServer]],
) -> None:
    book, running = case
    book.tick(running, NOW)
    for srv in running:
        mine = [s for s in book.open.values() if claims(s, srv)]
        assert len(mine) == 1, f"{srv.user}/{srv.server_name}: {mine}"
        assert mine[0].started_at is not None
    assert len(book.open) == len(running)
    before = dict(book.open)
    again = book.tick(running, NOW + timedelta(seconds=30))
    assert (again.close, again.adopt, again.start) == ((), (), ())
    assert set(again.seen) == set(before)
    assert {sid: replace(s, last_seen_at=None) for sid, s in book.open.items()} == {
        sid: replace(s, last_seen_at=None) for sid, s in before.items()
    }


def test_a_server_the_hub_still_lists_is_left_for_the_hub_to_close() -> None:
    """The hub is stopping it (its process is gone, the hub's close comes in a moment, with the
    true end and reason): reconciliation closes it only if the hub never does."""
    sessions = [opened(1)]
    now = T0 + timedelta(minutes=1)
    listed = frozenset({("ada", "")})
    kept = reconcile(sessions, [], {}, now, tick=timedelta(seconds=30), listed=listed)
    assert kept.close == ()
    late = T0 + timedelta(minutes=10)
    closed = reconcile(sessions, [], {}, late, tick=timedelta(seconds=30), listed=listed)
    assert closed.close == (Close(1, T0, EndReason.NODE_LOST),)
