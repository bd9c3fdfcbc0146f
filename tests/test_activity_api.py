"""What the activity API accepts from a notebook server and what it answers (pure parts; the
real-hub round trips are tests/integration/test_culling.py and test_budget_warnings_browser.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spawner_ext.catalog import load_catalog
from spawner_ext.ledger.activity import ActivityRecord, CullWarning
from spawner_ext.notebook.sampler import Activity
from spawner_ext.policy.activity import ActivityState
from spawner_ext.policy.notices import budget_notice
from spawner_ext.service.activity_api import (
    BadReport,
    answer_body,
    may_report,
    parse_samples,
)

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


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


def test_the_answer_offers_keep_only_where_it_helps_and_names_the_leads() -> None:
    catalog = load_catalog(Path(__file__).parents[1] / "hub_config" / "catalog.yaml")
    state = ActivityState(NOW, Activity.IDLE, False, NOW - timedelta(minutes=25))
    at = NOW + timedelta(minutes=5)

    def answer(reason: str) -> dict[str, object]:
        record = ActivityRecord(1, state, "[]", CullWarning("stopped soon", at, reason))
        warning = answer_body(record, catalog, "vision", None)["warning"]
        assert isinstance(warning, dict)
        return warning

    assert answer("culled-gpu-idle") == {
        "message": "stopped soon",
        "cull_at": "2026-12-10T12:05:00+00:00",
        "reason": "culled-gpu-idle",
        "keep": True,
        "advice": "",
    }
    max_age = answer("max-age")
    assert max_age["keep"] is False
    assert max_age["advice"] == (
        "Keep cannot delay this: save your work, and start a new server after it. For longer "
        "runs, ask ada or a member of vision-leads (the leads of Computer Vision Lab)."
    )
    assert answer("budget")["keep"] is False

    notice = budget_notice("vision", catalog.teams["vision"], Decimal(1700), None, NOW)
    quiet = ActivityRecord(1, state, "[]", None)
    body = answer_body(quiet, catalog, "vision", notice)
    assert body["warning"] is None
    assert notice is not None and body["budget"] == notice.as_json()
    assert body["budget"]["percent_used"] == 85  # type: ignore[index]
    gone = answer_body(None, catalog, None, None)
    assert (gone["running"], gone["warning"], gone["budget"]) == (False, None, None)
