"""Who reads what: every team, a lead's teams, or one's own sessions; anything else is refused."""

from __future__ import annotations

from datetime import date

import pytest

from spawner_ext.reports.access import Forbidden, access_of, authorize
from spawner_ext.reports.query import Period, UsageQuery

NOV = Period(date(2026, 11, 1), date(2026, 12, 1))
ADMIN = access_of("root", ["read:users:name!user", "custom:gpu-usage:read"])
LEAD = access_of("ada", ["custom:gpu-usage:read!group=vision", "access:services"])
MEMBER = access_of("lin", ["read:users:name!user=lin"])


def ask(teams: tuple[str, ...] | None = None, user: str | None = None) -> UsageQuery:
    return UsageQuery(teams, NOV, (), user)


def test_an_admin_reads_every_team_as_asked() -> None:
    assert ADMIN.everything
    assert authorize(ADMIN, ask()) == ask()
    assert authorize(ADMIN, ask(("nlp",), "grace")) == ask(("nlp",), "grace")


def test_a_lead_reads_their_teams_and_nothing_else() -> None:
    assert authorize(LEAD, ask()) == ask(("vision",))
    assert authorize(LEAD, ask(("vision",), "lin")) == ask(("vision",), "lin")
    with pytest.raises(Forbidden, match="team 'nlp'; you may read teams vision and your own usage"):
        authorize(LEAD, ask(("vision", "nlp")))


def test_a_member_reads_only_their_own_sessions() -> None:
    assert authorize(MEMBER, ask()) == ask(user="lin")
    assert authorize(MEMBER, ask(("vision",), "lin")) == ask(("vision",), "lin")
    with pytest.raises(Forbidden, match="you may read your own usage only"):
        authorize(MEMBER, ask(("vision",)))
    with pytest.raises(Forbidden):
        authorize(MEMBER, ask(("vision",), "ada"))
    with pytest.raises(Forbidden, match="usage of 'ada'"):
        authorize(MEMBER, ask(user="ada"))


def test_a_scope_of_another_service_grants_nothing() -> None:
    other = access_of("eve", ["custom:gpu-usage:readall", "custom:other:read"])
    assert other.teams == frozenset() and not other.everything
