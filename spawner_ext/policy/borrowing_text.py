"""What people read about borrowing: the offer on a refusal, and what a borrowed server is. Pure
words from the catalog and policy/borrowing.py's answers; no I/O."""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog import Catalog
from ..catalog.durations import format_duration
from .borrowing import Loan

BORROW_CHOICE = (
    'tick "Borrow idle quota" on the form (or send the option "borrow": "yes") and start again'
)


def lenders_words(catalog: Catalog, loans: Sequence[Loan]) -> str:
    """ "Language Models' idle quota" / "Language Models' and Computer Vision Lab's idle quota"."""
    names = [_possessive(_team_name(catalog, loan.lender)) for loan in loans]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{listed} idle quota"


def _possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def reclaim_terms(catalog: Catalog) -> str:
    """ "may be reclaimed with 15m notice after it has run 1h", from the catalog's settings."""
    borrowing = catalog.borrowing
    if borrowing is None:
        return "is never reclaimed"
    return (
        f"may be reclaimed with {format_duration(borrowing.reclaim_notice)} notice after it "
        f"has run {format_duration(borrowing.min_runtime)}"
    )


def borrow_offer(catalog: Catalog, loans: Sequence[Loan], gpu_type: str, gpus: int) -> str:
    """The sentence a refusal for the team's own quota adds when others' quota would take it."""
    kind = catalog.gpu_types.get(gpu_type)
    name = kind.display_name if kind else gpu_type
    what = f"{gpus} {name}" + ("" if gpus == 1 else " GPUs")
    return (
        f"You can borrow {what} from {lenders_words(catalog, loans)}: a borrowed server "
        f"{reclaim_terms(catalog)}. To borrow, {BORROW_CHOICE}; or wait for your team's own."
    )


def _team_name(catalog: Catalog, team: str) -> str:
    entry = catalog.teams.get(team)
    return entry.display_name or team if entry else team
