"""Databases on the PostgreSQL and MariaDB test servers, and the session's own database
on each: migrated once, emptied before each test.

A database per test cost PostgreSQL 0.3 to 1.5 s (CREATE DATABASE from a template,
DROP DATABASE) and MariaDB half a second (the migrations); emptying the session's
costs a few milliseconds. A test may change the schema (drop an index, add a
trigger, stamp or downgrade the revision): a fingerprint of the catalog, taken
after the migration and compared before each test, sees it, and the database is
then dropped and migrated afresh, so that no test runs on what another left.
"""
from __future__ import annotations

from typing import Any

import psycopg
import pymysql
from sqlalchemy.engine import URL

from orion_sql.database import Database
from orion_sql.models import Base
from orion_sql.schema import VERSION_TABLE, ensure_schema
from support import mariadb
from support.orphans import orphaned

# Tables emptied by DELETE up to this many rows (a millisecond), by TRUNCATE past it.
DELETE_UP_TO = 1000
TABLES = [table.name for table in reversed(Base.metadata.sorted_tables)]  # children first


class PostgreSQLServer:
    """Databases on a PostgreSQL server, reached as `user` (who may create them)."""

    def __init__(self, host: str, port: int, user: str, password: str | None):
        self.admin: dict[str, Any] = {"host": host, "port": port, "user": user, "password": password or None}

    def url(self, name: str) -> str:
        admin = self.admin
        return URL.create("postgresql+psycopg", username=admin["user"], password=admin["password"],
                          host=admin["host"], port=admin["port"], database=name).render_as_string(hide_password=False)

    def connect(self, name: str = "postgres") -> Any:
        return psycopg.connect(dbname=name, autocommit=True, **self.admin)

    def create(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    def drop(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    LIST_DATABASES = "SELECT datname FROM pg_database"
    # The session's database: another connection left by a test (a process killed
    # mid-transaction, a storage never closed) is ended, so no row lock of it remains.
    PREPARE = (
        "SET lock_timeout = '60s'",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    FINGERPRINT = (
        "SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM ("
        " SELECT format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default)"
        "  FROM information_schema.columns WHERE table_schema = 'public'"
        " UNION ALL SELECT format('relation %s %s', relname, relkind) FROM pg_class"
        "  WHERE relnamespace = 'public'::regnamespace"
        " UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " UNION ALL SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint"
        "  WHERE connamespace = 'public'::regnamespace"
        " UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
        " UNION ALL SELECT format('routine %s %s', oid::regprocedure, md5(prosrc)) FROM pg_proc"
        "  WHERE pronamespace = 'public'::regnamespace"
        " UNION ALL SELECT format('view %s %s', viewname, md5(definition)) FROM pg_views WHERE schemaname = 'public'"
        " UNION ALL SELECT format('grant %s %s %s', grantee, table_name, privilege_type)"
        "  FROM information_schema.role_table_grants WHERE table_schema = 'public'"
        " UNION ALL SELECT 'schema ' || nspname FROM pg_namespace"
        f" UNION ALL SELECT 'revision ' || version_num FROM {VERSION_TABLE}"
        ") AS items(item)"
    )
    QUOTE = '"'

    def truncate(self, tables: list[str]) -> list[str]:
        quoted = ", ".join(f'"{table}"' for table in tables)
        return [f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"]

    def restart_identities(self, cursor: Any) -> None:
        cursor.execute(
            "SELECT setval(format('%I', sequencename)::regclass, 1, false) FROM pg_sequences"
            " WHERE schemaname = 'public' AND last_value IS NOT NULL"
        )


class MariaDBServer:
    """Databases on the MariaDB server of support.mariadb."""

    url = staticmethod(mariadb.mariadb_url)
    connect = staticmethod(mariadb.mariadb_admin)
    create = staticmethod(mariadb.create_mariadb_database)
    drop = staticmethod(mariadb.drop_mariadb_database)

    LIST_DATABASES = "SHOW DATABASES"
    PREPARE = ("SET SESSION lock_wait_timeout = 60", "SET SESSION group_concat_max_len = 1000000")
    FINGERPRINT = (
        "SELECT MD5(GROUP_CONCAT(item ORDER BY item SEPARATOR '\\n')) FROM ("
        " SELECT CONCAT_WS(' ', 'column', table_name, column_name, column_type, is_nullable, column_default, extra)"
        "  AS item FROM information_schema.columns WHERE table_schema = DATABASE()"
        " UNION ALL SELECT CONCAT_WS(' ', 'index', table_name, index_name, non_unique, seq_in_index, column_name)"
        "  FROM information_schema.statistics WHERE table_schema = DATABASE()"
        " UNION ALL SELECT CONCAT_WS(' ', 'constraint', table_name, constraint_name, constraint_type)"
        "  FROM information_schema.table_constraints WHERE constraint_schema = DATABASE()"
        " UNION ALL SELECT CONCAT_WS(' ', 'trigger', trigger_name, MD5(action_statement))"
        "  FROM information_schema.triggers WHERE trigger_schema = DATABASE()"
        " UNION ALL SELECT CONCAT_WS(' ', 'routine', routine_name, MD5(routine_definition))"
        "  FROM information_schema.routines WHERE routine_schema = DATABASE()"
        " UNION ALL SELECT CONCAT_WS(' ', 'view', table_name, MD5(view_definition))"
        "  FROM information_schema.views WHERE table_schema = DATABASE()"
        " UNION ALL SELECT CONCAT_WS(' ', 'table', table_name, table_type, engine)"
        "  FROM information_schema.tables WHERE table_schema = DATABASE()"
        f" UNION ALL SELECT CONCAT('revision ', version_num) FROM {VERSION_TABLE}"
        ") AS items"
    )
    QUOTE = "`"

    def truncate(self, tables: list[str]) -> list[str]:
        return ["SET SESSION foreign_key_checks = 0", *(f"TRUNCATE TABLE `{table}`" for table in tables),
                "SET SESSION foreign_key_checks = 1"]

    def restart_identities(self, cursor: Any) -> None:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND auto_increment > 1"
        )
        for (table,) in cursor.fetchall():
            cursor.execute(f"ALTER TABLE `{table}` AUTO_INCREMENT = 1")


class SessionDatabase:
    """The session's database on one server: at head, emptied before each test."""

    def __init__(self, server: PostgreSQLServer | MariaDBServer, name: str):
        self.server, self.name, self.url = server, name, server.url(name)
        drop_orphaned_databases(server)
        self._fingerprint = self._migrate()

    def _migrate(self) -> str:
        self.server.create(self.name)
        database = Database(self.url)
        ensure_schema(database)
        database.dispose()
        with self.server.connect(self.name) as conn, conn.cursor() as cursor:
            fingerprint = self._read_fingerprint(cursor)
        assert fingerprint is not None, "no version table after the migration"
        return fingerprint

    def _read_fingerprint(self, cursor: Any) -> str | None:
        for statement in self.server.PREPARE:
            cursor.execute(statement)
        try:
            cursor.execute(self.server.FINGERPRINT)
        except (psycopg.Error, pymysql.MySQLError):  # the version table is gone
            return None
        return cursor.fetchone()[0]

    def fresh(self) -> str:
        """The database at head with no rows, as a URL."""
        with self.server.connect(self.name) as conn, conn.cursor() as cursor:
            intact = self._read_fingerprint(cursor) == self._fingerprint
            if intact:
                self._empty(cursor)
        if not intact:
            self._fingerprint = self._migrate()
        return self.url

    def _empty(self, cursor: Any) -> None:
        quote = self.server.QUOTE
        cursor.execute("SELECT " + ", ".join(
            f"(SELECT COUNT(*) FROM (SELECT 1 FROM {quote}{table}{quote} LIMIT {DELETE_UP_TO + 1}) AS found)"
            for table in TABLES
        ))
        rows = dict(zip(TABLES, cursor.fetchone(), strict=True))
        large = [table for table in TABLES if rows[table] > DELETE_UP_TO]
        for statement in self.server.truncate(large) if large else []:
            cursor.execute(statement)
        for table in TABLES:
            if 0 < rows[table] <= DELETE_UP_TO:
                cursor.execute(f"DELETE FROM {quote}{table}{quote}")
        self.server.restart_identities(cursor)

    def drop(self) -> None:
        self.server.drop(self.name)


def drop_orphaned_databases(server: PostgreSQLServer | MariaDBServer) -> list[str]:
    """Drop the databases killed sessions left on the server (support.orphans); returns their names."""
    with server.connect() as conn, conn.cursor() as cursor:
        cursor.execute(server.LIST_DATABASES)
        names = orphaned(name for (name,) in cursor.fetchall())
    for name in names:
        server.drop(name)
    return names
