"""The interface every dialect implements."""
from __future__ import annotations

import abc
import datetime
import enum
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Executable, Select, Table, literal, null
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import exact_json
from orion_sql.settings import ConnectionSettings

JsonPath = Sequence[str]
# Execution option marking a transaction that will write (SQLite begins it IMMEDIATE).
WRITE_OPTION = "orion_sql_write"
# Key of a connection's info: True when it reaches the server through a pooler in
# front of it (see PostgreSQLDialect.prepare_engine); lock waiters then poll.
BEHIND_POOLER = "orion_sql_behind_pooler"


class ErrorKind(enum.Enum):
    """What a database error means to the storage."""

    UNIQUE_VIOLATION = "unique"  # -> DuplicateKeyError
    MISSING_REFERENCE = "foreign key"  # a row refers to one that does not exist
    TRANSIENT = "transient"  # deadlock, serialization failure, busy: safe to retry
    LOCK_NOT_AVAILABLE = "lock not available"  # lock timeout or NOWAIT refused
    DISCONNECT = "disconnect"  # lost mid-work: retry only what is safe to repeat
    UNAVAILABLE = "unavailable"  # no connection (restarting, too many clients): nothing was sent


class Dialect(abc.ABC):
    """Database-specific behaviour behind one interface; a dialect lacking a method
    marked abstract cannot be instantiated."""

    name: str
    # The database as a person names it (what `orion serve` reports): SQLite, PostgreSQL.
    product: str
    # Whether a transaction can hold a row lock that others wait on (see algo_lock).
    has_row_locks: bool
    # Whether a statement may write inside WITH (then select what it wrote): see statements.
    writes_in_with: bool = False
    # Whether DDL runs inside transactions (MariaDB commits each DDL statement by itself).
    transactional_ddl: bool = True
    # Whether UPDATE ... RETURNING exists (MariaDB returns rows from INSERT and DELETE only).
    update_returning: bool = True

    def json_serializer(self, value: Any) -> str:
        """The text a JSON column holds for `value` (see :mod:`orion_sql.exact_json`)."""
        return exact_json.dumps(value)

    @abc.abstractmethod
    def engine_options(self, settings: ConnectionSettings) -> dict[str, Any]:
        """Extra keyword arguments for `sqlalchemy.create_engine`."""

    def engine_url(self, url: URL) -> URL:
        """The URL the engine connects with (without what only orion_sql reads)."""
        return url

    def prepare_engine(self, engine: Engine, settings: ConnectionSettings) -> None:
        """Install per-connection settings and transaction handling on a new engine."""

    def transaction_options(self, write: bool, autocommit: bool) -> dict[str, Any]:
        """Execution options for work that writes or not, and whose statements must
        share one transaction or may each commit on their own (`autocommit`)."""
        return {WRITE_OPTION: True} if write else {}

    def began(self, conn: Connection, write: bool, autocommit: bool) -> None:
        """Called as :meth:`Database.transaction` begins a transaction, before its first
        statement. A method, not a ``begin`` listener: one connection event listener
        costs every statement on the engine its event dispatch (~50 µs of CPU a
        transaction of three statements on PyMySQL)."""

    @abc.abstractmethod
    def now(self, minus: datetime.timedelta | None = None) -> ColumnElement[datetime.datetime]:
        """The database server's clock as naive UTC, optionally `minus` a duration."""

    def classify(self, error: DBAPIError, connecting: bool = False) -> ErrorKind | None:
        """What a database error means, or None when it means nothing special;
        `connecting`: raised while opening the connection, before any work."""
        if error.connection_invalidated:
            return ErrorKind.DISCONNECT
        return None

    def sync_id_sequence(self, conn: Connection, table: Table, explicit_id: int) -> None:
        """After inserting an explicit id, keep future generated ids clear of it."""

    def upsert_values(self, table: Table, trial_id: ColumnElement, bind: str):
        """Where `writes_in_with`: a CTE upserting into the params or results `table`,
        by (trial_id, position), the rows :meth:`values_payload` encoded in `bind`."""
        raise NotImplementedError(f"{self.name} cannot write inside WITH")

    def values_payload(self, rows: list[dict]) -> str:
        """Rows of :func:`mapping.value_rows` encoded for :meth:`upsert_values`."""
        raise NotImplementedError(f"{self.name} cannot write inside WITH")

    def trial_change_mark(self, experiments: Table) -> ColumnElement:
        """What this snapshot has seen of trial changes (in a query on `experiments`):
        the value :meth:`unseen_trial_changes` takes as ``since``. See revision 0003."""
        raise NotImplementedError(f"{self.name} does not track trial changes")

    def unseen_trial_changes(self, stamp: ColumnElement[int]) -> ColumnElement[bool]:
        """True where a trial row's `stamp` was written by a transaction the snapshot
        whose mark is bound as ``since`` did not see; everywhere when ``since`` is NULL."""
        raise NotImplementedError(f"{self.name} does not track trial changes")

    def trial_change_barrier(self) -> Executable | None:
        """Where a snapshot cannot tell which trial changes it saw (MariaDB): a statement
        that waits until every trial write under way in the experiment bound as
        ``experiment`` has ended, and returns a mark that every stamp of those writes is
        below (no row: the experiment is gone). A snapshot taken after it has seen every
        stamp below that mark. None where :meth:`trial_change_mark` says it."""
        return None

    def server_run(self) -> ColumnElement:
        """In a query: what tells this run of the database server from the next (NULL
        where there is no server). A trial change mark is of one run: after a crash, a
        server may hand out again the values a reader's mark was taken after."""
        return null()

    def trial_deletions(self, experiments: Table) -> ColumnElement[int]:
        """In a query on `experiments`: how many of the experiment's trials were ever
        deleted (or moved to another experiment). See revision 0003."""
        return experiments.c.trial_deletions

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        """Inside a transaction: wait at most `seconds` for a row lock (row-locking databases)."""
        raise NotImplementedError(f"{self.name} has no row locks")

    def through_index(self, select_: Select, table: Table, index: str) -> Select:
        """`select_`, told to read `table` through `index` where the planner would not."""
        return select_

    def lock_for_migration(self, conn: Connection) -> None:
        """Inside a write transaction: make concurrent schema initialisations wait."""

    # --- JSON documents ---------------------------------------------------------
    # `kind` names are canonical: null, boolean, number, string, array, object.

    @abc.abstractmethod
    def json_kind_in(self, doc: ColumnElement, path: JsonPath, kinds: Sequence[str]) -> ColumnElement[bool]:
        """True where the value at `path` exists and is of one of `kinds`."""

    @abc.abstractmethod
    def json_exists(self, doc: ColumnElement, path: JsonPath) -> ColumnElement[bool]:
        """True where `path` exists in the document (its value may be JSON null)."""

    @abc.abstractmethod
    def json_text(self, doc: ColumnElement, path: JsonPath) -> ColumnElement[str]:
        """The value at `path` as text: a string's characters, other values as JSON."""

    @abc.abstractmethod
    def json_number(self, doc: ColumnElement, path: JsonPath) -> ColumnElement:
        """The value at `path` as a number; only meaningful where it is one."""

    @abc.abstractmethod
    def json_equals(self, doc: ColumnElement, path: JsonPath, json_text: str) -> ColumnElement[bool]:
        """True where the value at `path` equals the JSON value `json_text`."""

    @abc.abstractmethod
    def text_number(self, text: ColumnElement[str]) -> ColumnElement:
        """A finite number written as text (a tagged float), comparable with :meth:`json_number`."""

    def number_literal(self, value: int | float) -> ColumnElement:
        """`value` as a SQL operand compared exactly with :meth:`json_number`."""
        return literal(value)

    def infinity(self, value: float) -> Any:
        """An infinite float as a SQL operand compared with number columns."""
        return value

    def nulls_first(self, expression: ColumnElement) -> ColumnElement:
        """`expression` in ascending order, NULL before any value."""
        return expression.asc().nulls_first()

    def ordered_text(self, expression: ColumnElement[str]) -> ColumnElement[str]:
        """A text expression that orders by code point, as Python compares strings."""
        return expression
