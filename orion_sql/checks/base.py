"""What a check is, what it finds, and what the checks learn from each other.

A check is a named function of a :class:`Probe` that returns a :class:`Result`
(through :func:`passed` or :func:`warning`) or raises :class:`CheckFailed` with
what to do. Checks run in order; one whose `needs` did not pass is skipped.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.engine import URL

from orion_sql.database import Database

T = TypeVar("T")


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
    advice: str | None = None  # for a failure or a warning: what to do

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
    run: Callable[[Probe], tuple]
    needs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DialectChecks:
    """What one database adds to the checklist, and its advice for the common checks."""

    checks: list[Check]
    # Sets the probe's database (and what undoes it, in its cleanups); returns a note on
    # it, if any. Raises when the database cannot be reached.
    open: Callable[[Probe], str | None]
    # The server's name and version, read on a connection.
    version: Callable[[Connection], str]
    # Advice when the server could not be reached or refused the login.
    connect_advice: Callable[[URL], str]
    # Advice when the user cannot write orion_sql's tables.
    write_advice: Callable[[URL], str]


class _Fact(Generic[T]):
    """Something a check learns for the checks after it; reading it before then is a bug."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, probe: Probe, owner: type) -> T:
        if self.name not in probe.__dict__:
            raise RuntimeError(f"the checks have not found the {self.name} yet")
        return probe.__dict__[self.name]

    def __set__(self, probe: Probe, value: T) -> None:
        probe.__dict__[self.name] = value


class Probe:
    """What the checks learn as they run, for the checks after them."""

    url = _Fact[URL]()  # set by the `url` check
    dialect = _Fact[DialectChecks]()  # the url's, set with it
    database = _Fact[Database]()  # set by the `connection` check

    def __init__(self, configured: Callable[[], URL]):
        self.configured = configured  # finds the database as the storage does (may raise)
        # SQLite: the file does not exist yet, and `database` is a scratch file beside where it will be.
        self.scratch = False
        self.facts: dict[str, Any] = {}  # what a check found for the next ones
        self.cleanups: list[Callable[[], None]] = []  # run when the checks are done

    def knows(self, fact: str) -> bool:
        return fact in self.__dict__

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
