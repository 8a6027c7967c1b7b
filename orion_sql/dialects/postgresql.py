"""PostgreSQL: many machines, row locks, the server's clock."""
from __future__ import annotations

import json
import zlib

from sqlalchemy import (
    JSON,
    BigInteger,
    Engine,
    Float,
    Integer,
    Numeric,
    Text,
    any_,
    bindparam,
    cast,
    column,
    event,
    func,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from orion_sql import exact_json
from orion_sql.dialects.base import BEHIND_POOLER, Dialect, ErrorKind, JsonPath
from orion_sql.location import ConfigurationError
from orion_sql.models import UtcDateTime

# One advisory lock key for "the orion_sql schema is being initialised".
MIGRATION_LOCK_KEY = zlib.crc32(b"orion_sql schema migration")
# The server notices a vanished client (and drops its locks) within about a minute.
CONNECT_TIMEOUT_SECONDS = 10
KEEPALIVE_SETTINGS = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}

# The columns of params and results that upsert_values writes, besides trial_id.
_VALUE_FIELDS = ("position", "name", "type", "value", "numeric_value", "text_value")

_SQLSTATES = {
    "23505": ErrorKind.UNIQUE_VIOLATION,
    "23503": ErrorKind.MISSING_REFERENCE,
    "40001": ErrorKind.TRANSIENT,  # serialization_failure
    "40P01": ErrorKind.TRANSIENT,  # deadlock_detected
    "55P03": ErrorKind.LOCK_NOT_AVAILABLE,
    "53300": ErrorKind.UNAVAILABLE,  # too_many_connections
    "57P03": ErrorKind.UNAVAILABLE,  # cannot_connect_now: starting up or shutting down
    "57P01": ErrorKind.DISCONNECT,  # admin_shutdown: the server is stopping (restart -m fast)
    "57P02": ErrorKind.DISCONNECT,  # crash_shutdown: another backend crashed (-m immediate)
    "08P01": ErrorKind.DISCONNECT,  # protocol_violation: PgBouncer's "server conn crashed?"
}
# Refusals at connect time that waiting does not cure: authentication, no such database.
_PERMANENT_AT_CONNECT = ("28", "3D")
# psycopg's option a URL may give; None (the default here): no prepared statements,
# which a pooler in transaction mode would mix up between clients.
PREPARE_THRESHOLD = "prepare_threshold"


