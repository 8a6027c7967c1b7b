"""The `orion-sql` command: set-up and checks, the schema lifecycle of a database, moving data in and out.

Oríon's own `orion db upgrade` only knows its legacy storage; this command runs
orion_sql's Alembic revisions, with the manners of Oríon's CLI (a warning, a
y/N prompt, ``-f/--force``, ``-c/--config``). `import` and `export` copy
experiments from and to Oríon's legacy storage (see :mod:`orion_sql.importer`
and :mod:`orion_sql.exporter`); `setup` and `test` are the storage guide's first steps
(see :mod:`orion_sql.setup_command` and :mod:`orion_sql.test_command`).
The database is found as the storage finds it (see :func:`orion_sql.location.configured_url`).
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence

from alembic.util import CommandError
from orion.core.io.database import OutdatedDatabaseError
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from tqdm import tqdm

from orion_sql import setup_command, test_command
from orion_sql.database import Database
from orion_sql.exporter import export_to_pickleddb
from orion_sql.importer import ConflictError, import_documents
from orion_sql.legacy_db import LegacyDatabaseError, describe, read_source
from orion_sql.location import ConfigurationError, configured_url, redact
from orion_sql.schema import NewerDatabaseError, SchemaState, downgrade, head_revision, read_status, upgrade
from orion_sql.transfer import TransferError
from orion_sql.version import __version__

EXIT_ERROR = 1  # argparse itself exits with 2 on a usage error
EXIT_INTERRUPTED = 130
STATE_EXIT_CODES = {
    SchemaState.CURRENT: 0,
    SchemaState.OUTDATED: 3,
    SchemaState.NEWER: 4,
    SchemaState.EMPTY: 5,
}
BACKUP_WARNING = (
    "Changing the schema of your database may damage your data. Make a backup first, and stop "
    "every other process that may read or write the database until this is done."
)


class CommandFailed(Exception):
    """An expected failure, reported as one line on stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `orion-sql` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    if args.verbose:
        logging.getLogger("alembic").setLevel(logging.INFO)
        logging.getLogger("orion_sql.checks").setLevel(logging.DEBUG)  # a check's unexpected error, in full
    url: URL | None = None
    try:
        if getattr(args, "finds_its_database", False):  # setup asks for it, test reports on it
            return args.run(args)
        url = configured_url(args.url, args.config)
        database = Database(url)
        try:
            return args.run(database, args)
        finally:
            database.dispose()
    except (CommandFailed, ConfigurationError, CommandError, OutdatedDatabaseError, NewerDatabaseError) as error:
        return _fail(_first_line(error), url)
    except DBAPIError as error:
        return _fail(f"cannot use the database {_where(url)}: {_first_line(error.orig or error)}", url)
    except OSError as error:  # e.g. the SQLite file's folder cannot be created
        return _fail(f"cannot use the database {_where(url)}: {error}", url)
    except KeyboardInterrupt:
        _fail("interrupted", url)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orion-sql",
        description="Set-up and checks, schema upgrades, import and export of the Oríon `sql` storage "
        "(SQLite, PostgreSQL).",
    )
    parser.add_argument(
        "-V", "--version", action="version",
        version=f"orion-sql {__version__} (schema head {head_revision()})",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each revision as it runs, and the traceback of a check's unexpected error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upgrade_parser = commands.add_parser(
        "upgrade", help="run the schema revisions up to this package's head",
        description="Run the schema revisions up to this package's head; an empty database gets the whole schema.",
    )
    _add_database_options(upgrade_parser, prompt=True)
    upgrade_parser.set_defaults(run=run_upgrade)

    current_parser = commands.add_parser(
        "current", help="show the database's revision and whether it is up to date",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show the database's revision, this package's head, and the state of the schema.",
        epilog=textwrap.dedent(
            """\
            exit codes:
              0  up to date: the database is at this package's head
              3  outdated: at an older revision; run `orion-sql upgrade`
              4  newer: at a revision this orion_sql does not know; upgrade orion_sql
              5  empty: no orion_sql schema yet (`orion-sql upgrade` or the storage creates it)
              1  error: the database could not be found or read (2: bad command line)"""
        ),
    )
    _add_database_options(current_parser, prompt=False)
    current_parser.set_defaults(run=run_current)

    downgrade_parser = commands.add_parser(
        "downgrade", help="undo schema revisions down to REV",
        description="Undo schema revisions down to REV, to roll an orion_sql release back. "
        "Data stored in what those revisions added is lost.",
    )
    downgrade_parser.add_argument("revision", metavar="REV", help="a revision id, or `base` to remove the whole schema")
    _add_database_options(downgrade_parser, prompt=True)
    downgrade_parser.set_defaults(run=run_downgrade)

    import_parser = commands.add_parser(
        "import", help="copy every experiment of a PickledDB file or a MongoDB database into this database",
        description="Copy experiments (with their trials, EVC links and algorithm state) and benchmarks from "
        "Oríon's legacy storage into this database, in one transaction. Experiments already present with "
        "identical content are skipped; one present with different content stops the import, unless --overwrite.",
    )
    import_parser.add_argument(
        "source", metavar="SOURCE",
        help="a PickledDB file (Oríon's orion_db.pkl, or what `orion db dump` writes) or a MongoDB URL (mongodb://host/db)",
    )
    import_parser.add_argument(
        "--overwrite", action="store_true",
        help="replace experiments and benchmarks that exist with different content, trials included",
    )
    _add_database_options(import_parser, prompt=False)
    import_parser.set_defaults(run=run_import)

    export_parser = commands.add_parser(
        "export", help="write every experiment of this database to a PickledDB file",
        description="Write every experiment, trial, algorithm state and benchmark of this database to a "
        "PickledDB file that Oríon's legacy storage opens and runs on. The file is replaced atomically.",
    )
    export_parser.add_argument("destination", metavar="DEST", help="the PickledDB file to write (e.g. orion_db.pkl)")
    export_parser.add_argument("-f", "--force", action="store_true", help="replace DEST if it exists and is not empty")
    _add_database_options(export_parser, prompt=False)
    export_parser.set_defaults(run=run_export)

    setup_command.add_parser(commands)
    _add_database_options(test_command.add_parser(commands), prompt=False)
    return parser


