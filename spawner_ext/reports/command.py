"""`gpuhub report`: a team's usage from the billing ledger, in the terminal or as CSV/JSON, with
the same rows as the service's API (in the spirit of Slurm's `sreport`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import select

from ..catalog import CatalogError, load_catalog
from ..clock import utcnow
from ..ledger.engine import DEFAULT_URL, SchemaError, check_schema, make_engine
from ..ledger.models import UsageSession
from .export import csv_lines, json_text, table
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


def _known_teams(engine: Any, config: str | None) -> set[str]:
    if config:
        return set(load_catalog(config).teams)
    with engine.connect() as connection:
        found = connection.execute(select(UsageSession.team).distinct())
        return {team for (team,) in found if team}
