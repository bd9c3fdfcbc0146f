"""`gpuhub report`: a team's usage from the billing ledger, in the terminal or as CSV/JSON, with
the same rows as the service's API (in the spirit of Slurm's `sreport`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import select

from ..catalog import CatalogError, load_catalog
from ..clock import utcnow
from ..ledger.engine import DEFAULT_URL, SchemaError, check_schema, make_engine
from ..ledger.models import UsageSession
from ..ledger.store import Ledger
from .borrowing_query import read_borrowing
from .export import (
    HINT_COLUMNS,
    borrowing_document,
    borrowing_lines,
    borrowing_table,
    csv_lines,
    hint_lines,
    json_text,
    table,
    tabulate,
)
from .hint_query import read_hints
from .query import ReportError, parse_usage_query
from .usage import usage_rows


def add_report_command(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="GPU-hours and cost from the billing ledger, by user, profile, GPU type or day",
        description="Sum the billing ledger for a period (half-open UTC days; default: this "
        "month). Rows are always per team and currency.",
    )
    report.add_argument(
        "--team", action="append", default=[], help="a team (repeatable; default: all)"
    )
    report.add_argument("--user", help="only this user's sessions")
    report.add_argument("--since", help="first day, YYYY-MM-DD (UTC)")
    report.add_argument("--until", help="day after the last, YYYY-MM-DD (exclusive)")
    report.add_argument(
        "--by",
        action="append",
        default=[],
        help="user, profile, gpu-type, day or session (repeatable or comma-separated)",
    )
    report.add_argument(
        "--hints",
        action="store_true",
        help="right-sizing hints instead of usage: per team, user and profile, the cheaper "
        "profile that would have done and the period's possible saving (needs --config: the "
        "catalog's profiles, prices and GPU memory)",
    )
    report.add_argument(
        "--borrowing",
        action="store_true",
        help="borrowing instead of usage: per team (and --by user, day or gpu-type) the "
        "GPU-hours it borrowed, lent to other teams (no user named) and lost to reclaim",
    )
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument(
        "--db-url", default=DEFAULT_URL, help=f"the billing database (default: {DEFAULT_URL})"
    )
    report.add_argument(
        "--config", help="the catalog, to check team names against (default: the ledger's teams)"
    )
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    engine = make_engine(args.db_url)
    try:
        check_schema(engine, args.db_url)
        known = _known_teams(engine, args.config)
        params = {
            "team": args.team,
            "by": args.by,
            **{k: [v] for k in ("since", "until", "user") if (v := getattr(args, k))},
        }
        now = utcnow()
        query = parse_usage_query(params, known_teams=known, today=now.date())
        if args.hints and args.borrowing:
            raise ReportError("choose --hints or --borrowing, not both")
        if args.hints:
            return _hints(engine, args, query, now)
        if args.borrowing:
            return _borrowing(engine, args, query, now)
        rows = usage_rows(engine, query, now)
        if args.format == "csv":
            for line in csv_lines(rows, query.by):
                sys.stdout.write(line)
        elif args.format == "json":
            print(json_text(rows, query))
        else:
            print(table(list(rows), query.by))
    except (ReportError, CatalogError, SchemaError) as exc:
        print(f"gpuhub report: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _hints(engine: Any, args: argparse.Namespace, query: Any, now: Any) -> int:
    if not args.config:
        raise ReportError(
            "--hints needs --config: the catalog says which profiles a team may "
            "start, at what price, with how much GPU memory"
        )
    if query.by:
        raise ReportError("--hints are per team, user and profile; leave out --by")
    rows = read_hints(Ledger(engine), load_catalog(args.config), query, now)
    if args.format == "csv":
        for line in hint_lines(rows):
            sys.stdout.write(line)
    elif args.format == "json":
        document = {
            "since": query.period.since.isoformat(),
            "until": query.period.until.isoformat(),
            "teams": list(query.teams) if query.teams is not None else None,
            "rows": [row.as_json() for row in rows],
        }
        print(json.dumps(document, indent=2))
    else:
        print(tabulate(HINT_COLUMNS, [row.as_json() for row in rows], empty="(no GPU sessions)"))
    return 0


def _borrowing(engine: Any, args: argparse.Namespace, query: Any, now: Any) -> int:
    rows = read_borrowing(engine, query, now)
    if args.format == "csv":
        for line in borrowing_lines(rows, query.by):
            sys.stdout.write(line)
    elif args.format == "json":
        print(json.dumps(borrowing_document(rows, query), indent=2))
    else:
        print(borrowing_table(rows, query.by))
    return 0


def _known_teams(engine: Any, config: str | None) -> set[str]:
    if config:
        return set(load_catalog(config).teams)
    with engine.connect() as connection:
        found = connection.execute(select(UsageSession.team).distinct())
        return {team for (team,) in found if team}
