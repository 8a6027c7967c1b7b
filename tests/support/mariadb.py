"""The MariaDB server the tests use, databases on it, and servers of a test's own.

ORION_SQL_TEST_MARIADB_HOST/PORT/USER/PASSWORD name the shared one (default
127.0.0.1:3306, root, no password: what `.ci/ensure-mariadb` starts);
:class:`OwnMariaDB` is one a test starts, restarts and removes itself.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import time
from typing import Any

import pymysql
from sqlalchemy.engine import URL

from support.orphans import owned_folder
from support.servers import free_port

STARTUP_SECONDS = 60

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


class OwnMariaDB:
    """A MariaDB server of the test's own (never the machine's): a fresh data directory,
    a free port, user root with no password; restarted cleanly or by SIGKILL."""

    def __init__(self, max_connections: int = 100):
        self.port = free_port()
        self.max_connections = max_connections
        self.directory = owned_folder("mariadb")
        self._process: subprocess.Popen | None = None

    def url(self, dbname: str) -> str:
        return f"mariadb+pymysql://root@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> OwnMariaDB:
        if not (self.directory / "data" / "mysql").exists():
            subprocess.run(
                [_executable("mariadb-install-db"), "--no-defaults", f"--datadir={self.directory / 'data'}",
                 f"--user={getpass.getuser()}", "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, capture_output=True,
            )
        self._process = subprocess.Popen(
            [_executable("mariadbd"), "--no-defaults", f"--datadir={self.directory / 'data'}",
             f"--user={getpass.getuser()}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.directory / 'socket'}", f"--pid-file={self.directory / 'pid'}",
             f"--log-error={self.directory / 'error.log'}", f"--max-connections={self.max_connections}",
             "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=2", "--skip-log-bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                self._admin().close()
                return self
            except pymysql.err.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"MariaDB did not start: see {self.directory / 'error.log'}") from None
                time.sleep(0.2)

    def restart(self, mode: str = "fast") -> None:
        """Restart the server: ``fast`` shuts down cleanly (SIGTERM), ``immediate`` is a crash (SIGKILL)."""
        self._end(signal.SIGKILL if mode == "immediate" else signal.SIGTERM)
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its data directory."""
        self._end(signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, dbname: str) -> str:
        with self._admin() as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{dbname}` CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
        return self.url(dbname)

    def _admin(self) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True, connect_timeout=2)

    def _end(self, how: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(how)
            self._process.wait(timeout=STARTUP_SECONDS)
        self._process = None

    def __enter__(self) -> OwnMariaDB:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _executable(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (Debian's mariadb-server; `make test` installs it)")
    return found
