"""Real databases for every test: a SQLite file, and a fresh PostgreSQL database.

PostgreSQL: the server named by ORION_SQL_TEST_PG_HOST/PORT/USER/PASSWORD
(default: the local one on 127.0.0.1:5432, user postgres) when it answers; else
pytest-postgresql starts its own server. Each test gets its own database, cloned
from a template migrated once per session. Database names carry the process id
so that parallel pytest sessions on one server never collide.

With ORION_SQL_REQUIRE_POSTGRESQL=1 (as in CI), a session in which no
PostgreSQL test passed fails: a missing server is never a quiet skip.
"""
from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories
from sqlalchemy.engine import URL

from orion_sql.database import Database
from orion_sql.location import sqlite_url
from orion_sql.schema import ensure_schema
from support import DIALECTS

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


# --- CI guard: PostgreSQL tests must have run ------------------------------------

_passed_postgresql_tests: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and "postgresql" in report.nodeid:
        _passed_postgresql_tests.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("ORION_SQL_REQUIRE_POSTGRESQL") == "1" and not _passed_postgresql_tests:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "ORION_SQL_REQUIRE_POSTGRESQL=1 but no PostgreSQL test passed", red=True
        )
        session.exitstatus = 1
