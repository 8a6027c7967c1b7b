"""MariaDB (10.6 or newer) through PyMySQL: many machines, row locks, the server's clock.

What differs from PostgreSQL, and how it is met here:

- No ``UPDATE ... RETURNING`` (MariaDB returns rows from INSERT and DELETE only):
  reservation and completion take a few statements in one transaction, see
  :mod:`orion_sql.statements` (``update_returning`` is False).
- Transactions that write run in READ COMMITTED (set on every connection): InnoDB's
  REPEATABLE READ takes gap locks, which deadlocked the 8-worker reservation race.
  Reads that span statements run in REPEATABLE READ (one snapshot), set with
  ``SET TRANSACTION`` as they begin. Deadlocks (1213) are retried.
- A connection returning to the pool is rolled back only when it may hold a
  transaction: PyMySQL's ``rollback()`` is a round trip even with none open, and the
  pool's default reset sent one after every committed transaction.
- Lock waits: ``innodb_lock_wait_timeout`` counts whole seconds, so a fractional
  timeout is rounded up: a waiter gives up at most one second late, never early.
- Text compares and orders by code point, trailing spaces included
  (``utf8mb4_nopad_bin`` on every text column), as Python compares strings.
- Indexed text columns are ``VARCHAR(760)``: InnoDB keys hold 3072 bytes, 4 per
  utf8mb4 character. Longer names are refused with a ValueError (see mapping).
- Trial changes (the trial cache, see :mod:`orion_sql.trial_cache`): no transaction
  id orders them and no snapshot says which it saw, so stamps come from a sequence,
  drawn by a trigger while the writer holds a SHARED lock on the experiment's row
  (revision 0006). A read that finds changes first passes a barrier
  (:meth:`MariaDBDialect.trial_change_barrier`): the row FOR UPDATE, which waits for
  the writers under way, and a value of the sequence drawn under it, below which
  every stamp is committed for good. That value is the mark of the snapshot read
  next; a read that finds nothing changed keeps its mark. The barrier waits at most
  a second (a transaction left open by hand): then the read keeps its old mark and
  reads again, next time, what changed since. Deletions are counted in
  ``orion_sql_trial_deletions`` (a trigger updating ``experiments`` would make the
  shared lock an exclusive one: see the revision). A crash loses the sequence's values
  drawn since the redo log was last written out, so marks hold within one run of the
  server (:meth:`MariaDBDialect.server_run`). Any trigger on ``trials`` also empties the
  insert id of the reply of the statement that fires it: a completion reads the trial's
  id back from its results' INSERT (:mod:`orion_sql.statements`).
"""
from __future__ import annotations

import datetime
import json
import math
import zlib

from pymysql.constants import SERVER_STATUS
from sqlalchemy import BigInteger, bindparam, cast, column, event, func, literal, literal_column, select, table, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from orion_sql import exact_json
from orion_sql.dialects.base import Dialect, ErrorKind, JsonPath
from orion_sql.models import UtcDateTime

# GET_LOCK names are per server: one for "the orion_sql schema is being initialised".
MIGRATION_LOCK_NAME = f"orion_sql_schema_migration_{zlib.crc32(b'orion_sql schema migration')}"
CONNECT_TIMEOUT_SECONDS = 10
# The collation of every text column: code point order, trailing spaces significant.
COLLATION = "utf8mb4_nopad_bin"
# Key of a connection's info: its lock wait timeout was changed (restored on check-in).
_LOCK_TIMEOUT_CHANGED = "orion_sql_lock_timeout_changed"
# Key of a connection's info: it holds the migration lock (released on check-in).
_MIGRATION_LOCK_HELD = "orion_sql_migration_lock_held"

# Revision 0006: how long a reader's barrier waits for the experiment's writers (whole
# seconds), and where deleted trials are counted.
BARRIER_WAIT_SECONDS = 1
_TRIAL_DELETIONS = table("orion_sql_trial_deletions", column("experiment_id"), column("deletions"))
# When the server started, in whole seconds: both terms are taken at the statement's start,
# so it is exact (the same over thousands of statements across second boundaries).
_SERVER_RUN = (
    "(UNIX_TIMESTAMP() - (SELECT CAST(VARIABLE_VALUE AS SIGNED) FROM information_schema.GLOBAL_STATUS"
    " WHERE VARIABLE_NAME = 'UPTIME'))"
)