class PostgreSQLDialect(Dialect):
    name = "postgresql"
    product = "PostgreSQL"
    has_row_locks = True
    writes_in_with = True

    def __init__(self, url: URL | None = None):
        threshold = (url.query.get(PREPARE_THRESHOLD) if url is not None else None) or "none"
        if isinstance(threshold, tuple):
            threshold = threshold[-1]
        try:
            self.prepare_threshold = None if str(threshold).lower() == "none" else int(threshold)
        except ValueError:
            raise ConfigurationError(f"{PREPARE_THRESHOLD} must be a number or none, not {threshold!r}") from None

    def engine_options(self, settings):
        return {
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.retry_time,  # a process out of connections waits, as for a server
            "connect_args": {
                # A server that accepts the connection but never answers fails the start
                # after this many seconds instead of hanging (`?connect_timeout=` in the URL).
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "prepare_threshold": self.prepare_threshold,
            },
        }

    def engine_url(self, url):
        return url.difference_update_query([PREPARE_THRESHOLD])

    def prepare_engine(self, engine: Engine, settings) -> None:
        keepalives = "SELECT " + ", ".join(
            f"set_config('{name}', '{value}', false)" for name, value in KEEPALIVE_SETTINGS.items()
        )

        @event.listens_for(engine, "connect")
        def configure(dbapi_connection, record):
            # A pooler (PgBouncer) announces a process id of its own at login: the server
            # process running the statements has another. Behind one, nothing is set
            # per session (the next transaction may run on another server connection).
            with dbapi_connection.cursor() as cursor:
                served_by = cursor.execute("SELECT pg_backend_pid()").fetchone()[0]
                pooled = settings.pool_mode == "transaction" or served_by != dbapi_connection.info.backend_pid
                record.info[BEHIND_POOLER] = pooled
                if not pooled:
                    cursor.execute(keepalives)
            dbapi_connection.commit()

    def transaction_options(self, write, autocommit):
        if autocommit:
            # Each statement commits itself: no BEGIN and COMMIT round trips.
            return {"isolation_level": "AUTOCOMMIT"}
        if not write:
            # READ COMMITTED gives each statement its own snapshot: trials read by one
            # statement and their params by the next could disagree.
            return {"isolation_level": "REPEATABLE READ"}
        return {}

    def trial_change_mark(self, experiments):
        # Stamps are writers' transaction ids; the snapshot says which it saw.
        return cast(func.pg_current_snapshot(), Text)

    def server_run(self):
        # After a crash, transaction ids that reached no durable WAL (a transaction that
        # aborted, say) are handed out again: a snapshot taken before means nothing after.
        return func.pg_postmaster_start_time()

    def unseen_trial_changes(self, stamp):
        # A snapshot as text is "xmin:xmax:running,running". Unseen: transactions running
        # when it was taken, or begun after its xmax; both are probes of the index on
        # (experiment_id, change_stamp), however long an old transaction keeps running.
        since = bindparam("since", type_=Text)
        begun_after = cast(func.split_part(since, ":", 2), BigInteger)
        running = cast(func.string_to_array(func.split_part(since, ":", 3), ","), ARRAY(BigInteger))
        return or_(stamp >= func.coalesce(begun_after, 0), stamp == any_(running))

    def now(self, minus=None):
        now = func.timezone("UTC", func.statement_timestamp(), type_=UtcDateTime)
        return now - minus if minus else now

    def classify(self, error: DBAPIError, connecting=False):
        sqlstate = getattr(error.orig, "sqlstate", None) or ""
        if connecting and isinstance(error, OperationalError):
            # Refused, reset, starting up, too many clients: nothing was sent, wait and see.
            return None if sqlstate.startswith(_PERMANENT_AT_CONNECT) else ErrorKind.UNAVAILABLE
        kind = _SQLSTATES.get(sqlstate)
        if kind is None and isinstance(error, OperationalError) and not sqlstate:
            return ErrorKind.DISCONNECT  # psycopg: the server closed the connection, no SQLSTATE
        return kind or super().classify(error)

    def sync_id_sequence(self, conn, table, explicit_id):
        conn.execute(
            text(
                "SELECT setval(seq, :id) FROM pg_get_serial_sequence(:table, 'id') AS seq"
                " WHERE :id > coalesce(pg_sequence_last_value(seq::regclass), 0)"
            ),
            {"id": explicit_id, "table": table.name},
        )

    def upsert_values(self, table, trial_id, bind):
        # Every field travels as text: a JSON null must stay JSON null (json_to_recordset
        # would make it SQL NULL), and floats come as PostgreSQL reads them ('NaN', 'inf').
        new = (
            func.json_to_recordset(cast(bindparam(bind, type_=Text), JSON))
            .table_valued(*(column(name, Text) for name in _VALUE_FIELDS))
            .render_derived(name="new_values", with_types=True)
        )
        rows = select(
            trial_id,
            cast(new.c.position, Integer),
            new.c.name,
            new.c.type,
            cast(new.c.value, JSON),
            cast(new.c.numeric_value, Float(53)),
            new.c.text_value,
        ).select_from(trial_id.table.join(new, true()))  # one trial row, each of its new values
        upsert = insert(table).from_select(["trial_id", *_VALUE_FIELDS], rows)
        upsert = upsert.on_conflict_do_update(
            index_elements=["trial_id", "position"],
            set_={name: upsert.excluded[name] for name in _VALUE_FIELDS if name != "position"},
        )
        return upsert.cte(f"upserted_{table.name}")

    def values_payload(self, rows):
        return json.dumps(
            [
                {
                    "position": str(row["position"]),
                    "name": row["name"],
                    "type": row["type"],
                    "value": exact_json.dumps(row["value"]),
                    "numeric_value": None if row["numeric_value"] is None else repr(row["numeric_value"]),
                    "text_value": row["text_value"],
                }
                for row in rows
            ]
        )

    def set_lock_timeout(self, conn, seconds):
        milliseconds = max(1, round(seconds * 1000))  # 0 would mean "wait forever"
        conn.execute(select(func.set_config("lock_timeout", f"{milliseconds}ms", True)))

    def lock_for_migration(self, conn):
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))

    @staticmethod
    def _at(doc, path: JsonPath):
        return doc.op("#>", return_type=JSONB)(cast(list(path), ARRAY(Text)))

    def json_kind_in(self, doc, path, kinds):
        return func.jsonb_typeof(self._at(doc, path)).in_(kinds)

    def json_exists(self, doc, path):
        return self._at(doc, path).is_not(None)

    def json_text(self, doc, path):
        return doc.op("#>>", return_type=Text)(cast(list(path), ARRAY(Text)))

    def json_number(self, doc, path):
        return self.text_number(self.json_text(doc, path))

    def text_number(self, text):
        return cast(text, Numeric)

    def number_literal(self, value):
        # Documents hold decimal text; compare in NUMERIC against the float's shortest
        # decimal form, which orders and equals exactly as Python's floats do.
        return cast(literal(repr(value)), Numeric)

    def json_equals(self, doc, path, json_text):
        # Bound as text: a JSONB-typed parameter would serialize the text as a JSON string.
        return self._at(doc, path) == cast(literal(json_text, Text), JSONB)

    def ordered_text(self, expression):
        return expression.collate("C")
