"""Checks that span catalog sections: names that must refer to something, and slugs that must be
unique. Pure, and defensive: it reads the raw parsed YAML, so it can report alongside schema errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from slugify import slugify

from .yamlsource import Loc


class Found(NamedTuple):
    """A broken reference: where (at the key itself when `at_key`), and what is wrong."""

    loc: Loc
    message: str
    at_key: bool = False


def suggest(word: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest known word, or the list of known words."""
    known = sorted(known)
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not known:
        return "; none are defined"
    return "; known: " + ", ".join(known)


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _names(value: Any) -> Iterator[tuple[int, str]]:
    for i, item in enumerate(_list(value)):
        if isinstance(item, str):
            yield i, item


def _slug_of(profile: Mapping[Any, Any]) -> str | None:
    slug = profile.get("slug")
    if isinstance(slug, str):
        return slug
    name = profile.get("display_name")
    return slugify(name) if isinstance(name, str) else None


def reference_problems(raw: Any) -> list[Found]:
    """Every broken cross-reference in a raw catalog mapping."""
    doc = _mapping(raw)
    gpu_types = _mapping(doc.get("gpu_types"))
    teams = _mapping(doc.get("teams"))
    profiles = [(i, p) for i, p in enumerate(_list(doc.get("profiles"))) if isinstance(p, Mapping)]
    found: list[Found] = []
    found += _profile_problems(profiles, gpu_types, teams)
    found += _team_problems(teams, gpu_types, {_slug_of(p) for _, p in profiles} - {None})
    found += _budget_alert_problems(teams, _mapping(doc.get("notifications")))
    found += _borrowing_problems(teams, doc.get("borrowing"))
    return found


def _borrowing_problems(teams: Mapping[Any, Any], borrowing: Any) -> list[Found]:
    """Cohorts name known teams; a team's borrow_limit needs the `borrowing` section."""
    found: list[Found] = []
    if isinstance(borrowing, Mapping):
        for cohort, members in _mapping(borrowing.get("cohorts")).items():
            for j, team in _names(members):
                if team not in teams:
                    found.append(
                        Found(
                            ("borrowing", "cohorts", cohort, j),
                            f"unknown team {team!r}{suggest(team, teams)}",
                        )
                    )
        return found
    for team_name, team in teams.items():
        limits = _mapping(_mapping(_mapping(team).get("quota")).get("borrow_limit"))
        if any(limits.values()):
            found.append(
                Found(
                    ("teams", team_name, "quota", "borrow_limit"),
                    "the team may borrow, but the catalog has no `borrowing` section: add one "
                    "(its defaults are a 15m notice and a 1h guaranteed run), or remove "
                    "borrow_limit",
                    at_key=True,
                )
            )
    return found


def _profile_problems(
    profiles: list[tuple[int, Mapping[Any, Any]]],
    gpu_types: Mapping[Any, Any],
    teams: Mapping[Any, Any],
) -> list[Found]:
    found: list[Found] = []
    first_slug: dict[str, int] = {}
    for i, profile in profiles:
        loc: Loc = ("profiles", i)
        slug = _slug_of(profile)
        if slug is not None:
            if slug in first_slug:
                where = (*loc, "slug") if "slug" in profile else (*loc, "display_name")
                found.append(
                    Found(
                        where,
                        f"duplicate slug {slug!r}, also used by profiles[{first_slug[slug]}]; "
                        "give each profile its own slug",
                    )
                )
            else:
                first_slug[slug] = i
        for j, team in _names(profile.get("allowed_teams")):
            if team not in teams:
                found.append(
                    Found(
                        (*loc, "allowed_teams", j), f"unknown team {team!r}{suggest(team, teams)}"
                    )
                )
        found += _gpu_request_problems(loc, profile.get("gpu"), gpu_types)
    return found


def _gpu_request_problems(loc: Loc, gpu: Any, gpu_types: Mapping[Any, Any]) -> list[Found]:
    if not isinstance(gpu, Mapping) or not isinstance(gpu.get("type"), str):
        return []
    name = gpu["type"]
    gpu_type = gpu_types.get(name)
    if gpu_type is None:
        return [
            Found((*loc, "gpu", "type"), f"unknown GPU type {name!r}{suggest(name, gpu_types)}")
        ]
    count = gpu.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return []  # the schema reports it
    gpu_type = _mapping(gpu_type)
    resource = gpu_type.get("resource", "nvidia.com/gpu")
    if isinstance(resource, str) and resource.startswith("nvidia.com/mig-") and count != 1:
        return [
            Found(
                (*loc, "gpu", "count"),
                f"{name!r} is a MIG slice ({resource}); a process can use only one MIG device, "
                f"so gpu.count must be 1 (got {count}). Define a larger slice type instead.",
            )
        ]
    per_node = gpu_type.get("gpus_per_node")
    if isinstance(per_node, int) and not isinstance(per_node, bool) and count > per_node:
        return [
            Found(
                (*loc, "gpu", "count"),
                f"no node has {count} GPUs of type {name!r}: gpu_types.{name}.gpus_per_node "
                f"is {per_node}",
            )
        ]
    return []


def _team_problems(
    teams: Mapping[Any, Any], gpu_types: Mapping[Any, Any], slugs: set[Any]
) -> list[Found]:
    found: list[Found] = []
    for team_name, team in teams.items():
        team = _mapping(team)
        loc: Loc = ("teams", team_name)
        for key in ("gpus", "borrow_limit", "lend_limit"):
            for gpu_name in _mapping(_mapping(team.get("quota")).get(key)):
                if gpu_name not in gpu_types:
                    found.append(
                        Found(
                            (*loc, "quota", key, gpu_name),
                            f"unknown GPU type {gpu_name!r}{suggest(str(gpu_name), gpu_types)}",
                            at_key=True,
                        )
                    )
        for j, slug in _names(team.get("profiles")):
            if slug not in slugs:
                found.append(
                    Found(
                        (*loc, "profiles", j),
                        f"unknown profile slug {slug!r}{suggest(slug, slugs)}",
                    )
                )
    return found


def _budget_alert_problems(
    teams: Mapping[Any, Any], notifications: Mapping[Any, Any]
) -> list[Found]:
    """Budget alerts need the channels they are sent through (the `notifications` section)."""
    found: list[Found] = []
    email, webhook = (
        notifications.get("email") is not None,
        notifications.get("webhook") is not None,
    )
    for team_name, team in teams.items():
        alerts = _mapping(_mapping(team).get("quota")).get("budget_alerts")
        if not isinstance(alerts, Mapping):
            continue
        loc: Loc = ("teams", team_name, "quota", "budget_alerts")
        to = _mapping(alerts.get("to"))
        emails = _list(to.get("emails"))
        if emails and not email:
            found.append(
                Found(
                    (*loc, "to", "emails"),
                    "these addresses get email, and the catalog has no notifications.email; "
                    "add notifications.email (the mail server), or remove `emails`",
                )
            )
            continue
        by_email = email and (
            to.get("leads", True) is not False or to.get("admins", True) is not False or emails
        )
        by_webhook = webhook and to.get("webhook", True) is not False
        if not (by_email or by_webhook):
            found.append(
                Found(
                    loc,
                    "these alerts would go nowhere: add notifications.email (to email the "
                    "leads and admins) or notifications.webhook, or remove budget_alerts",
                )
            )
    return found
