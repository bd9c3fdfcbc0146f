"""What the activity API accepts from a notebook server (pure parts; the real-hub round trip is
tests/integration/test_culling.py)."""

from __future__ import annotations

import pytest

from spawner_ext.service.activity_api import BadReport, may_report, parse_samples


def test_samples_are_read_and_bad_ones_say_what_is_wrong() -> None:
    (sample,) = parse_samples({"gpus": [{"uuid": "GPU-1", "utilization": 7, "processes": 1}]})
    assert (sample.uuid, sample.utilization, sample.processes, sample.is_mig) == (
        "GPU-1",
        7,
        1,
        False,
    )
    for body, message in [
        ({"gpus": "GPU-1"}, "'gpus' must be a list"),
        ({"gpus": [{"uuid": f"GPU-{n}"} for n in range(65)]}, "at most 64"),
        ({"gpus": [3]}, "gpus[0] must be an object"),
        ({"gpus": [{"utilization": 1}]}, "gpus[0] has no 'uuid'"),
        ({"gpus": [{"uuid": "GPU-1", "utilization": "high"}]}, "are numbers"),
    ]:
        with pytest.raises(BadReport, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_samples(body)


def test_a_token_reports_only_for_servers_it_may_access() -> None:
    server_token = {
        "name": "ada",
        "scopes": ["access:servers!server=ada/", "users:activity!user=ada"],
    }
    assert may_report(server_token, "")
    assert not may_report(server_token, "big"), "another server of the same user"
    assert may_report({"name": "ada", "scopes": ["access:servers!user=ada"]}, "big")
    assert not may_report({"name": "ada", "scopes": ["access:servers!user=lin"]}, "")
