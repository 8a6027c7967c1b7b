"""Hot-path statements compiled once by SQLAlchemy and run as the driver's SQL.

``Connection.execute`` of a statement object redoes, on every call, work whose outcome
never changes for a prebuilt statement: its cache key is generated and looked up, its
parameters constructed, its execution context and result metadata set up from the
compiled form. On MariaDB through PyMySQL that was about 30 µs of CPU per statement
on top of the driver's own 33 (measured with an UPDATE of one row: 64 µs through
``execute``, 37 through ``exec_driver_sql``), and the statements of a reservation
and a completion are most of a worker's client CPU.

A :class:`Prepared` statement is compiled by SQLAlchemy (which stays the author of
the SQL text) the first time it runs on an engine's dialect; each call then applies
the same bind and result type processors SQLAlchemy would, and sends the text with
``Connection.exec_driver_sql``, so SQLAlchemy's cursor events, error wrapping and
invalidation of lost connections stay as they are for every other statement.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, CursorResult
from sqlalchemy.engine import Dialect as SqlDialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]


class _Compiled:
    """A statement compiled for one SQLAlchemy dialect, with what each call applies."""

    def __init__(self, statement: ClauseElement, dialect: SqlDialect):
        self.dialect = dialect
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        if compiled.escaped_bind_names:  # the SQL would name binds other than the statement's
            raise ValueError(f"bind names the driver cannot take as they are: {sorted(compiled.escaped_bind_names)}")
        self.sql = compiled.string
        # Every bind, with the value the statement carries (literals SQLAlchemy bound: 'new',
        # LIMIT 1), None for those each call gives.
        self.defaults = dict(compiled.params)
        self.positions = compiled.positiontup if compiled.positional else None
        self.bind_processors = [
            (name, processor)
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        # Each selected column's key, and its type's result processor (None: the value as is).
        self.columns = [
            (column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in getattr(statement, "selected_columns", ())
        ]

    def parameters(self, binds: Mapping[str, Any]) -> Any:
        """The driver's parameters for one row of `binds`, processed as SQLAlchemy would."""
        values = {**self.defaults, **binds}
        for name, process in self.bind_processors:
            values[name] = process(values[name])
        if self.positions is not None:
            return tuple(values[name] for name in self.positions)
        return values


class Prepared:
    """A statement SQLAlchemy compiles once per engine, run as driver SQL (see module)."""

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._compiled: _Compiled | None = None

    def _for(self, dialect: SqlDialect) -> _Compiled:
        # One read of the attribute: a thread using another engine's dialect meanwhile
        # may replace it, never hand this one a statement compiled for that dialect.
        compiled = self._compiled
        if compiled is None or compiled.dialect is not dialect:  # a new engine (a forked child builds its own)
            compiled = self._compiled = _Compiled(self.statement, dialect)
        return compiled

    def execute(self, conn: Connection, binds: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> CursorResult:
        """Run with one row of `binds`, or many (one executemany)."""
        compiled = self._for(conn.dialect)
        if isinstance(binds, Mapping):
            return conn.exec_driver_sql(compiled.sql, compiled.parameters(binds))
        return conn.exec_driver_sql(compiled.sql, [compiled.parameters(row) for row in binds])

    def mappings(self, conn: Connection, binds: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows a query returns, as dictionaries keyed by its selected columns' keys."""
        compiled = self._for(conn.dialect)
        rows = conn.exec_driver_sql(compiled.sql, compiled.parameters(binds)).fetchall()
        columns = compiled.columns
        return [
            {key: process(value) if process else value for (key, process), value in zip(columns, row, strict=True)}
            for row in rows
        ]
