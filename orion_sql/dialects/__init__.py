"""What differs per database, and nothing else: each dialect is one small class.

The storage, the query compiler and the algorithm lock ask a :class:`Dialect` for
the server clock, JSON access, error classification and locking primitives, so no
other module tests which database it is talking to.
"""
from __future__ import annotations

from sqlalchemy.engine import URL

from orion_sql.dialects.base import Dialect, ErrorKind

__all__ = ["Dialect", "ErrorKind", "dialect_for"]


def dialect_for(url: URL) -> Dialect:
    """The dialect object for a database URL."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        from orion_sql.dialects.sqlite import SQLiteDialect

        return SQLiteDialect()
    if backend == "postgresql":
        from orion_sql.dialects.postgresql import PostgreSQLDialect

        return PostgreSQLDialect(url)
    if backend in ("mariadb", "mysql"):
        from orion_sql.dialects.mariadb import MariaDBDialect

        return MariaDBDialect(url)
    raise ValueError(f"no orion_sql dialect for database backend {backend!r}")
