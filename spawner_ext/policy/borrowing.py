"""Borrowing other teams' unallocated quota of a GPU type, and giving it back: whose quota a spawn
uses, when GPUs are reclaimed for people waiting on their own quota, and which borrowed servers
give them. Pure: no I/O; the ledger gathers each team's standing and acts on the answer.

The rules (issue 20; `docs/explanation/borrowing.md` says why):

- *Own or borrowed, whole.* A spawn that fits its team's own quota (`own` GPUs held + its GPUs
  <= quota) is an own server, and an own server is never reclaimed. Any other spawn borrows all
  of its GPUs from other teams of its cohort; it is never part own, part borrowed, because
  reclaiming it stops all of its GPUs.
- *What may be lent* (`lendable`): a team's quota less what it holds itself less what it lends
  already, capped by its `lend_limit` less what it lends already.
- *What may be borrowed*: at most the borrower's `borrow_limit` in all, from lenders in the
  order of the most lendable first (then by key), so loans spread where quota is idlest.
- *When GPUs are reclaimed* (`reclaim_need`): people wait in line for the type on their own
  team's quota (a request within it), no GPU is free for them, and borrowed servers hold GPUs of
  the type. A lender is not refused because its quota is lent (the free GPUs decide), so loans
  never need to move; what a waiting person on their own quota needs is GPUs.
- *Which borrowed servers are reclaimed* (`choose_reclaims`): only those that have run
  `min_runtime`; idle ones before busy ones (a GPU whose use cannot be told counts as busy);
  among each, as few servers as cover the need, with the fewest GPUs stopped beyond it, and
  then the longest running first.
- *Which choices are withdrawn* (`withdraw_reclaims`) when fewer GPUs are needed than the
  choices not yet due give: those due soonest that cover what is still needed stay chosen (among
  those due at the same time, the ones `choose_reclaims` would choose for what is left), the
  others are withdrawn. Only choices are kept, so nothing is chosen anew (and warned with a later
  stop) while a kept choice covers it, and a lender is never made to wait for a later stop.
- *A borrowed server becomes own* (`conversions`) when its team's own quota has room for it
  again (oldest first): from then on it is never reclaimed, and its session is split there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Share:
    """One team's standing for one GPU type within its cohort."""

    team: str
    quota: int
    own: int = 0
    """GPUs of the type its own servers (and holds) take, on its own quota."""
    borrowed: int = 0
    """GPUs of the type its borrowed servers take, on other teams' quota."""
    lent: int = 0
    """GPUs of its quota that other teams' borrowed servers take."""
    borrow_limit: int = 0
    lend_limit: int | None = None
    """None: it lends all of its quota."""


@dataclass(frozen=True)
class Loan:
    """GPUs of `lender`'s quota that a borrowed server takes."""

    lender: str
    gpus: int


