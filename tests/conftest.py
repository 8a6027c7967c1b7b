"""Real databases for every test: a SQLite file, a fresh PostgreSQL database, a fresh
MariaDB database.

PostgreSQL: the server named by ORION_SQL_TEST_PG_HOST/PORT/USER/PASSWORD
(default: the local one on 127.0.0.1:5432, user postgres) when it answers; else
pytest-postgresql starts its own server. Each test gets its own database, cloned
from a template migrated once per session. Database names carry the process id
so that parallel pytest sessions on one server never collide.

MariaDB: the server named by ORION_SQL_TEST_MARIADB_HOST/PORT/USER/PASSWORD
(default 127.0.0.1:3306, root, no password; `.ci/ensure-mariadb` starts it). One
database per session is migrated once; each test then finds it emptied (its
tables truncated: about 20 ms, against half a second to migrate). A test that left
it at another revision, or with a trigger of its own, gets it migrated afresh.

With ORION_SQL_REQUIRE_POSTGRESQL=1 (as in CI), a session in which no
PostgreSQL test passed fails: a missing server is never a quiet skip; likewise
ORION_SQL_REQUIRE_MARIADB=1 and MariaDB.
"""
from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from pytest_postgresql import factories
from sqlalchemy.engine import URL

from orion_sql.database import Database
from orion_sql.location import sqlite_url
from orion_sql.models import Base
from orion_sql.schema import VERSION_TABLE, ensure_schema, head_revision
from support import DIALECTS
from support.mariadb import MARIADB, create_mariadb_database, drop_mariadb_database, mariadb_admin, mariadb_url

PG: dict[str, Any] = {
    "host": os.environ.get("ORION_SQL_TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("ORION_SQL_TEST_PG_PORT", "5432")),
    "user": os.environ.get("ORION_SQL_TEST_PG_USER", "postgres"),
    "password": os.environ.get("ORION_SQL_TEST_PG_PASSWORD", ""),
}


def _server_answers() -> bool:
    try:
        psycopg.connect(dbname="postgres", connect_timeout=3, **PG).close()
        return True
    except psycopg.OperationalError:
        return False


def _migrate_template(host, port, user, dbname, password=None, **_):
    """Bring the template database to head once; every test database is cloned from it."""
    url = URL.create(
        "postgresql+psycopg", username=user, password=password or None, host=host, port=port, database=dbname
    )
    database = Database(url)
    ensure_schema(database)
    database.dispose()


_DBNAME = f"orion_sql_test_{os.getpid()}"
postgresql_server = (
    factories.postgresql_noproc(dbname=_DBNAME, load=[_migrate_template], **PG)
    if _server_answers()
    else factories.postgresql_proc(dbname=_DBNAME, load=[_migrate_template])
)
postgresql = factories.postgresql("postgresql_server")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    """A SQLite file migrated to head once per session."""
    path = str(tmp_path_factory.mktemp("template") / "orion.sqlite")
    database = Database(sqlite_url(path))
    ensure_schema(database)
    database.dispose()
    return path


@pytest.fixture
def sqlite_url_fresh(sqlite_template, tmp_path) -> str:
    """A fresh SQLite database at head, as a URL."""
    path = tmp_path / "orion.sqlite"
    shutil.copy(sqlite_template, path)
    return str(sqlite_url(str(path)))


@pytest.fixture
def postgresql_url_fresh(postgresql) -> str:
    """A fresh PostgreSQL database at head, as a URL (password included)."""
    info = postgresql.info
    url = URL.create(
        "postgresql+psycopg",
        username=info.user,
        password=info.password or None,
        host=info.host,
        port=info.port,
        database=info.dbname,
    )
    return url.render_as_string(hide_password=False)


class _MariaDBSessionDatabase:
    """The session's MariaDB database: migrated once, emptied before each test."""

    def __init__(self) -> None:
        self.name = f"orion_sql_test_{os.getpid()}"
        self.url = mariadb_url(self.name)
        self._migrate()

    def _migrate(self) -> None:
        create_mariadb_database(self.name)
        database = Database(self.url)
        ensure_schema(database)
        database.dispose()

    def fresh(self) -> str:
        """The database at head with no rows, as a URL."""
        with mariadb_admin(self.name) as conn, conn.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = 60")
            cursor.execute(
                "SELECT (SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()),"
                f" (SELECT MAX(version_num) FROM {VERSION_TABLE})"
            )
            triggers, revision = cursor.fetchone()
            intact = not triggers and revision == head_revision()
            if intact:
                cursor.execute("SET SESSION foreign_key_checks = 0")
                for table in reversed(Base.metadata.sorted_tables):
                    cursor.execute(f"TRUNCATE TABLE `{table.name}`")
        if not intact:  # a test left it at another revision, or with a trigger of its own
            self._migrate()
        return self.url

    def drop(self) -> None:
        drop_mariadb_database(self.name)


@pytest.fixture(scope="session")
def mariadb_session_database() -> Iterator[_MariaDBSessionDatabase]:
    try:
        database = _MariaDBSessionDatabase()
    except pymysql.err.OperationalError as error:
        pytest.skip(f"no MariaDB answers on {MARIADB['host']}:{MARIADB['port']} ({error}); run .ci/ensure-mariadb")
    yield database
    database.drop()


@pytest.fixture
def mariadb_url_fresh(mariadb_session_database) -> str:
    """A fresh MariaDB database at head (emptied), as a URL."""
    return mariadb_session_database.fresh()


@pytest.fixture(params=DIALECTS)
def database_url(request) -> str:
    """A fresh database at head, once on each dialect."""
    return request.getfixturevalue(f"{request.param}_url_fresh")


@pytest.fixture
def storage(database_url):
    """The sql storage on a fresh database, once on each dialect."""
    from orion_sql import SQL

    storage = SQL(uri=database_url)
    yield storage
    storage.close()


_empty_database_numbers = itertools.count()


@pytest.fixture(params=DIALECTS)
def empty_url(request, tmp_path) -> Iterator[str]:
    """A database with nothing in it (no orion_sql schema), once on each dialect."""
    if request.param == "sqlite":
        yield str(sqlite_url(str(tmp_path / "empty.sqlite")))
        return
    if request.param == "mariadb":
        request.getfixturevalue("mariadb_session_database")
        name = f"orion_sql_empty_{os.getpid()}_{next(_empty_database_numbers)}"
        create_mariadb_database(name)
        yield mariadb_url(name)
        drop_mariadb_database(name)
        return
    server = request.getfixturevalue("postgresql_server")
    name = f"orion_sql_empty_{os.getpid()}_{next(_empty_database_numbers)}"
    admin = {"host": server.host, "port": server.port, "user": server.user, "password": server.password or None}
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = URL.create("postgresql+psycopg", username=server.user, password=server.password or None,
                     host=server.host, port=server.port, database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# --- CI guard: PostgreSQL and MariaDB tests must have run -------------------------

_REQUIRED = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}
_passed_tests: dict[str, list[str]] = {name: [] for name in _REQUIRED}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        for name, passed in _passed_tests.items():
            if name in report.nodeid:
                passed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    for name, product in _REQUIRED.items():
        variable = f"ORION_SQL_REQUIRE_{name.upper()}"
        if os.environ.get(variable) == "1" and not _passed_tests[name]:
            session.config.pluginmanager.get_plugin("terminalreporter").write_line(
                f"{variable}=1 but no {product} test passed", red=True
            )
            session.exitstatus = 1
