"""SQLite: one file, many local processes.

WAL lets readers run beside the single writer; every write transaction starts
with ``BEGIN IMMEDIATE`` so that writers queue on the busy timeout instead of
failing when a read transaction tries to become a write one.
"""
from __future__ import annotations

import datetime
import json
import math

from sqlalchemy import Engine, Float, Integer, bindparam, cast, event, func, literal
from sqlalchemy.exc import DBAPIError, OperationalError

from orion_sql.dialects.base import WRITE_OPTION, Dialect, ErrorKind, JsonPath
from orion_sql.models import UtcDateTime

# How long a writer waits for the file lock before SQLite reports "database is locked".
BUSY_TIMEOUT_SECONDS = 60

_KINDS = {
    "null": ("null",),
    "boolean": ("true", "false"),
    "number": ("integer", "real"),
    "string": ("text",),
    "array": ("array",),
    "object": ("object",),
}


class SQLiteDialect(Dialect):
    name = "sqlite"
    product = "SQLite"
    has_row_locks = False

    def engine_options(self, settings):
        return {
            # The driver must not begin transactions itself: the "begin" hook does.
            "connect_args": {
                "timeout": BUSY_TIMEOUT_SECONDS,
                "isolation_level": None,
                "check_same_thread": False,
            },
            "pool_size": 2,
            "max_overflow": 8,
        }

    def trial_change_mark(self, experiments):
        # The experiment's own counter: SQLite commits one writer at a time, in counter order.
        return experiments.c.trial_changes

    def unseen_trial_changes(self, stamp):
        return stamp > func.coalesce(bindparam("since", type_=Integer), -1)

    def prepare_engine(self, engine: Engine, settings) -> None:
        @event.listens_for(engine, "connect")
        def configure(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def begin(conn):
            immediate = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def now(self, minus=None):
        # The file lives on this machine: its clock is the "server" clock. It is read when
        # the statement runs, not when it is built: a statement may be polled or retried.
        shift = minus or datetime.timedelta()

        def utcnow():
            return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - shift

        return bindparam("now", callable_=utcnow, type_=UtcDateTime, unique=True)

    def classify(self, error: DBAPIError, connecting=False):
        message = str(error.orig)
        if "UNIQUE constraint failed" in message:
            return ErrorKind.UNIQUE_VIOLATION
        if "FOREIGN KEY constraint failed" in message:
            return ErrorKind.MISSING_REFERENCE
        if isinstance(error, OperationalError) and (
            "database is locked" in message or "database table is locked" in message
        ):
            return ErrorKind.TRANSIENT
        return super().classify(error)

    @staticmethod
    def _path(path: JsonPath) -> str:
        # A quoted label matches the key as exact_json wrote it (json.dumps escapes), but
        # SQLite ends the label at the first double quote, escaped or not.
        for key in path:
            if '"' in key:
                raise ValueError(f"SQLite cannot address the document key {key!r}: it contains a double quote")
        return "$" + "".join("." + json.dumps(key) for key in path)

    def json_kind_in(self, doc, path, kinds):
        names = [name for kind in kinds for name in _KINDS[kind]]
        return func.json_type(doc, self._path(path)).in_(names)

    def json_exists(self, doc, path):
        return func.json_type(doc, self._path(path)).is_not(None)

    def json_text(self, doc, path):
        return func.json_extract(doc, self._path(path))

    def json_number(self, doc, path):
        return func.json_extract(doc, self._path(path))

    def text_number(self, text):
        return cast(text, Float)

    def number_literal(self, value):
        # SQLite binds 64-bit integers only. A larger one becomes the nearest float, which
        # orders the same against every 64-bit integer (json_extract gives floats beyond).
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            try:
                value = float(value)
            except OverflowError:
                value = math.inf if value > 0 else -math.inf
        return literal(value)

    def json_equals(self, doc, path, json_text):
        value = json.loads(json_text)
        kind = func.json_type(doc, self._path(path))
        if value is None or isinstance(value, bool):
            # json_extract turns these into SQL NULL, 1 and 0: compare their JSON type.
            return kind == json.dumps(value)
        if isinstance(value, (list, dict)):
            return (kind == ("array" if isinstance(value, list) else "object")) & (
                func.json_extract(doc, self._path(path)) == func.json(json_text)
            )
        raise ValueError(f"json_equals compares null, booleans, arrays and objects, not {value!r}")
