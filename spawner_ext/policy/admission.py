"""May this server start? The one admission decision, asked by the ledger when a server is
about to start and by the form's preview about a profile a person might pick. Pure: no I/O here;
the callers gather the team's usage (ledger/admission.py, hub/usage.py) and act on the answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from ..catalog import Catalog, Quota
from .borrowing import Loan, Placement, Refusal, Share, place


@dataclass(frozen=True)
class Holding:
    """GPUs held by one user of a team: one admitted, not yet ended session, or (after
    `combine_holdings`) all of that user's sessions of one GPU type."""

    user: str
    gpu_type: str | None
    gpu_count: int
    borrowed: bool = False
    """On other teams' quota (policy/borrowing.py): not counted against the team's own quota
    of the type, counted against the user's cap."""


@dataclass(frozen=True)
class TeamUsage:
    """What a team holds now and has used this month, as seen by `user` (whose own GPUs the
    per-user cap counts). What `decide` needs, gathered by a usage source."""

    user: str = ""
    holdings: tuple[Holding, ...] = ()
    """The team's GPUs held per user and GPU type (running or admitted servers)."""
    gpu_hours_this_month: Decimal | None = None
    """None when no metering source is configured: the budget cannot be judged then."""

    @property
    def gpus_in_use(self) -> dict[str, int]:
        """GPU type -> GPUs the team holds."""
        held: Counter[str] = Counter()
        for h in self.holdings:
            if h.gpu_type is not None and h.gpu_count:
                held[h.gpu_type] += h.gpu_count
        return dict(held)

    @property
    def user_gpus_in_use(self) -> int:
        """GPUs `user` holds in this team (all types)."""
        return sum(h.gpu_count for h in self.holdings if h.user == self.user)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str | None
    """Short label of a refusal: gpu-quota, user-cap, budget."""
    message: str
    warning: str | None = None
    loans: tuple[Loan, ...] = ()
    """Admitted on other teams' quota: whose, and how many GPUs of each (a borrowed server)."""
    may_borrow: Placement | None = None
    """Refused for its team's quota, but other teams' quota would take it: how (the offer)."""


def next_month_start(now: datetime) -> datetime:
    """When a calendar-month budget resets: 00:00 UTC on the first of next month."""
    now = now.astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def combine_holdings(holdings: Iterable[Holding]) -> tuple[Holding, ...]:
    """One Holding per (user, GPU type, borrowed or not) with GPUs, in a stable order."""
    return summed_holdings((h.user, h.gpu_type, h.borrowed, h.gpu_count) for h in holdings)


def summed_holdings(
    entries: Iterable[tuple[str, str | None, bool, int]],
) -> tuple[Holding, ...]:
    """`combine_holdings` of (user, GPU type, borrowed, GPUs) entries, without a Holding made
    for each (admission sums every open session of the team this way)."""
    held: Counter[tuple[str, str, bool]] = Counter()
    for user, gpu_type, borrowed, gpu_count in entries:
        if gpu_type is not None and gpu_count > 0:
            held[user, gpu_type, borrowed] += gpu_count
    return tuple(
        Holding(user, gpu_type, n, borrowed)
        for (user, gpu_type, borrowed), n in sorted(held.items())
    )


def budget_used_up(quota: Quota, hours_used: Decimal | None) -> bool:
    """True when the team's monthly GPU-hours are spent; False without a budget or metering."""
    budget = quota.monthly_gpu_hours
    return budget is not None and hours_used is not None and hours_used >= budget


def budget_warning(
    team: str, quota: Quota, hours_used: Decimal | None, now: datetime
) -> str | None:
    """The warning of a team at or past its warning threshold (and not past its budget)."""
    budget = quota.monthly_gpu_hours
    if budget is None or hours_used is None or budget <= 0 or budget_used_up(quota, hours_used):
        return None
    percent = int(hours_used * 100 / budget)
    if percent < quota.budget_warning_percent:
        return None
    return (
        f"team {team!r} has used {percent}% of its {budget} GPU-hours this month "
        f"(resets {next_month_start(now):%Y-%m-%d})"
    )


