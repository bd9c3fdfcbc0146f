"""The `gpuhub` command: validate catalogs, print the catalog schema, migrate a Zero to JupyterHub
profile list (and more, per subcommand)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence

from .catalog import CatalogError, load_catalog
from .catalog.loader import catalog_warnings, read_catalog_text
from .catalog.migrate import migrate_values
from .catalog.reference import json_schema, markdown
from .ledger.engine import DEFAULT_URL
from .reports.command import add_report_command
from .service.command import add_service_command
from .up import add_up_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = args.run(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuhub", description="A multi-tenant GPU notebook platform built on JupyterHub."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = sub.add_parser(
        "validate",
        help="check catalog files; print FILE:LINE:COL: path: problem for every problem",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="catalog YAML files")
    validate.set_defaults(run=_validate)

    schema = sub.add_parser("schema", help="print the catalog's JSON Schema (for editors)")
    schema.add_argument(
        "--markdown", action="store_true", help="print the reference page instead (docs/)"
    )
    schema.set_defaults(run=_schema)

    migrate = sub.add_parser(
        "migrate",
        help="write a catalog made from a Zero to JupyterHub values file's "
        "singleuser.profileList to standard output; what it cannot tell is a TODO",
    )
    migrate.add_argument("values", metavar="VALUES", help="the z2jh values YAML file")
    migrate.add_argument(
        "--currency",
        default="USD",
        type=_currency,
        help="ISO 4217 code of the prices you will fill in (default: USD)",
    )
    migrate.set_defaults(run=_migrate)

    db = sub.add_parser("db", help="manage the billing database")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    upgrade = db_sub.add_parser("upgrade", help="create or upgrade the billing schema")
    upgrade.add_argument(
        "--db-url",
        default=DEFAULT_URL,
        help=f"SQLAlchemy URL of the billing database (default: {DEFAULT_URL})",
    )
    upgrade.set_defaults(run=_db_upgrade)

    add_up_command(sub)
    add_service_command(sub)
    add_report_command(sub)
    return parser


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for file in args.files:
        try:
            catalog = load_catalog(file)
        except CatalogError as exc:
            failed += 1
            print(exc, file=sys.stderr)
            continue
        for warning in catalog_warnings(read_catalog_text(file), file):
            print(f"warning: {warning}", file=sys.stderr)
        print(
            f"{file}: ok ({len(catalog.gpu_types)} GPU types, {len(catalog.teams)} teams, "
            f"{len(catalog.profiles)} profiles)"
        )
    return 1 if failed else 0


def _currency(text: str) -> str:
    if not re.fullmatch(r"[A-Z]{3}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 4217 code such as USD or EUR")
    return text


def _migrate(args: argparse.Namespace) -> int:
    try:
        text = read_catalog_text(args.values)
        migration = migrate_values(text, args.values, currency=args.currency)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        print("gpuhub migrate: nothing written", file=sys.stderr)
        return 2
    sys.stdout.write(migration.text)
    for note in migration.notes:
        print(dataclasses.replace(note, message=f"note: {note.message}"), file=sys.stderr)
    for question in sorted(migration.questions):
        print(dataclasses.replace(question, message=f"TODO: {question.message}"), file=sys.stderr)
    if migration.questions:
        print(
            f"gpuhub migrate: {len(migration.questions)} question(s) to answer where the output "
            "says TODO; it does not load until then (check it with gpuhub validate)",
            file=sys.stderr,
        )
        return 1
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .ledger.engine import current_revision, head_revision, make_engine, redacted, upgrade

    try:
        upgrade(args.db_url)
        engine = make_engine(args.db_url)
        revision = current_revision(engine)
        engine.dispose()
    except (SQLAlchemyError, OSError) as exc:
        shown = redacted(args.db_url)
        print(f"gpuhub db upgrade: cannot upgrade {shown}: {exc}", file=sys.stderr)
        return 1
    print(f"{redacted(args.db_url)}: billing schema at {revision} (head {head_revision()})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(markdown())
    else:
        print(json.dumps(json_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
