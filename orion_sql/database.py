"""One database as a process sees it: an engine, transactions, retries.

The engine is built lazily and rebuilt in a forked child (connections are never
shared across a fork); pickling keeps only the URL. Transient failures (deadlock,
serialization failure, SQLite busy) are retried with jittered backoff; a lost
connection is retried only for work that is safe to repeat. Anything else
surfaces unchanged, except constraint violations, which become the errors Oríon
expects.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
from typing import Callable, Iterator, TypeVar

from orion.core.io.database import DuplicateKeyError
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from orion_sql.dialects import Dialect, ErrorKind, dialect_for
from orion_sql.engine import build_engine, redact

log = logging.getLogger(__name__)

T = TypeVar("T")
ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 0.01


class MissingReference(ValueError):
    """A row refers to another that does not exist (a foreign key violation)."""


class Database:
    """A database URL, its dialect, and this process's engine for it."""

    def __init__(self, url: URL):
        self.url = url
        self.dialect: Dialect = dialect_for(url)
        self._engine: Engine | None = None
        self._engine_pid: int | None = None

    @property
    def engine(self) -> Engine:
        """This process's engine; a forked child drops its parent's connections."""
        if self._engine_pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)
            self._engine = build_engine(self.url)
            self._engine_pid = os.getpid()
        return self._engine

    def dispose(self) -> None:
        """Close this process's connections (they reopen on next use)."""
        if self._engine is not None and self._engine_pid == os.getpid():
            self._engine.dispose()

    @contextlib.contextmanager
    def transaction(self, write: bool = False, atomic: bool = True) -> Iterator[Connection]:
        """One transaction, committed on success, rolled back on any exception.

        Not `atomic`: the work's statements need not share a transaction (one
        statement, or statements that stand alone), and may each commit by itself.
        """
        with self.engine.connect() as conn:
            conn.execution_options(**self.dialect.transaction_options(write, atomic))
            with conn.begin():
                yield conn

    def run(self, work: Callable[[Connection], T], *, write: bool, repeatable: bool = False, atomic: bool = True) -> T:
        """Run `work` in one transaction (see :meth:`transaction`), retrying it after
        transient failures.

        `repeatable` says the work may also be repeated after a lost connection,
        when it is unknown whether its commit reached the server (reads, and
        writes that give the same result twice).
        """
        attempt = 0
        while True:
            try:
                with self.transaction(write, atomic) as conn:
                    return work(conn)
            except DBAPIError as error:
                kind = self.dialect.classify(error)
                if kind is ErrorKind.UNIQUE_VIOLATION:
                    raise DuplicateKeyError(_first_line(error)) from error
                if kind is ErrorKind.MISSING_REFERENCE:
                    raise MissingReference(_first_line(error)) from error
                retry = kind is ErrorKind.TRANSIENT or (kind is ErrorKind.DISCONNECT and repeatable)
                attempt += 1
                if not retry or attempt == ATTEMPTS:
                    raise
                delay = FIRST_BACKOFF_SECONDS * 2**attempt * random.uniform(0.5, 1.5)
                log.debug("retrying after %s (%s), in %.3fs", kind.value, _first_line(error), delay)
                time.sleep(delay)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r})"

    def __getstate__(self) -> dict:
        return {"url": self.url.render_as_string(hide_password=False)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(make_url(state["url"]))


def process_name() -> str:
    """How this process names itself in the database (trial worker, lock owner): host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _first_line(error: DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0]