def _add_database_options(parser: argparse.ArgumentParser, prompt: bool) -> None:
    """--url and -c (which database), and -f for the commands that ask first."""
    if prompt:
        parser.add_argument("-f", "--force", action="store_true", help="don't prompt user")
    where = parser.add_argument_group(
        "database",
        "Found as the sql storage finds it: --url, else the config file's "
        "storage.database.host, else ORION_DB_ADDRESS (or Oríon's global config), "
        "else the embedded SQLite file in Oríon's user data folder.",
    )
    where.add_argument("--url", help="SQLAlchemy URL (postgresql+psycopg://user@host/db) or SQLite file path")
    where.add_argument("-c", "--config", metavar="path-to-config", help="user provided orion configuration file")


def run_upgrade(database: Database, args: argparse.Namespace) -> int:
    status = read_status(database)
    status.check(migrating=True)
    head = head_revision()
    if status.state is SchemaState.CURRENT:
        print(f"{redact(database.url)} is already at head {head}; nothing to do.")
        return 0
    if not _confirmed(args, f"Upgrade {redact(database.url)} from {_name(status.revision)} to {head}?"):
        return 0
    before, after = upgrade(database)
    print(f"Upgraded {redact(database.url)} from {_name(before)} to {_name(after)}.")
    return 0


def run_current(database: Database, args: argparse.Namespace) -> int:
    status = read_status(database)
    print(f"database: {redact(database.url)}")
    print(f"revision: {_name(status.revision)}")
    print(f"head:     {head_revision()} (orion_sql {__version__})")
    print(f"state:    {status.state.value}")
    if status.state is SchemaState.OUTDATED:
        print("Run `orion-sql upgrade` to bring it to head.")
    elif status.state is SchemaState.NEWER:
        print(status.refusal())
    return STATE_EXIT_CODES[status.state]