@dataclass(frozen=True)
class Placement:
    """Whose quota a spawn uses: its own (no loans), or loans from others."""

    borrowed: bool
    loans: tuple[Loan, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """Why a spawn can use neither its own quota nor borrowed quota."""

    reason: str
    """"gpu-quota" (over its own quota and nothing, or not enough, may be borrowed),
    "borrow-limit" (it would borrow more than its team may)."""
    message: str


def lendable(share: Share) -> int:
    """GPUs of the type `share`'s team may lend now."""
    room = share.quota - share.own - share.lent
    if share.lend_limit is not None:
        room = min(room, share.lend_limit - share.lent)
    return max(room, 0)


def fits_own(share: Share, gpus: int) -> bool:
    """Whether a spawn of `gpus` fits the team's own quota. What it lends does not count: a
    lender's own server needs a free GPU like any other, and if borrowers hold them, it waits in
    line while they are reclaimed (`reclaim_need`)."""
    return share.own + gpus <= share.quota


def place(shares: Mapping[str, Share], team: str, gpus: int) -> Placement | Refusal:
    """Whose quota a spawn of `gpus` GPUs by `team` uses. `shares` holds the team and the other
    teams of its cohort (for one GPU type)."""
    me = shares[team]
    if fits_own(me, gpus):
        return Placement(borrowed=False)
    if me.borrowed + gpus > me.borrow_limit:
        return Refusal(
            "borrow-limit",
            f"team {team!r} may hold {me.quota} on its own quota ({me.own} held) and borrow "
            f"{me.borrow_limit} ({me.borrowed} borrowed); {gpus} more is over both",
        )
    loans = _loans({t: s for t, s in shares.items() if t != team}, gpus)
    if loans is None:
        lend = sum(lendable(s) for t, s in shares.items() if t != team)
        return Refusal(
            "gpu-quota",
            f"team {team!r} has {me.quota - me.own} of its own quota free and other teams lend "
            f"{lend} now; {gpus} needed",
        )
    return Placement(borrowed=True, loans=loans)


def _loans(lenders: Mapping[str, Share], gpus: int) -> tuple[Loan, ...] | None:
    """`gpus` GPUs from `lenders`, the most lendable first (then by key); None if they lack them."""
    order = sorted(lenders.values(), key=lambda s: (-lendable(s), s.team))
    loans: list[Loan] = []
    left = gpus
    for share in order:
        take = min(lendable(share), left)
        if take > 0:
            loans.append(Loan(share.team, take))
            left -= take
        if left == 0:
            return tuple(loans)
    return None


@dataclass(frozen=True)
class BorrowedServer:
    """A running borrowed server of the type, as reclaiming needs it."""

    id: str
    team: str
    gpus: int
    started_at: datetime
    idle: bool
    """Its GPUs idle as the culler sees them (NVML samples and kernel activity). False when it
    cannot be told (a MIG slice, no samples): such a server counts as busy."""


def choose_reclaims(
    servers: Sequence[BorrowedServer],
    gpus: int,
    now: datetime,
    min_runtime: timedelta,
) -> tuple[BorrowedServer, ...]:
    """The borrowed servers of a type to stop so that `gpus` GPUs free up for people waiting on
    their own quota: only those that have run `min_runtime`; idle before busy; within each, a
    single server that covers what is left if one does (the one with the fewest GPUs, then the
    longest running), else the one that gives the most (then the longest running), and again.
    Fewer than `gpus` may be found (the rest waits for servers to pass `min_runtime`)."""
    eligible = [s for s in servers if now - s.started_at >= min_runtime]
    chosen: list[BorrowedServer] = []
    left = gpus
    for idle in (True, False):
        pool = [s for s in eligible if s.idle is idle]
        while left > 0 and pool:
            covers = [s for s in pool if s.gpus >= left]
            if covers:
                pick = min(covers, key=lambda s: (s.gpus, s.started_at, s.id))
            else:
                pick = min(pool, key=lambda s: (-s.gpus, s.started_at, s.id))
            chosen.append(pick)
            pool.remove(pick)
            left -= pick.gpus
        if left <= 0:
            break
    return tuple(chosen)


def withdraw_reclaims(
    chosen: Sequence[tuple[BorrowedServer, datetime]],
    gpus: int,
    now: datetime,
) -> tuple[BorrowedServer, ...]:
    """Which of the choices not yet due (each a borrowed server with its `reclaim_at`) to
    withdraw when only `gpus` of their GPUs are still needed: the soonest due stay chosen until
    they cover `gpus`; of those due at the same time, if not all are needed, the ones
    `choose_reclaims` would choose for what is left (already chosen, so `min_runtime` is no
    longer asked); the others are withdrawn, in the order given. A choice due sooner is never
    withdrawn for one due later, however many GPUs it stops beyond the need."""
    by_time: dict[datetime, list[BorrowedServer]] = {}
    for server, reclaim_at in chosen:
        by_time.setdefault(reclaim_at, []).append(server)
    kept: set[str] = set()
    left = gpus
    for reclaim_at in sorted(by_time):
        if left <= 0:
            break
        due_then = by_time[reclaim_at]
        if sum(s.gpus for s in due_then) > left:
            due_then = list(choose_reclaims(due_then, left, now, timedelta(0)))
        kept.update(s.id for s in due_then)
        left -= sum(s.gpus for s in due_then)
    return tuple(server for server, _ in chosen if server.id not in kept)


@dataclass(frozen=True)
class Wanting:
    """A request waiting for GPUs of the type, as reclaiming sees it (in the line's order)."""

    team: str
    gpus: int


def reclaim_need(
    shares: Mapping[str, Share],
    waiting: Sequence[Wanting],
    free: int,
    reclaiming: int,
) -> tuple[int, str | None]:
    """(GPUs to reclaim now, for which team): what the requests waiting on their own team's
    quota need beyond the free GPUs and those already being reclaimed (`reclaiming`), counting
    only while borrowed servers hold GPUs a within-quota request could use. A request over its
    own team's quota waits for that quota (or borrows): it reclaims nothing. The team is the
    first such request's (the one whose line message tells it a GPU is coming)."""
    own = {team: share.own for team, share in shares.items()}
    wanted = 0
    first: str | None = None
    for request in waiting:
        share = shares.get(request.team)
        if share is None or own[request.team] + request.gpus > share.quota:
            continue
        own[request.team] += request.gpus
        wanted += request.gpus
        first = first or request.team
    borrowed = sum(share.borrowed for share in shares.values())
    need = min(wanted - free, borrowed) - reclaiming
    return max(need, 0), first if need > 0 else None


def conversions(share: Share, servers: Iterable[BorrowedServer]) -> tuple[BorrowedServer, ...]:
    """The team's borrowed servers that its own quota now has room for, oldest first: each
    becomes an own server (its loans end) while `own` + its GPUs stays within the quota."""
    chosen: list[BorrowedServer] = []
    own = share.own
    for server in sorted(servers, key=lambda s: (s.started_at, s.id)):
        if server.team == share.team and own + server.gpus <= share.quota:
            chosen.append(server)
            own += server.gpus
    return tuple(chosen)
