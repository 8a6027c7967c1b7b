"""The MariaDB server the tests use, and databases on it.

ORION_SQL_TEST_MARIADB_HOST/PORT/USER/PASSWORD name it (default 127.0.0.1:3306,
root, no password: what `.ci/ensure-mariadb` starts).
"""
from __future__ import annotations

import os
from typing import Any

import pymysql
from sqlalchemy.engine import URL

MARIADB: dict[str, Any] = {
    "host": os.environ.get("ORION_SQL_TEST_MARIADB_HOST", "127.0.0.1"),
    "port": int(os.environ.get("ORION_SQL_TEST_MARIADB_PORT", "3306")),
    "user": os.environ.get("ORION_SQL_TEST_MARIADB_USER", "root"),
    "password": os.environ.get("ORION_SQL_TEST_MARIADB_PASSWORD", ""),
}


def mariadb_admin(database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(database=database, autocommit=True, connect_timeout=5, **MARIADB)


def mariadb_url(database: str) -> str:
    url = URL.create(
        "mariadb+pymysql",
        username=MARIADB["user"],
        password=MARIADB["password"] or None,
        host=MARIADB["host"],
        port=MARIADB["port"],
        database=database,
    )
    return url.render_as_string(hide_password=False)


def create_mariadb_database(name: str) -> None:
    with mariadb_admin() as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")


def drop_mariadb_database(name: str) -> None:
    with mariadb_admin() as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
