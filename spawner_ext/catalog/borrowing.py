"""Catalog section of borrowing (`borrowing:`): who may borrow other teams' unallocated GPU quota,
the notice before a borrowed server is reclaimed, and the run it is guaranteed first. What each
team may borrow and lend is in its quota (`borrow_limit`, `lend_limit`: schema.py). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from pydantic import Field, field_validator

from .values import Duration, FrozenMap, Model, Money, Name


class Borrowing(Model):
    """Teams may run servers on other teams' unallocated quota of a GPU type, up to their
    `quota.borrow_limit`; a borrowed server is stopped (reclaimed) with notice when a lender needs
    its quota back, never before it has run `min_runtime`. Absent: quotas are hard walls."""

    cohorts: FrozenMap[Name, tuple[Name, ...]] = Field(
        default_factory=dict,
        description="Named groups of teams that lend to each other, e.g. `research: [vision, "
        "nlp]`; a team is in at most one. Absent or empty: every team lends to every other.",
    )
    reclaim_notice: Duration = Field(
        "15m",
        validate_default=True,
        description="How long before a borrowed server is stopped to give its GPUs back its "
        "user is warned (in JupyterLab, and by email or webhook where configured).",
    )
    min_runtime: Duration = Field(
        "1h",
        validate_default=True,
        description="A borrowed server runs at least this long before it may be chosen to "
        "give its GPUs back.",
    )
    price_factor: Money = Field(
        Decimal(1),
        description="Borrowed GPU-hours are charged to the borrowing team at the GPU type's "
        "price times this factor (1: the same price).",
    )

    @field_validator("cohorts")
    @classmethod
    def _one_cohort_per_team(
        cls, cohorts: Mapping[str, tuple[str, ...]]
    ) -> Mapping[str, tuple[str, ...]]:
        seen: dict[str, str] = {}
        for cohort, teams in cohorts.items():
            for team in teams:
                if team in seen and seen[team] != cohort:
                    raise ValueError(
                        f"team {team!r} is in cohorts {seen[team]!r} and {cohort!r}; a team "
                        "lends within one cohort: remove it from one of them"
                    )
                seen[team] = cohort
        return cohorts

    def cohort_of(self, team: str, teams: tuple[str, ...]) -> tuple[str, ...]:
        """The teams `team` borrows from and lends to (itself included), in key order: its
        cohort's, or all `teams` when there are no cohorts. A team in no cohort, when there are
        cohorts, is on its own."""
        if not self.cohorts:
            return tuple(sorted(teams))
        for members in self.cohorts.values():
            if team in members:
                return tuple(sorted(t for t in members if t in teams))
        return (team,)
