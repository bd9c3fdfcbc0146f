"""Report rows as CSV (streamed line by line: constant memory), JSON and a terminal table: usage,
right-sizing hints and borrowing."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from . import borrowing
from .borrowing import BorrowingRow
from .hints import HintRow
from .query import Dimension, UsageQuery
from .usage import UsageRow, columns

HINT_COLUMNS = [
    "team",
    "user",
    "profile",
    "sessions",
    "gpu_hours",
    "busy_percent",
    "suggested_profile",
    "possible_saving",
    "currency",
    "hint",
]
"""The hints' columns in a terminal table and CSV (JSON has more: hints.HintRow.as_json)."""
NUMERIC = {
    "gpu_hours",
    "cost",
    "idle_gpu_hours",
    "sessions",
    "busy_gpu_hours",
    "measured_gpu_hours",
    "utilization",
    "busy_percent",
    "possible_saving",
    *borrowing.FIGURES,
}


def csv_lines(rows: Iterable[UsageRow], by: tuple[Dimension, ...]) -> Iterator[str]:
    """The header, then one line per row, each as soon as its row is read."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    names = columns(by)

    def line(values: Iterable[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(names)
    for row in rows:
        data = row.as_json(by)
        yield line("" if data[name] is None else data[name] for name in names)


def json_document(rows: Iterable[UsageRow], query: UsageQuery) -> dict[str, Any]:
    return {
        "since": query.period.since.isoformat(),
        "until": query.period.until.isoformat(),
        "by": [d.value for d in query.by],
        "teams": list(query.teams) if query.teams is not None else None,
        "rows": [row.as_json(query.by) for row in rows],
    }


def json_text(rows: Iterable[UsageRow], query: UsageQuery) -> str:
    return json.dumps(json_document(rows, query), indent=2)


def table(rows: Iterable[UsageRow], by: tuple[Dimension, ...]) -> str:
    """Aligned columns, numbers on the right, as `sreport` prints them."""
    return tabulate(columns(by), [row.as_json(by) for row in rows], "(no usage in this period)")


def tabulate(names: list[str], rows: list[dict[str, Any]], empty: str) -> str:
    """`rows` (JSON rows) in aligned columns of `names`; `empty` when there are none."""
    body = [[_cell(name, row[name]) for name in names] for row in rows]
    widths = [max([len(name), *(len(r[i]) for r in body)]) for i, name in enumerate(names)]

    def render(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if name in NUMERIC else cell.ljust(width)
            for cell, width, name in zip(cells, widths, names, strict=True)
        ).rstrip()

    lines = [render(names), render(["-" * w for w in widths])]
    lines += [render(r) for r in body]
    if not body:
        lines.append(empty)
    return "\n".join(lines)


def hint_lines(rows: Iterable[HintRow]) -> Iterator[str]:
    """The hints as CSV: the header, then a line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for values in [HINT_COLUMNS, *([row.as_json()[n] for n in HINT_COLUMNS] for row in rows)]:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow("" if v is None else v for v in values)
        yield buffer.getvalue()


def borrowing_lines(rows: Iterable[BorrowingRow], by: tuple[Dimension, ...]) -> Iterator[str]:
    """The borrowing rows as CSV: the header, then a line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    names = borrowing.columns(by)
    for values in [names, *([row.as_json(by)[n] for n in names] for row in rows)]:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow("" if v is None else v for v in values)
        yield buffer.getvalue()


def borrowing_document(rows: Iterable[BorrowingRow], query: UsageQuery) -> dict[str, Any]:
    return {
        "since": query.period.since.isoformat(),
        "until": query.period.until.isoformat(),
        "by": [d.value for d in query.by],
        "teams": list(query.teams) if query.teams is not None else None,
        "rows": [row.as_json(query.by) for row in rows],
    }


def borrowing_table(rows: Iterable[BorrowingRow], by: tuple[Dimension, ...]) -> str:
    return tabulate(
        borrowing.columns(by),
        [row.as_json(by) for row in rows],
        "(nothing borrowed or lent in this period)",
    )


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "utilization":
        return f"{value:.1%}"
    if name == "busy_percent":
        return f"{value}%"
    return f"{value:.2f}" if name in ("cost", "possible_saving") else str(value)
