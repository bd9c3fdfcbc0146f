"""The one contract of what crosses process boundaries: every reader reads back what its writer
wrote, and reads anything malformed as unknown instead of failing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spawner_ext import wire
from spawner_ext.wire import ServerState, ServerSummary

keys = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
sessions = st.one_of(
    st.none(),
    st.uuids().map(lambda u: u.hex),  # as the ledger makes them
    st.integers(1, 2**31).map(str),  # written before session keys: an integer id
)


@st.composite
def summaries(draw: st.DrawFn) -> ServerSummary:
    count = draw(st.integers(0, 16))
    return ServerSummary(
        team=draw(st.one_of(st.none(), keys)),
        profile=draw(keys),
        gpu_type=draw(keys) if count else None,
        gpu_count=count,
        price_per_hour=draw(st.decimals(0, 10_000, places=6, allow_nan=False)),
        currency=draw(st.sampled_from(["USD", "EUR", "CHF"])),
        catalog_version=draw(st.from_regex(r"[0-9a-f]{12}", fullmatch=True)),
    )


@given(summaries(), sessions, st.lists(keys, max_size=4))
def test_spawner_state_round_trips(
    summary: ServerSummary, session: str | None, devices: list[str]
) -> None:
    state = ServerState(summary, session, tuple(devices), runtime_ref="local:42")
    assert wire.read_state(wire.write_state(state)) == state


@given(summaries(), sessions, keys, st.text(max_size=20))
def test_pod_labels_and_annotations_round_trip(
    summary: ServerSummary, session: str | None, user: str, server_name: str
) -> None:
    record = wire.read_pod(
        wire.pod_labels(summary, session, "prod"), wire.pod_annotations(summary, user, server_name)
    )
    assert record == wire.PodRecord(summary, session, user, server_name, "prod")


@given(summaries(), sessions, st.lists(keys, max_size=4))
def test_server_environment_round_trips(
    summary: ServerSummary, session: str | None, devices: list[str]
) -> None:
    env = wire.server_env(summary, "ada/train", session, tuple(devices))
    assert wire.read_server_env(env) == wire.ServerEnv(
        "ada/train", session, tuple(devices), summary
    )


@pytest.mark.parametrize(
    "state",
    [
        None,
        {},
        {"gpuhub": "nonsense", "gpuhub_session": "x y", "gpuhub_devices": "GPU-1"},
        {"gpuhub": {"profile": "p", "gpu_count": -1}},
        {"gpuhub": {"profile": "p", "gpu_count": 1, "gpu_type": None}},  # GPUs of no type
        {"gpuhub": {"profile": "p", "gpu_count": True}},
        {"gpuhub": {"profile": "p", "gpu_count": 0, "price_per_hour": "NaN"}},
        {"gpuhub_session": 0},
    ],
)
def test_malformed_state_reads_as_unknown(state: dict[str, Any] | None) -> None:
    read = wire.read_state(state)
    assert read.summary is None and read.session is None


def test_an_older_state_without_currency_or_version_still_reads() -> None:
    read = wire.read_state({"gpuhub": {"profile": "cpu", "gpu_count": 0}, "gpuhub_session": 7})
    assert read.summary == ServerSummary(None, "cpu", None, 0, Decimal(0), "USD", "")
    assert read.session == "7", "an integer session id from before session keys"


def test_an_older_pods_integer_session_label_still_reads() -> None:
    labels = {"gpuhub.io/profile": "cpu", "gpuhub.io/gpu-count": "0", "gpuhub.io/session": "42"}
    assert wire.read_pod(labels, {}).session == "42"
    assert wire.read_pod({**labels, "gpuhub.io/session": "0"}, {}).session is None


def test_a_pod_named_by_kubespawner_alone_reads_its_user() -> None:
    labels = {"gpuhub.io/profile": "cpu", "gpuhub.io/gpu-count": "0", "gpuhub.io/gpu-type": "none"}
    record = wire.read_pod(labels, {"hub.jupyter.org/username": "ada"})
    assert record.user == "ada" and record.session is None
    assert record.summary is not None and record.summary.team is None


def test_no_other_module_spells_a_wire_key() -> None:
    from pathlib import Path

    spelled = [f'"{wire.PREFIX}', f'"{wire.STATE_SESSION}"', f'"{wire.STATE_DEVICES}"',
               f'"{wire.STATE_RUNTIME_REF}"', f'"{wire.ENV_SERVER}"',
               f'"{wire.ENV_SUMMARY}"']  # fmt: skip
    package = Path(wire.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "wire.py" and any(key in path.read_text() for key in spelled)
    ]
    assert offenders == []
