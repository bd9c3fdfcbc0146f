"""Live usage from running servers' states, the preview's source when metering is off."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from spawner_ext.hub.usage import usage_from_states
from spawner_ext.policy.admission import Holding
from spawner_ext.wire import ServerState, ServerSummary, write_state


def state(team: str | None, gpu_type: str | None, count: int, **extra: Any) -> dict[str, Any]:
    """A spawner state as the spawners write it (through wire.py)."""
    summary = ServerSummary(
        team=team,
        profile="cpu-small" if count == 0 else f"{gpu_type}-x{count}",
        gpu_type=gpu_type,
        gpu_count=count,
        price_per_hour=Decimal("4.10") * count,
        currency="USD",
    )
    return {**extra, **write_state(ServerState(summary=summary, session="7"))}


STATES = [
    ("ada", state("vision", "h100-80gb", 2, pid=41)),
    ("bob", state("vision", "h100-80gb", 1)),
    ("bob", state("vision", "l4", 1)),
    ("ada", state("nlp", "h100-80gb", 4)),
    ("ada", state("vision", "h100-80gb", 1)),  # a second, named server of ada's
    ("cy", state("vision", None, 0)),
    ("dee", None),
    ("eve", {"pid": 12}),
    ("fay", {"gpuhub": {"team": "vision", "gpu_type": "h100-80gb", "gpu_count": "lots"}}),
]


def test_sums_a_teams_gpus_per_type_and_the_users_own() -> None:
    usage = usage_from_states(STATES, "vision", "ada")
    assert usage.gpus_in_use == {"h100-80gb": 4, "l4": 1}
    assert usage.user_gpus_in_use == 3, "the per-user cap counts the user's GPUs in this team"
    assert usage.gpu_hours_this_month is None
    assert usage_from_states(STATES, None, "zed").gpus_in_use == {}


def test_holdings_are_per_user_and_gpu_type_of_the_team_only() -> None:
    usage = usage_from_states(STATES, "vision", "bob")
    assert usage.user == "bob"
    assert usage.holdings == (
        Holding("ada", "h100-80gb", 3),
        Holding("bob", "h100-80gb", 1),
        Holding("bob", "l4", 1),
    ), "nlp's servers, CPU servers and unreadable states hold nothing of vision's"
    assert usage_from_states(STATES, "nlp", "ada").holdings == (Holding("ada", "h100-80gb", 4),)
    assert usage_from_states([], "vision", "ada").holdings == ()
