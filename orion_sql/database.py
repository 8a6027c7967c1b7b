"""One database as a process sees it: its engine, transactions, retries.

The engine is built here, tuned by the dialect and the connection settings; it is
built lazily and rebuilt in a forked child (connections are never shared across a
fork); pickling keeps the URL and the settings. Transient failures (a server that
refuses connections while it restarts, too many clients, a lost connection,
deadlock, serialization failure, SQLite busy) are retried with jittered backoff
for up to the settings' retry time, with one log line per episode. After a lost
connection a write is repeated only if it is idempotent or says how to find its
own earlier outcome. Anything else surfaces unchanged, except constraint
violations, which become the errors Oríon expects.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from orion.core.io.database import DatabaseError, DuplicateKeyError
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

from orion_sql import exact_json
from orion_sql.dialects import Dialect, ErrorKind, dialect_for
from orion_sql.location import DEFAULT_SQLITE_PATH, redact
from orion_sql.settings import ConnectionSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_BACKOFF_SECONDS = 0.01
LAST_BACKOFF_SECONDS = 2.0
# A pooled connection idle longer than this is pinged before it is used again.
PING_AFTER_IDLE_SECONDS = 2.0


class MissingReference(ValueError):
    """A row refers to another that does not exist (a foreign key violation)."""


class DatabaseUnreachable(DatabaseError):
    """The database cannot be reached or opened (a DatabaseError: Oríon's command line
    prints its message as one line)."""


class Database:
    """A database URL, its dialect, and this process's engine for it.

    Each is an instance of a subclass named after its product (``SQLite``,
    ``PostgreSQL``): Oríon's web API (`orion serve`) reports the class name of
    ``storage._db`` as the database.
    """

    def __new__(cls, url: URL | str, *args, **kwargs):
        if cls is Database:
            cls = _named_after(dialect_for(make_url(url)).product)
        return super().__new__(cls)

    def __init__(self, url: URL | str, settings: ConnectionSettings | None = None):
        url = make_url(url)
        self.url = url
        self.settings = settings or ConnectionSettings()
        self.dialect: Dialect = dialect_for(url)
        self._engine: Engine | None = None
        self._engine_pid: int | None = None

    @property
    def engine(self) -> Engine:
        """This process's engine; a forked child drops its parent's connections."""
        engine = self._engine
        if engine is None or self._engine_pid != os.getpid():
            if engine is not None:
                engine.dispose(close=False)
            engine = self._engine = build_engine(self.url, self.settings)
            self._engine_pid = os.getpid()
        return engine

    def dispose(self) -> None:
        """Close this process's connections (they reopen on next use)."""
        if self._engine is not None and self._engine_pid == os.getpid():
            self._engine.dispose()

    @contextlib.contextmanager
    def transaction(self, write: bool = False, autocommit: bool = False) -> Iterator[Connection]:
        """One transaction, committed on success, rolled back on any exception.

        `autocommit`: the work's statements need not share a transaction (one
        statement, or statements that stand alone), and may each commit by itself.
        """
        with self.engine.connect() as conn:
            options = self.dialect.transaction_options(write, autocommit)
            if options:  # none on MariaDB: the call itself costs microseconds on every transaction
                conn.execution_options(**options)
            with conn.begin():
                self.dialect.began(conn, write, autocommit)
                yield conn

    def run(
        self,
        work: Callable[[Connection], T],
        *,
        write: bool,
        idempotent: bool = False,
        autocommit: bool = False,
        after_lost: Callable[[Connection], T] | None = None,
    ) -> T:
        """Run `work` in one transaction (see :meth:`transaction`), retrying it after
        transient failures for up to the retry time.

        After a lost connection it is unknown whether a write's commit reached the
        server: a write is repeated then only if `idempotent` (the same result twice),
        or through `after_lost`, which finds the earlier attempt's outcome or does the
        work anew. Reads always are.
        """
        episode = RetryEpisode(self.settings.retry_time)
        while True:
            connected: list[Connection] = []
            try:
                with self.transaction(write, autocommit) as conn:
                    connected.append(conn)
                    return work(conn)
            except DBAPIError as error:
                kind = self.dialect.classify(error, connecting=not connected)
                if kind is ErrorKind.UNIQUE_VIOLATION:
                    raise DuplicateKeyError(first_line(error)) from error
                if kind is ErrorKind.MISSING_REFERENCE:
                    raise MissingReference(first_line(error)) from error
                if kind is ErrorKind.DISCONNECT and write and not idempotent:
                    if after_lost is None:
                        raise
                    work = after_lost
                elif kind not in (ErrorKind.TRANSIENT, ErrorKind.UNAVAILABLE, ErrorKind.DISCONNECT):
                    raise
                episode.pause(kind, error)

    @contextlib.contextmanager
    def rolled_back(self) -> Iterator[Database]:
        """This database inside one write transaction that is always rolled back: what
        is done through the database yielded leaves nothing behind, even on failure."""
        with self.engine.connect() as conn:
            conn.execution_options(**self.dialect.transaction_options(write=True, autocommit=False))
            transaction = conn.begin()
            try:
                yield _BoundDatabase(self.url, conn)
            finally:
                transaction.rollback()

    @contextlib.contextmanager
    def reachable(self) -> Iterator[None]:
        """Turn a failure to connect or open the database into one line naming it and the cause."""
        try:
            yield
        except OperationalError as error:
            raise DatabaseUnreachable(f"cannot reach the database {redact(self.url)}: {first_line(error)}") from None
        except OSError as error:  # a SQLite file whose folder cannot be made
            raise DatabaseUnreachable(f"cannot open the database {redact(self.url)}: {error}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r})"

    def __reduce__(self):
        """Pickled as its URL and settings: the copy builds its own engine."""
        return Database, (self.url.render_as_string(hide_password=False), self.settings)


class _BoundDatabase(Database):
    """A database whose transactions are savepoints inside one connection's transaction.

    Used from several threads (the SQLite lock's heartbeat), one at a time.
    Neither pickled nor forked: it lives as long as the transaction it is bound to.
    """

    def __init__(self, url: URL, conn: Connection):
        super().__init__(url)
        self._conn = conn
        self._one_at_a_time = threading.RLock()

    @property
    def engine(self) -> Engine:
        raise TypeError("a database bound to one connection has no engine of its own")

    def dispose(self) -> None:
        """The connection belongs to whoever bound it."""

    @contextlib.contextmanager
    def transaction(self, write: bool = False, autocommit: bool = False) -> Iterator[Connection]:
        with self._one_at_a_time, self._conn.begin_nested():
            yield self._conn

    def __reduce__(self):
        raise TypeError("a database bound to one connection cannot be pickled")


@functools.cache
def _named_after(product: str) -> type[Database]:
    return type(product, (Database,), {"__doc__": f"A {product} database.", "__module__": __name__})


def process_name() -> str:
    """How this process names itself in the database (trial worker, lock owner): host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def first_line(error: DBAPIError) -> str:
    return (str(error.orig).strip().splitlines() or [type(error.orig).__name__])[0]


class RetryEpisode:
    """Backoff with jitter, from 10 ms doubling to 2 s, until `retry_time` has passed;
    one log line when the episode begins, not one per attempt."""

    def __init__(self, retry_time: float):
        self.deadline = time.monotonic() + retry_time
        self.retry_time = retry_time
        self.delay = FIRST_BACKOFF_SECONDS
        self.attempts = 0

    def pause(self, kind: ErrorKind, error: DBAPIError) -> None:
        """Sleep before the next attempt, or re-raise `error` once the time is up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise error
        if self.attempts == 0 and kind is not ErrorKind.TRANSIENT:
            log.warning("database %s (%s); retrying for up to %.0fs", kind.value, first_line(error), self.retry_time)
        self.attempts += 1
        time.sleep(min(remaining, self.delay * random.uniform(0.5, 1.5)))
        self.delay = min(self.delay * 2, LAST_BACKOFF_SECONDS)


def build_engine(url: URL, settings: ConnectionSettings) -> Engine:
    """An engine for `url`, tuned by its dialect and `settings`, with exact JSON in JSON columns."""
    dialect = dialect_for(url)
    if url.get_backend_name() == "sqlite" and url.database and not os.path.exists(url.database):
        os.makedirs(os.path.dirname(url.database), exist_ok=True)
        if url.database != DEFAULT_SQLITE_PATH:
            log.info("orion_sql: creating the SQLite database %s", url.database)
    options = dialect.engine_options(settings)
    connect_url = dialect.engine_url(url)
    # What the URL's query sets (`?connect_timeout=30`) wins over the dialect's defaults.
    options["connect_args"] = {
        key: value for key, value in options.get("connect_args", {}).items() if key not in connect_url.query
    }
    engine = create_engine(
        connect_url, json_serializer=dialect.json_serializer, json_deserializer=exact_json.loads, **options
    )
    dialect.prepare_engine(engine, settings)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Pre-ping pooled connections that sat idle long enough to have been dropped.

    A server restart or an idle-connection timeout kills connections while they
    wait in the pool; a dead one is replaced before use. A connection used
    moments ago is not pinged: a ping on every checkout would add a round trip
    to every storage call.
    """

    @event.listens_for(engine, "checkin")
    def remember_last_use(dbapi_connection, record):
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection, record, proxy):
        if time.monotonic() - record.info.get("checked_in", time.monotonic()) < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"pooled connection is dead: {error}") from error
