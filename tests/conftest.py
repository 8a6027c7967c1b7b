"""Real databases for every test: a SQLite file, a fresh PostgreSQL database, a fresh
MariaDB database.

PostgreSQL: the server named by ORION_SQL_TEST_PG_HOST/PORT/USER/PASSWORD
(default: the local one on 127.0.0.1:5432, user postgres) when it answers; else
pytest-postgresql starts its own server. MariaDB: the server named by
ORION_SQL_TEST_MARIADB_HOST/PORT/USER/PASSWORD (default 127.0.0.1:3306, root, no
password; `.ci/ensure-mariadb` starts it).

On each server, one database per session is migrated once; each test finds it
emptied (support.session_database: milliseconds, against 0.3 to 1.5 s for a new
database), or migrated afresh when a test left its schema changed. Database names
carry the process id so that parallel pytest sessions on one server never collide.

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

from orion_sql.database import Database
from orion_sql.location import sqlite_url
from orion_sql.schema import ensure_schema
from support import DIALECTS
from support.mariadb import MARIADB, mariadb_admin
from support.orphans import remove_orphaned_clusters, remove_orphaned_folders
from support.servers import PG_VERSION
from support.session_database import MariaDBServer, PostgreSQLServer, SessionDatabase

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


_DBNAME = f"orion_sql_test_{os.getpid()}"
postgresql_server = (
    factories.postgresql_noproc(dbname=_DBNAME, **PG)
    if _server_answers()
    else factories.postgresql_proc(dbname=_DBNAME)
)


@pytest.fixture(scope="session", autouse=True)
def _no_orphaned_servers() -> None:
    """Servers a killed session left running are stopped and removed first (support.orphans)."""
    remove_orphaned_folders()
    remove_orphaned_clusters(PG_VERSION)


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


@pytest.fixture(scope="session")
def postgresql(postgresql_server) -> PostgreSQLServer:
    """The PostgreSQL server the tests use."""
    server = postgresql_server
    return PostgreSQLServer(server.host, server.port, server.user, server.password)


@pytest.fixture(scope="session")
def mariadb() -> MariaDBServer:
    """The MariaDB server the tests use (the tests skip when none answers)."""
    try:
        mariadb_admin().close()
    except pymysql.err.OperationalError as error:
        pytest.skip(f"no MariaDB answers on {MARIADB['host']}:{MARIADB['port']} ({error}); run .ci/ensure-mariadb")
    return MariaDBServer()


@pytest.fixture(scope="session")
def postgresql_session_database(postgresql) -> Iterator[SessionDatabase]:
    database = SessionDatabase(postgresql, _DBNAME)
    yield database
    database.drop()


@pytest.fixture(scope="session")
def mariadb_session_database(mariadb) -> Iterator[SessionDatabase]:
    database = SessionDatabase(mariadb, _DBNAME)
    yield database
    database.drop()


@pytest.fixture
def postgresql_url_fresh(postgresql_session_database) -> str:
    """A fresh PostgreSQL database at head (emptied), as a URL (password included)."""
    return postgresql_session_database.fresh()


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
    server = request.getfixturevalue(request.param)
    name = f"orion_sql_empty_{os.getpid()}_{next(_empty_database_numbers)}"
    server.create(name)
    yield server.url(name)
    server.drop(name)


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
