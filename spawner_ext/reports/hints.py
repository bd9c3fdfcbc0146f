"""Right-sizing hints for a report's period: per team, user and profile, the cheaper profile that
would have done (policy/rightsizing.py) and what following it would have saved. Pure: the
sessions, their GPU use and the catalog are handed in (reports/hint_query.py reads them).

A group's sessions are judged together: their GPU use merged (peaks the largest, times added),
so the suggestion would have done for every one of them. Sessions no report measured are counted
in `gpu_hours` but neither judged nor saved on: nothing is known of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..catalog import Catalog
from ..policy.gpu_use import GPUUse, merge_all
from ..policy.identity import Identity
from ..policy.rightsizing import (
    RightSizing,
    Suggestion,
    candidates,
    possible_saving,
    suggest,
    suggestion_words,
    used_profile,
)

HOURS = Decimal("0.0001")
MIB_PER_GIB = 1024
DEFAULT_RULE = RightSizing()


@dataclass(frozen=True)
class HeldSession:
    """A GPU session's part of a report's period."""

    id: int
    team: str | None
    user: str
    profile: str
    gpu_type: str
    gpu_count: int
    price_per_hour: Decimal
    """The whole server's price per hour, as admitted."""
    currency: str
    held_seconds: int
    """Seconds its server was billed within the period."""


@dataclass(frozen=True)
class HintRow:
    """One team's user's profile over the period."""

    team: str | None
    user: str
    profile: str
    gpu_type: str
    currency: str
    sessions: int
    gpu_hours: Decimal
    """GPU-hours held within the period, by all the group's sessions."""
    measured_sessions: int
    """Sessions some report measured (the ones judged)."""
    use: GPUUse
    """The measured sessions' GPU use, merged."""
    suggestion: Suggestion | None
    possible_saving: Decimal
    """What the suggestion would have saved over the measured sessions' time in the period."""
    hint: str
    """The suggestion in words, or why there is none."""

    def as_json(self) -> dict[str, Any]:
        s = self.suggestion
        return {
            "team": self.team,
            "user": self.user,
            "profile": self.profile,
            "gpu_type": self.gpu_type,
            "sessions": self.sessions,
            "measured_sessions": self.measured_sessions,
            "gpu_hours": float(self.gpu_hours),
            "observed_hours": round(self.use.observed_seconds / 3600, 4),
            "busy_percent": self.use.busy_percent,
            "p95_percent": self.use.p95,
            "peak_memory_mib": self.use.peak_memory_mib if self.measured_sessions else None,
            "memory_total_mib": self.use.memory_total_mib if self.measured_sessions else None,
            "suggested_profile": None if s is None else s.profile,
            "suggested_price_per_hour": None if s is None else float(s.price_per_hour),
            "price_per_hour": None if s is None else float(s.instead_of_price_per_hour),
            "possible_saving": float(self.possible_saving),
            "currency": self.currency,
            "hint": self.hint,
        }


def memory_mib(catalog: Catalog) -> dict[str, int]:
    """Each GPU type's memory per GPU (MiB), for the types whose catalog entry gives it."""
    return {
        key: int(entry.memory_gib * MIB_PER_GIB)
        for key, entry in catalog.gpu_types.items()
        if entry.memory_gib is not None
    }


def suggestion_for(
    catalog: Catalog,
    team: str | None,
    who: Identity,
    *,
    used: tuple[str, str, int, Decimal],
    currency: str,
    use: GPUUse,
    memory: Mapping[str, int] | None = None,
    rule: RightSizing = DEFAULT_RULE,
) -> Suggestion | None:
    """The rule's suggestion for sessions charged to `team` that ran `used` (profile, GPU type,
    GPU count, the server's price per hour as admitted, in `currency`) and used `use` of their
    GPUs: the cheapest of the profiles `who` may start for the team that would have done, at
    the catalog's prices (`memory`: memory_mib(catalog), when the caller has it). None where
    the team is gone from the catalog or the price was in another currency than the catalog's
    (prices could not be compared), and where the rule suggests nothing. The leads' hints
    (hint_rows) and the person's GPU meter (service/activity_api.py) both ask it."""
    if team is None or team not in catalog.teams or currency != catalog.metering.currency:
        return None
    profile, gpu_type, gpu_count, price_per_hour = used
    offered = candidates(catalog, team, who, memory if memory is not None else memory_mib(catalog))
    return suggest(
        use, used_profile(catalog, profile, gpu_type, gpu_count, price_per_hour), offered, rule
    )


