"""Schema operations a revision can run again after it failed halfway.

MariaDB (and MySQL) commit each DDL statement by itself: a revision that fails
halfway leaves what it had done, while the version table still names the revision
before. The next ``orion-sql upgrade`` runs that revision again from the start, so
each operation here skips what is already there (or already gone). Where DDL is
transactional (SQLite, PostgreSQL) a failed revision left nothing, and these are
Alembic's own operations, unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# Databases that commit each DDL statement by itself (SQLAlchemy's dialect names).
NON_TRANSACTIONAL_DDL = ("mariadb", "mysql")


def _resuming() -> bool:
    """Whether the database keeps DDL done before a failure. (Alembic's
    ``transactional_ddl`` is False for SQLite too, whose DDL orion_sql runs inside
    its own BEGIN.)"""
    return op.get_bind().dialect.name in NON_TRANSACTIONAL_DDL


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def _has_table(name: str) -> bool:
    return _inspector().has_table(name)


def _has_index(table: str, name: str) -> bool:
    return _has_table(table) and any(index["name"] == name for index in _inspector().get_indexes(table))


def _has_column(table: str, name: str) -> bool:
    return any(column["name"] == name for column in _inspector().get_columns(table))


def create_table(name: str, *elements: Any, **options: Any) -> None:
    if not (_resuming() and _has_table(name)):
        op.create_table(name, *elements, **options)


def drop_table(name: str) -> None:
    if not _resuming() or _has_table(name):
        op.drop_table(name)


def create_index(name: str, table: str, columns: Sequence[str], **options: Any) -> None:
    if not (_resuming() and _has_index(table, name)):
        op.create_index(name, table, list(columns), **options)


def drop_index(name: str, table_name: str) -> None:
    if not _resuming() or _has_index(table_name, name):
        op.drop_index(name, table_name=table_name)


def add_column(table: str, column: sa.Column) -> None:
    if not (_resuming() and _has_column(table, column.name)):
        op.add_column(table, column)


def drop_column(table: str, name: str) -> None:
    if not _resuming() or _has_column(table, name):
        op.drop_column(table, name)


def create_view(name: str, select: str) -> None:
    """``CREATE VIEW``; where resuming, one left by the failed attempt is replaced."""
    op.execute(f"CREATE {'OR REPLACE ' if _resuming() else ''}VIEW {name} AS{select}")


def drop_view(name: str) -> None:
    op.execute(f"DROP VIEW {'IF EXISTS ' if _resuming() else ''}{name}")