# MariaDB's error numbers (the first argument of PyMySQL's errors).
_ERRORS = {
    1062: ErrorKind.UNIQUE_VIOLATION,  # ER_DUP_ENTRY
    1452: ErrorKind.MISSING_REFERENCE,  # ER_NO_REFERENCED_ROW_2: the row referred to is missing
    1451: ErrorKind.MISSING_REFERENCE,  # ER_ROW_IS_REFERENCED_2
    1213: ErrorKind.TRANSIENT,  # ER_LOCK_DEADLOCK
    1020: ErrorKind.TRANSIENT,  # ER_CHECKREAD: record changed since last read (snapshot isolation)
    1205: ErrorKind.LOCK_NOT_AVAILABLE,  # ER_LOCK_WAIT_TIMEOUT, also NOWAIT's refusal
    3572: ErrorKind.LOCK_NOT_AVAILABLE,  # MySQL 8's NOWAIT refusal
    1040: ErrorKind.UNAVAILABLE,  # ER_CON_COUNT_ERROR: too many connections
    1053: ErrorKind.DISCONNECT,  # ER_SERVER_SHUTDOWN
    1927: ErrorKind.DISCONNECT,  # ER_CONNECTION_KILLED
    4031: ErrorKind.DISCONNECT,  # idle client disconnected by the server
    2006: ErrorKind.DISCONNECT,  # CR_SERVER_GONE_ERROR
    2013: ErrorKind.DISCONNECT,  # CR_SERVER_LOST
    2055: ErrorKind.DISCONNECT,  # CR_SERVER_LOST_EXTENDED
    2003: ErrorKind.UNAVAILABLE,  # CR_CONN_HOST_ERROR: nobody listens
    2002: ErrorKind.UNAVAILABLE,  # CR_CONNECTION_ERROR
}
# Refusals at connect time that waiting does not cure: access denied, no such database.
_PERMANENT_AT_CONNECT = {1044, 1045, 1049, 1698}

# JSON_TYPE's names for the canonical kinds.
_KINDS = {
    "null": ("NULL",),
    "boolean": ("BOOLEAN",),
    "number": ("INTEGER", "DOUBLE"),
    "string": ("STRING",),
    "array": ("ARRAY",),
    "object": ("OBJECT",),
}


