"""MariaDB's checks: on a database with no orion_sql schema yet, a scratch database.

MariaDB commits each DDL statement by itself, so creating the schema inside a
transaction that is rolled back would leave the tables behind. Where the database
has no orion_sql schema yet, the read and write check runs on a scratch database
created beside it and given the schema (the user needs CREATE on the server, as the
storage needs it to create its tables), and dropped when the checks end.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import text

from orion_sql.checks.base import CheckFailed, DialectChecks, Probe
from orion_sql.checks.common import GENERIC, open_database
from orion_sql.database import Database
from orion_sql.schema import VERSION_TABLE, ensure_schema

_HAS_SCHEMA = text(
    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = :table"
)


def open_mariadb(probe: Probe) -> str | None:
    """The database as the storage opens it; where it has no orion_sql schema, a scratch one."""
    open_database(probe)
    with probe.database.transaction() as conn:
        if conn.execute(_HAS_SCHEMA, {"table": VERSION_TABLE}).scalar():
            return None
        scratch = f"orion_sql_test_scratch_{uuid.uuid4().hex[:12]}"
        try:
            conn.execute(text(f"CREATE DATABASE `{scratch}`"))
        except Exception as error:
            raise CheckFailed(
                f"no orion_sql schema yet, and no scratch database to check writes on: {error}",
                "grant the user CREATE (the storage creates its tables on first use), or create the "
                "schema first with `orion-sql upgrade`",
            ) from None
    main = probe.database
    probe.database = _ScratchDatabase(probe.url.set(database=scratch), main.settings)

    def drop_scratch() -> None:
        probe.database.dispose()
        with main.transaction() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{scratch}`"))

    probe.cleanups.append(drop_scratch)
    return f"no orion_sql schema yet: checked on a scratch database {scratch} beside it (dropped afterwards)"


class _ScratchDatabase(Database):
    """The scratch database: the schema is created before the read-write check's
    rolled-back transaction (DDL would end it), the schema check still finds none."""

    @contextlib.contextmanager
    def rolled_back(self) -> Iterator[Database]:
        ensure_schema(self)
        with super().rolled_back() as bound:
            yield bound


def version(conn) -> str:
    return "MariaDB " + str(conn.execute(text("SELECT VERSION()")).scalar_one())


MARIADB = DialectChecks(
    checks=[],
    open=open_mariadb,
    version=version,
    connect_advice=GENERIC.connect_advice,
    write_advice=lambda url: f"grant {url.username or 'the user'} SELECT, INSERT, UPDATE and DELETE on "
    f"`{url.database}`.* (and CREATE, ALTER, INDEX, CREATE VIEW, DROP to create or upgrade the schema)",
)
