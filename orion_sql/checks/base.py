"""What a check is, what it finds, and what the checks learn from each other.

A check is a named function of a :class:`Probe` that returns a :class:`Result`
(through :func:`passed` or :func:`warning`) or raises :class:`CheckFailed` with
what to do. Checks run in order; one whose `needs` did not pass is skipped.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Optional

from sqlalchemy import Connection
from sqlalchemy.engine import URL

from orion_sql.database import Database


class Outcome(enum.Enum):
    PASS = "pass"
    WARN = "warn"  # worth reading, but no reason to hold a launch back
    FAIL = "fail"
    SKIP = "skip"  # not run: a check it needs did not pass


@dataclasses.dataclass(frozen=True)
class Result:
    check: str
    outcome: Outcome
    detail: str  # what was found
    advice: Optional[str] = None  # for a failure or a warning: what to do

    def as_json(self) -> dict:
        return {"check": self.check, "outcome": self.outcome.value, "detail": self.detail, "advice": self.advice}


class CheckFailed(Exception):
    """Raised by a check: what it found (`detail`) and what to do (`advice`)."""

    def __init__(self, detail: str, advice: str):
        super().__init__(detail)
        self.detail = detail
        self.advice = advice


def passed(detail: str) -> tuple[Outcome, str, None]:
    return Outcome.PASS, detail, None


def warning(detail: str, advice: str) -> tuple[Outcome, str, str]:
    return Outcome.WARN, detail, advice


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    summary: str  # what it checks, in a few words
    run: Callable[["Probe"], tuple]
    needs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DialectChecks:
    """What one database adds to the checklist, and its advice for the common checks."""

    checks: list[Check]
    # Sets the probe's database (and what undoes it, in its cleanups); returns a note on
    # it, if any. Raises when the database cannot be reached.
    open: Callable[["Probe"], Optional[str]]
    # The server's name and version, read on a connection.
    version: Callable[[Connection], str]
    # Advice when the server could not be reached or refused the login.
    connect_advice: Callable[[URL], str]
    # Advice when the user cannot write orion_sql's tables.
    write_advice: Callable[[URL], str]


@dataclasses.dataclass
class Probe:
    """What the checks learn as they run, for the checks after them."""

    configured: Callable[[], URL]  # finds the database as the storage does (may raise)
    url: Optional[URL] = None  # set by the `url` check
    dialect: Optional[DialectChecks] = None  # the url's, set with it
    database: Optional[Database] = None  # set by the `connection` check
    # SQLite: the file does not exist yet, and `database` is a scratch file beside where it will be.
    scratch: bool = False
    facts: dict = dataclasses.field(default_factory=dict)  # what a check found for the next ones
    cleanups: list = dataclasses.field(default_factory=list)  # run when the checks are done

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