def decide(
    team: str,
    quota: Quota,
    *,
    user: str,
    gpu_type: str | None,
    gpu_count: int,
    gpu_type_name: str,
    holdings: Sequence[Holding],
    hours_used: Decimal | None,
    now: datetime,
    own_quota: bool = True,
) -> Decision:
    """May `user` start a server with `gpu_count` GPUs of `gpu_type` charged to `team` now?

    `hours_used` None (no metering: only previews pass it) leaves the budget unjudged.
    `own_quota` False: the server would run on borrowed quota, so the team's own quota of the
    type is not judged here (policy/borrowing.py judges the loans); budget and cap still are."""
    if gpu_count == 0 or gpu_type is None:
        return Decision(True, None, "no GPUs requested")
    budget = quota.monthly_gpu_hours
    if budget_used_up(quota, hours_used):
        return Decision(
            False,
            "budget",
            f"team {team!r} has used its monthly budget ({hours_used} of {budget} GPU-hours); "
            f"GPU servers can start again when it resets on {next_month_start(now):%Y-%m-%d %H:%M}"
            " UTC, or ask your team lead to raise the budget. CPU profiles still work.",
        )
    allowed = quota.gpus.get(gpu_type, 0)
    of_type = [h for h in holdings if h.gpu_type == gpu_type and not h.borrowed]
    held = sum(h.gpu_count for h in of_type)
    if own_quota and held + gpu_count > allowed:
        holders = Counter[str]()
        for h in of_type:
            holders[h.user] += h.gpu_count
        who = ", ".join(f"{u}: {n}" for u, n in sorted(holders.items())) or "nobody"
        return Decision(
            False,
            "gpu-quota",
            f"team {team!r} may hold {allowed} {gpu_type_name} at once and holds {held} "
            f"({who}); {max(allowed - held, 0)} free, you asked for {gpu_count}. Try again when "
            "a server stops, or pick a smaller profile.",
        )
    cap = quota.gpus_per_user
    mine = sum(h.gpu_count for h in holdings if h.user == user)
    if cap is not None and mine + gpu_count > cap:
        return Decision(
            False,
            "user-cap",
            f"you may hold {cap} GPUs at once in team {team!r} and hold {mine}; stop a server "
            f"first (you asked for {gpu_count}).",
        )
    return Decision(True, None, "admitted", budget_warning(team, quota, hours_used, now))


def decide_in(
    catalog: Catalog,
    team: str,
    usage: TeamUsage,
    *,
    gpu_type: str | None,
    gpu_count: int,
    now: datetime,
    own_quota: bool = True,
) -> Decision:
    """`decide` for `usage.user` with the team's quota and the GPU type's name from `catalog`:
    what admission (ledger/admission.py) and the form's preview (preview.py) both ask."""
    known = catalog.gpu_types.get(gpu_type or "")
    return decide(
        team,
        catalog.teams[team].quota,
        user=usage.user,
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        gpu_type_name=known.display_name if known else str(gpu_type),
        holdings=usage.holdings,
        hours_used=usage.gpu_hours_this_month,
        now=now,
        own_quota=own_quota,
    )


def decide_with_borrowing(
    catalog: Catalog,
    team: str,
    usage: TeamUsage,
    *,
    gpu_type: str | None,
    gpu_count: int,
    now: datetime,
    shares: Mapping[str, Share] | None,
    borrow: bool,
) -> Decision:
    """`decide_in`, and when the team's own quota of the type is what refuses it, other teams'
    unallocated quota (`shares`: the team's cohort for the type, None when borrowing is off):
    admitted on loans when the spawn asks to `borrow`, else refused with the offer
    (`Decision.may_borrow`). Budget and the user's cap apply to a borrowed server as to any."""
    own = decide_in(catalog, team, usage, gpu_type=gpu_type, gpu_count=gpu_count, now=now)
    if own.admitted or own.reason != "gpu-quota" or shares is None or team not in shares:
        return own
    placement = place(shares, team, gpu_count)
    if isinstance(placement, Refusal):
        return replace(own, message=f"{own.message} Borrowing: {placement.message}.")
    capped = decide_in(
        catalog, team, usage, gpu_type=gpu_type, gpu_count=gpu_count, now=now, own_quota=False
    )
    if not capped.admitted:
        return capped  # the user's cap: borrowing cannot help, so no offer
    if not borrow:
        return replace(own, may_borrow=placement)
    return replace(capped, message="admitted on borrowed quota", loans=placement.loans)
