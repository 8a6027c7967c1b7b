"""`orion-sql test`: is the configured database ready for workers? One line per check.

The sql storage's counterpart of Oríon's `orion db test`, which only knows its
legacy databases. Exit status 0 when every check passes (a warning is
information, not a failure), 1 otherwise, so that a script can gate a launch on it.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Iterable

from orion_sql.checks import Outcome, Result, run_checks
from orion_sql.location import configured_url

EXIT_FAILED = 1
DESCRIPTION = (
    "Check that the database the sql storage would use is reachable and usable, before launching "
    "workers: the URL, the connection, the schema's revision, reading and writing (inside a "
    "transaction that is rolled back: nothing is left behind), the server's clock, and what the "
    "database itself needs (PostgreSQL: a pooler in front, room for workers; SQLite: WAL, a local file "
    "system; MariaDB: a scratch database for the write check while the schema does not exist yet)."
)
_MARKS = {Outcome.PASS: "pass", Outcome.WARN: "WARN", Outcome.FAIL: "FAIL", Outcome.SKIP: "skip"}


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "test", help="check that the database is reachable and usable by the sql storage",
        description=DESCRIPTION,
        epilog="exit codes: 0 every check passed (warnings allowed), 1 a check failed (2: bad command line)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run_test, finds_its_database=True)
    return parser


def run_test(args: argparse.Namespace) -> int:
    results = run_checks(lambda: configured_url(args.url, args.config))
    if args.json:
        print(json.dumps({"passed": all_passed(results), "checks": [result.as_json() for result in results]}, indent=2))
    else:
        print_results(results)
        failed = [result.check for result in results if result.outcome is Outcome.FAIL]
        print(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}." if failed
              else f"All {len(results)} checks passed.")
    return 0 if all_passed(results) else EXIT_FAILED


def all_passed(results: Iterable[Result]) -> bool:
    return all(result.outcome in (Outcome.PASS, Outcome.WARN) for result in results)


def print_results(results: Iterable[Result]) -> None:
    """One line per check; a failure or a warning adds what to do, indented."""
    for result in results:
        print(f"{_MARKS[result.outcome]}  {result.check + ':':<12} {result.detail}")
        if result.advice:
            advice = f"what to do: {result.advice}"
            print(textwrap.fill(advice, width=100, initial_indent=" " * 6, subsequent_indent=" " * 18))
