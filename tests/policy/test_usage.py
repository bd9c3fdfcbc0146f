"""Live usage from running servers' states, the preview's source when metering is off."""

from __future__ import annotations

from spawner_ext.hub.usage import usage_from_states


def test_sums_a_teams_gpus_per_type_and_the_users_own() -> None:
    states = [
        ("ada", {"gpuhub": {"team": "vision", "gpu_type": "h100-80gb", "gpu_count": 2}}),
        ("bob", {"gpuhub": {"team": "vision", "gpu_type": "h100-80gb", "gpu_count": 1}}),
        ("bob", {"gpuhub": {"team": "vision", "gpu_type": "l4", "gpu_count": 1}}),
        ("ada", {"gpuhub": {"team": "nlp", "gpu_type": "h100-80gb", "gpu_count": 4}}),
        ("cy", {"gpuhub": {"team": "vision", "profile": "cpu-small", "gpu_count": 0}}),
        ("dee", None),
        ("eve", {"pid": 12}),
    ]
    usage = usage_from_states(states, "vision", "ada")
    assert usage.gpus_in_use == {"h100-80gb": 3, "l4": 1}
    assert usage.user_gpus_in_use == 2, "the per-user cap counts the user's GPUs in this team"
    assert usage.gpu_hours_this_month is None
    assert usage_from_states(states, None, "zed").gpus_in_use == {}
