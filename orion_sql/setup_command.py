"""`orion-sql setup`: write Oríon's configuration file for the sql storage.

The sql storage's counterpart of Oríon's `orion db setup`, which only offers its
legacy databases: the same file (Oríon's user configuration file, which `orion
hunt` reads without `-c`), with ``storage: {type: sql, database: {host: URL}}``.
Every question has a flag, so that it also runs unattended.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import orion.core
import yaml
from orion.core.utils.terminal import ask_question
from sqlalchemy.engine import URL

from orion_sql.checks import run_checks
from orion_sql.location import DEFAULT_SQLITE_PATH, ConfigurationError, redact, resolve_url
from orion_sql.test_command import all_passed, print_results

EXIT_ERROR = 1
PASSWORD_ADVICE = (
    "The URL holds a password, now in {path} (readable by you alone). Oríon prints its configuration, "
    "password included, at -vv: better leave it out of the URL and let libpq find it in ~/.pgpass "
    "(host:port:database:user:password, mode 600) or in PGPASSWORD."
)


class _Stop(Exception):
    """The command ends here with this message (on stderr) and exit status 1."""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "setup", help="write Oríon's configuration file for the sql storage",
        description="Ask for the database, check that it answers, and write Oríon's configuration file "
        f"({config_file()}) so that `orion hunt` without -c uses it. Other settings in that file are kept.",
    )
    parser.add_argument("--url", help="the database: an SQLAlchemy URL (postgresql+psycopg://user@host/db) "
                        "or a SQLite file path (asked when not given)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="don't prompt user: replace the file's storage settings, "
                        "even if the database does not answer")
    parser.set_defaults(run=run_setup, finds_its_database=True)
    return parser


def config_file() -> str:
    """Where `orion db setup` writes, and Oríon reads last (the user's configuration file)."""
    return orion.core.DEF_CONFIG_FILES_PATHS[-1]


def run_setup(args: argparse.Namespace) -> int:
    try:
        path = config_file()
        settings = _existing_settings(path)
        if settings is not None and not _confirmed(
            f"{path} exists: replace its storage settings (the others are kept)?", args.force
        ):
            return 0
        url = _database(args.url)
        results = run_checks(lambda: url, until="schema")
        print_results(results)
        anyway = "The database did not pass: write the configuration anyway?"
        if not all_passed(results) and not _confirmed(anyway, args.force):
            return EXIT_ERROR
        _write(path, _with_storage(settings or {}, url), private=bool(url.password))
    except _Stop as stop:
        print(f"orion-sql: error: {stop}", file=sys.stderr)
        return EXIT_ERROR
    print(f"Wrote {path}: the sql storage on {redact(url)}.")
    if url.password:
        print(PASSWORD_ADVICE.format(path=path))
    print("Next: `orion-sql test` checks that workers can use it, then `orion hunt ...` runs on it.")
    return 0


def _existing_settings(path: str) -> dict | None:
    """The file's settings (None: no file), which the new storage section joins."""
    try:
        with open(path, encoding="utf-8") as file:
            settings = yaml.safe_load(file)
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as error:
        raise _Stop(f"cannot read {path}: {str(error).splitlines()[0]}; fix or remove it first") from None
    if not isinstance(settings, (dict, type(None))):
        raise _Stop(f"{path} is not an Oríon configuration file (not a mapping); fix or remove it first")
    return settings or {}


def _database(given: str | None) -> URL:
    """The database, from --url or asked for (the embedded SQLite file by default)."""
    answer = given or _ask(
        "Enter the database: an SQLAlchemy URL (postgresql+psycopg://user@host/db) or a SQLite file path",
        default=DEFAULT_SQLITE_PATH,
    )
    try:
        return resolve_url(answer.strip())
    except ConfigurationError as error:
        raise _Stop(str(error)) from None


def _with_storage(settings: dict[str, Any], url: URL) -> dict[str, Any]:
    """`settings` with the sql storage on `url`; a top-level `database` (what `orion db
    setup` writes, an alias of storage.database in Oríon) would fight it, so it goes."""
    host = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=False)
    kept = {key: value for key, value in settings.items() if key not in ("storage", "database")}
    return {**kept, "storage": {"type": "sql", "database": {"host": host}}}


def _write(path: str, settings: dict, private: bool) -> None:
    """Write through a temporary file and a rename; mode 600 when it holds a password."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".orion_config.", suffix=".yaml")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            yaml.safe_dump(settings, file, default_flow_style=False)
        os.chmod(temporary, 0o600 if private else 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.remove(temporary)
        raise


def _confirmed(question: str, force: bool) -> bool:
    if force:
        return True
    return _ask(question, default="n", choice=["y", "n"]).lower() == "y"


def _ask(question: str, default: str, choice: list[str] | None = None) -> str:
    try:
        return ask_question(question, default=default, choice=choice, ignore_case=True)
    except EOFError:
        raise _Stop("no answer on standard input; give --url, and -f/--force to run unattended") from None