def run_downgrade(database: Database, args: argparse.Namespace) -> int:
    status = read_status(database)
    status.check(migrating=True)
    if status.state is SchemaState.EMPTY:
        print(f"{redact(database.url)} has no orion_sql schema; nothing to downgrade.")
        return 0
    if not _confirmed(args, f"Downgrade {redact(database.url)} from {status.revision} to {args.revision}?"):
        return 0
    before, after = downgrade(database, args.revision)
    print(f"Downgraded {redact(database.url)} from {_name(before)} to {_name(after)}.")
    return 0


def run_import(database: Database, args: argparse.Namespace) -> int:
    try:
        documents = read_source(args.source)  # before the database is touched
        _require_schema(database, allow_empty=True)  # an empty one gets the schema inside the import
        summary = import_documents(database, documents, overwrite=args.overwrite, progress=_progress)
    except ConflictError as error:
        raise CommandFailed(
            f"{error} (use --overwrite to replace {'it' if len(error.labels) == 1 else 'them'})"
        ) from None
    except (LegacyDatabaseError, TransferError) as error:
        raise CommandFailed(str(error)) from None
    for warning in summary.warnings:
        print(f"orion-sql: warning: {warning}", file=sys.stderr)
    print(
        f"Imported {_count(summary.experiments, 'experiment')} ({_count(summary.trials, 'trial')}) and "
        f"{_count(summary.benchmarks, 'benchmark')} from {describe(args.source)} into {redact(database.url)}"
        + (f"; {summary.replaced} of them replaced what the database held" if summary.replaced else "")
        + (f"; skipped {summary.skipped} already present" if summary.skipped else "")
        + "."
    )
    return 0


def run_export(database: Database, args: argparse.Namespace) -> int:
    _require_schema(database, allow_empty=False)
    try:
        summary = export_to_pickleddb(database, args.destination, force=args.force, progress=_progress)
    except LegacyDatabaseError as error:
        raise CommandFailed(str(error)) from None
    except OSError as error:  # the file, not the database
        raise CommandFailed(f"cannot write {args.destination}: {error.strerror or error}") from None
    print(
        f"Exported {_count(summary.experiments, 'experiment')} ({_count(summary.trials, 'trial')}) and "
        f"{_count(summary.benchmarks, 'benchmark')} from {redact(database.url)} to {args.destination}."
    )
    return 0


def _require_schema(database: Database, allow_empty: bool) -> None:
    """Refuse a database whose schema is not at head (an empty one too, unless `allow_empty`)."""
    status = read_status(database)
    status.check()
    if status.state is SchemaState.EMPTY and not allow_empty:
        raise CommandFailed(f"{redact(database.url)} has no orion_sql schema; there is nothing to export")


def _progress(**options):
    """Progress bars on stderr, shown only where stderr is a terminal."""
    return tqdm(file=sys.stderr, disable=None, dynamic_ncols=True, **options)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _confirmed(args: argparse.Namespace, question: str) -> bool:
    """Oríon's manners: warn, then ask y/N unless --force. Refusing changes nothing."""
    print(BACKUP_WARNING)
    if args.force:
        return True
    answer = None
    while answer not in ("y", "yes", "n", "no"):
        answer = _ask(f"{question} (y/N) ").strip().lower() or "n"
    if answer in ("n", "no"):
        print("Cancelled; the database was not changed.")
        return False
    return True


def _ask(question: str) -> str:
    try:
        return input(question)
    except EOFError:
        raise CommandFailed("no answer on standard input; use -f/--force to proceed without asking") from None


def _name(revision: str | None) -> str:
    return revision or "base (no orion_sql schema)"


def _where(url: URL | None) -> str:
    return "(not found)" if url is None else redact(url)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _fail(message: str, url) -> int:
    """One line on stderr, never a password, even one echoed back by a driver."""
    password = getattr(url, "password", None)
    if password:
        message = message.replace(str(password), "***")
    print(f"orion-sql: error: {message}", file=sys.stderr)
    return EXIT_ERROR
