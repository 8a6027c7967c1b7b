"""The checklist `orion-sql test` runs on a database: the common checks, then its dialect's.

A dialect joins by adding a :class:`DialectChecks` (its own checks, how to open
and name the database, its advice) to :data:`BY_BACKEND`; until then it gets the
common checks with generic advice.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.engine import URL

from orion_sql.checks.base import Check, CheckFailed, DialectChecks, Outcome, Probe, Result
from orion_sql.checks.common import COMMON_CHECKS, GENERIC, first_line
from orion_sql.checks.mariadb import MARIADB
from orion_sql.checks.postgresql import POSTGRESQL
from orion_sql.checks.sqlite import SQLITE

__all__ = ["BY_BACKEND", "Outcome", "Result", "run_checks"]

log = logging.getLogger(__name__)

BY_BACKEND: dict[str, DialectChecks] = {
    "postgresql": POSTGRESQL,
    "sqlite": SQLITE,
    "mariadb": MARIADB,
    "mysql": MARIADB,
}


def run_checks(configured: Callable[[], URL], until: str | None = None) -> list[Result]:
    """Run the checklist (or its checks up to the one named `until`) on the database
    `configured()` finds; the database holds afterwards what it held before."""
    probe = Probe(configured)
    results: dict[str, Result] = {}
    checks = list(COMMON_CHECKS)
    try:
        while checks:
            check = checks.pop(0)
            results[check.name] = _run(check, probe, results)
            if check.name == "url" and probe.knows("url"):
                probe.dialect = BY_BACKEND.get(probe.url.get_backend_name(), GENERIC)
                checks += probe.dialect.checks
            if check.name == until:
                break
    finally:
        probe.close()
    return list(results.values())


def _run(check: Check, probe: Probe, results: dict[str, Result]) -> Result:
    unmet = [name for name in check.needs if results[name].outcome not in (Outcome.PASS, Outcome.WARN)]
    if unmet:
        return Result(check.name, Outcome.SKIP, f"not run: the {unmet[0]} check did not pass")
    try:
        outcome, detail, advice = check.run(probe)
    except CheckFailed as failure:
        return Result(check.name, Outcome.FAIL, failure.detail, failure.advice)
    except Exception as error:  # a check must report, not crash the checklist
        log.debug("the %s check failed", check.name, exc_info=True)
        return Result(check.name, Outcome.FAIL, f"{type(error).__name__}: {first_line(error, probe)}",
                      "unexpected: run `orion-sql -v test` for the traceback, and report it")
    return Result(check.name, outcome, detail, advice)