def _error_number(error: DBAPIError) -> int | None:
    args = getattr(error.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _may_be_in_transaction(dbapi_connection) -> bool:
    """Whether a PyMySQL connection may have a transaction open: the server's status flags
    of its last reply say so, or that reply was a result set (PyMySQL keeps no flags from
    those, so the flags it holds may predate the statement that began a transaction)."""
    last = dbapi_connection._result  # None after commit(), rollback(), ping(): flags are fresh
    if last is not None and last.server_status is None:
        return True
    return bool(dbapi_connection.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS)


class MariaDBDialect(Dialect):
    name = "mariadb"
    product = "MariaDB"
    has_row_locks = True
    update_returning = False
    transactional_ddl = False

    def __init__(self, url: URL | None = None):
        self.url = url

    def json_serializer(self, value):
        return exact_json.dumps_unescaped(value)

    def engine_options(self, settings):
        return {
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.retry_time,
            "isolation_level": "READ COMMITTED",
            # Reset by roll_back_if_open below: only a connection that may hold a transaction.
            "pool_reset_on_return": None,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "charset": "utf8mb4"},
        }

    def prepare_engine(self, engine: Engine, settings) -> None:
        @event.listens_for(engine, "connect")
        def configure(dbapi_connection, record):
            with dbapi_connection.cursor() as cursor:
                # Naive UTC everywhere; strict: a value that does not fit is an error; an
                # explicit id 0 (Oríon's test helpers give them) is kept, not generated.
                cursor.execute(
                    "SET time_zone = '+00:00',"
                    " sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO')"
                )

        @event.listens_for(engine, "reset")
        def roll_back_if_open(dbapi_connection, record, reset_state):
            # PyMySQL's rollback() sends ROLLBACK even when no transaction is open: the
            # pool's default reset cost a round trip after every committed transaction.
            if not reset_state.transaction_was_reset and _may_be_in_transaction(dbapi_connection):
                dbapi_connection.rollback()

        @event.listens_for(engine, "checkin")
        def end_session_settings(dbapi_connection, record):
            # What lives in the session, not the transaction, ends with this use of it.
            statements = []
            if record.info.pop(_LOCK_TIMEOUT_CHANGED, False):
                statements.append("SET SESSION innodb_lock_wait_timeout = DEFAULT")
            if record.info.pop(_MIGRATION_LOCK_HELD, False):
                statements.append(f"DO RELEASE_LOCK('{MIGRATION_LOCK_NAME}')")
            if dbapi_connection is None or not statements:
                return
            try:
                with dbapi_connection.cursor() as cursor:
                    for statement in statements:
                        cursor.execute(statement)
            except Exception:  # a dead connection (its session ended with it): the pool replaces it
                record.invalidate()

    def transaction_options(self, write, autocommit):
        # Every transaction is a real one (a reservation's SELECT ... FOR UPDATE must hold
        # its lock until the UPDATE): no options (reads of several statements: see began).
        return {}

    def began(self, conn, write, autocommit):
        # A read spanning statements sees one snapshot: REPEATABLE READ for this
        # transaction only (sent before the driver's implicit begin, on the DBAPI cursor).
        if not write and not autocommit:
            with conn.connection.dbapi_connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def trial_change_mark(self, experiments):
        # A snapshot alone tells nothing of writers under way: the mark stays where the
        # last barrier put it.
        return bindparam("since", type_=BigInteger)

    def unseen_trial_changes(self, stamp):
        return stamp > func.coalesce(bindparam("since", type_=BigInteger), -1)

    def trial_change_barrier(self):
        # The value is drawn once the row lock is granted (the select list is evaluated on
        # the locked row), when no writer holds the shared lock it took before its stamp.
        return text(
            f"SELECT NEXTVAL(orion_sql_trial_stamps) AS mark, {_SERVER_RUN} AS run"
            f" FROM experiments WHERE id = :experiment FOR UPDATE WAIT {BARRIER_WAIT_SECONDS}"
        )

    def server_run(self):
        # After a crash the sequence starts again from its last durable state, which may
        # be below values drawn since (checked: SIGKILLed after 1,006 draws, it began again at 1).
        return literal_column(_SERVER_RUN, BigInteger)

    def trial_deletions(self, experiments):
        counted = select(_TRIAL_DELETIONS.c.deletions).where(_TRIAL_DELETIONS.c.experiment_id == experiments.c.id)
        return func.coalesce(counted.scalar_subquery(), 0)

    def now(self, minus=None):
        now = func.utc_timestamp(6, type_=UtcDateTime)
        if not minus:
            return now
        microseconds = round(minus / datetime.timedelta(microseconds=1))
        return func.date_sub(now, literal_column(f"INTERVAL {microseconds} MICROSECOND"), type_=UtcDateTime)

    def classify(self, error: DBAPIError, connecting=False):
        number = _error_number(error)
        if connecting and isinstance(error, OperationalError):
            return None if number in _PERMANENT_AT_CONNECT else ErrorKind.UNAVAILABLE
        kind = _ERRORS.get(number) if number is not None else None
        if kind is None and isinstance(error, OperationalError) and number is None:
            return ErrorKind.DISCONNECT  # PyMySQL: the connection broke without an error packet
        return kind or super().classify(error)

    def set_lock_timeout(self, conn, seconds):
        # Whole seconds only: rounded up, so a waiter is at most a second late, never early.
        conn.info[_LOCK_TIMEOUT_CHANGED] = True
        conn.execute(text("SET SESSION innodb_lock_wait_timeout = :seconds"), {"seconds": max(1, math.ceil(seconds))})

    def through_index(self, select_, table, index):
        # Reading more columns than the index holds, with ORDER BY id LIMIT 1, MariaDB
        # walks the primary key while it estimates many matching rows (a fresh experiment
        # of pending trials), reading every completed trial before the first pending one.
        return select_.with_hint(table, f"FORCE INDEX ({index})")

    def lock_for_migration(self, conn):
        # A session lock: released when the connection returns to the pool or dies. DDL
        # commits implicitly on MariaDB, so a transaction-scoped lock would not hold.
        got = conn.execute(text("SELECT GET_LOCK(:name, 600)"), {"name": MIGRATION_LOCK_NAME}).scalar()
        if got != 1:
            raise TimeoutError("another process has been initialising the orion_sql schema for 10 minutes")
        conn.info[_MIGRATION_LOCK_HELD] = True

    # --- JSON documents -----------------------------------------------------------

    @staticmethod
    def _path(path: JsonPath) -> str:
        # A quoted label matches the key as stored (exact_json.dumps_unescaped), but ends at
        # a double quote, and JSON escapes a backslash and control characters.
        for key in path:
            if '"' in key or "\\" in key or any(character < " " for character in key):
                raise ValueError(
                    f"MariaDB cannot address the document key {key!r}: it contains a double quote,"
                    " a backslash or a control character"
                )
        return "$" + "".join(f'."{key}"' for key in path)

    def _at(self, doc, path):
        return func.json_extract(doc, self._path(path))

    def json_kind_in(self, doc, path, kinds):
        names = [name for kind in kinds for name in _KINDS[kind]]
        return func.json_type(self._at(doc, path)).in_(names)

    def json_exists(self, doc, path):
        return func.json_contains_path(doc, "one", self._path(path)) == 1

    def json_text(self, doc, path):
        return func.json_unquote(self._at(doc, path)).collate(COLLATION)

    def json_number(self, doc, path):
        return self.text_number(func.json_unquote(self._at(doc, path)))

    def text_number(self, text):
        return cast(text, mysql.DOUBLE())

    def number_literal(self, value):
        try:
            value = float(value)
        except OverflowError:
            value = math.inf if value > 0 else -math.inf
        if math.isinf(value):  # no infinite DOUBLE: the largest finite ones order the same
            value = math.copysign(1.7976931348623157e308, value)
        return literal(value, mysql.DOUBLE())

    def infinity(self, value):
        return self.number_literal(value)  # a DOUBLE cannot be infinite: the largest finite one

    def json_equals(self, doc, path, json_text):
        value = json.loads(json_text)
        if not (value is None or isinstance(value, (bool, list, dict))):
            raise ValueError(f"json_equals compares null, booleans, arrays and objects, not {value!r}")
        # The operand written as documents are (characters beyond ASCII unescaped).
        unescaped = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        compact = func.json_compact(self._at(doc, path)).collate(COLLATION)
        return compact == func.json_compact(literal(unescaped)).collate(COLLATION)

    def ordered_text(self, expression):
        return expression.collate(COLLATION)

    def nulls_first(self, expression):
        return expression.asc()  # MariaDB sorts NULL first in ascending order (no NULLS FIRST)