def hint_rows(
    sessions: Iterable[HeldSession],
    uses: Mapping[int, GPUUse],
    catalog: Catalog,
    rule: RightSizing = DEFAULT_RULE,
) -> list[HintRow]:
    """A row per (team, user, profile, GPU type, GPU count, currency) of `sessions`, the largest
    possible saving first within each team. `uses`: each session's GPU use (absent: never
    reported). Suggestions only among the profiles the user may start for the team, at the
    catalog's prices in its currency."""
    groups: dict[tuple[Any, ...], list[HeldSession]] = {}
    for s in sessions:
        key = (s.team or "", s.user, s.profile, s.gpu_type, s.gpu_count, s.currency)
        groups.setdefault(key, []).append(s)
    memory = memory_mib(catalog)
    rows = [_row(group, uses, catalog, memory, rule) for group in groups.values()]
    return sorted(rows, key=lambda r: (r.team or "", -r.possible_saving, r.user, r.profile))


def _row(
    group: list[HeldSession],
    uses: Mapping[int, GPUUse],
    catalog: Catalog,
    memory: Mapping[str, int],
    rule: RightSizing,
) -> HintRow:
    latest = max(group, key=lambda s: s.id)
    measured = [s for s in group if s.id in uses and uses[s.id].observed_seconds > 0]
    use = merge_all(uses[s.id] for s in measured)
    suggestion = None
    if measured:
        suggestion = suggestion_for(
            catalog,
            latest.team,
            Identity(latest.user),
            used=(latest.profile, latest.gpu_type, latest.gpu_count, latest.price_per_hour),
            currency=latest.currency,
            use=use,
            memory=memory,
            rule=rule,
        )
    saving = possible_saving((_for_session(suggestion, s), s.held_seconds) for s in measured)
    gpu_seconds = sum(s.held_seconds * s.gpu_count for s in group)
    return HintRow(
        team=latest.team,
        user=latest.user,
        profile=latest.profile,
        gpu_type=latest.gpu_type,
        currency=latest.currency,
        sessions=len(group),
        gpu_hours=(Decimal(gpu_seconds) / 3600).quantize(HOURS, rounding=ROUND_HALF_UP),
        measured_sessions=len(measured),
        use=use,
        suggestion=suggestion,
        possible_saving=saving,
        hint=_words(suggestion, use, measured, latest.currency, rule),
    )


def _for_session(suggestion: Suggestion | None, session: HeldSession) -> Suggestion | None:
    """The suggestion against this session's own price (a price may have changed between two
    sessions of the group); None where it would not have been cheaper."""
    if suggestion is None or session.price_per_hour <= suggestion.price_per_hour:
        return None
    return replace(suggestion, instead_of_price_per_hour=session.price_per_hour)


def _words(
    suggestion: Suggestion | None,
    use: GPUUse,
    measured: list[HeldSession],
    currency: str,
    rule: RightSizing,
) -> str:
    if suggestion is not None:
        return suggestion_words(suggestion, currency)
    if not measured:
        return "not measured: no report from the notebook extension"
    minimum = int(rule.min_observed.total_seconds())
    if use.observed_seconds < minimum:
        return (
            f"too little observed to judge: {use.observed_seconds // 60} of at least "
            f"{minimum // 60} minutes"
        )
    return "no cheaper profile the team may start would have done"
