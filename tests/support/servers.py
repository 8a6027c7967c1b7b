"""Servers a test starts, restarts and removes itself: a PostgreSQL and a PgBouncer.

Never the machine's shared cluster: each server here has its own port and data
directory. As root, Debian's ``pg_createcluster``/``pg_ctlcluster`` do the switch
to the ``postgres`` user that ``pg_ctl`` needs; otherwise ``initdb``/``pg_ctl``
run as the current user. PgBouncer is Debian's ``pgbouncer`` (``make test``
installs it when missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import psycopg

from support.orphans import owned_folder

PG_VERSION = "15"
BOUNCER_STARTUP_SECONDS = 20
SERVER_SETTINGS = {"max_connections": "100", "fsync": "off", "shared_buffers": "32MB"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(port: int, timeout: float = 60, dbname: str = "postgres") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _bindir() -> Path:
    found = sorted(glob.glob(f"/usr/lib/postgresql/{PG_VERSION}/bin")) or sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if found:
        return Path(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("no PostgreSQL server binaries (pg_ctl) on this machine")
    return Path(pg_ctl).parent


class OwnPostgreSQL:
    """A PostgreSQL server of the test's own, on a free port, user postgres, trust auth."""

    def __init__(self, **settings: str):
        self.port = free_port()
        self.settings = {**SERVER_SETTINGS, **settings}
        self.as_root = os.geteuid() == 0 and shutil.which("pg_createcluster") is not None
        self.name = f"orion_sql_{os.getpid()}_{self.port}"
        self._datadir: Path | None = None

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> OwnPostgreSQL:
        if self.as_root:
            options = [arg for name, value in self.settings.items() for arg in ("-o", f"{name}={value}")]
            _run(
                "pg_createcluster",
                PG_VERSION,
                self.name,
                "-p",
                str(self.port),
                "--start",
                *options,
                "--",
                "--auth-host=trust",
                "--auth-local=trust",
            )
        else:
            self._datadir = owned_folder("pg") / "data"
            _run(str(_bindir() / "initdb"), "-D", str(self._datadir), "-U", "postgres", "--auth=trust")
            self._pg_ctl("start", "-w")
        wait_until_answering(self.port)
        return self

    def restart(self, mode: str = "fast") -> None:
        """Restart the server (``-m fast`` ends sessions cleanly, ``-m immediate`` is a crash)."""
        if self.as_root:
            _run("pg_ctlcluster", PG_VERSION, self.name, "restart", "-m", mode)
        else:
            self._pg_ctl("restart", "-w", "-m", mode)

    def stop(self) -> None:
        """Stop and remove the server with its data directory."""
        if self.as_root:
            subprocess.run(["pg_dropcluster", PG_VERSION, self.name, "--stop"], check=False, capture_output=True)
        elif self._datadir is not None:
            subprocess.run(
                [str(_bindir() / "pg_ctl"), "-D", str(self._datadir), "stop", "-m", "immediate"],
                check=False,
                capture_output=True,
            )
            shutil.rmtree(self._datadir.parent, ignore_errors=True)

    def admin(self) -> psycopg.Connection:
        """A superuser connection (autocommit): it may take one of the slots
        ``superuser_reserved_connections`` keeps from other roles."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True)

    def create_role(self, user: str) -> None:
        """A login role that is not a superuser: ``max_connections`` less the reserved slots bounds it."""
        with self.admin() as conn:
            conn.execute(f'CREATE ROLE "{user}" LOGIN NOSUPERUSER')

    def create_database(self, dbname: str, owner: str = "postgres") -> str:
        """A new database owned by `owner`; its URL as `owner`."""
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{dbname}" OWNER "{owner}"')
        return self.url(dbname, owner)

    def drop_database(self, dbname: str) -> None:
        """Drop `dbname`, ending its sessions (a pooler's idle server connections count
        against ``max_connections`` until then)."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')

    def _pg_ctl(self, *args: str) -> None:
        assert self._datadir is not None, "start() makes the data directory"
        options = " ".join(f"-c {name}={value}" for name, value in self.settings.items())
        _run(
            str(_bindir() / "pg_ctl"),
            "-D",
            str(self._datadir),
            "-l",
            str(self._datadir / "log"),
            "-o",
            f"-p {self.port} -k {self._datadir} -h 127.0.0.1 {options}",
            *args,
        )

    def __enter__(self) -> OwnPostgreSQL:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PeakConnections:
    """The most server connections to a database seen in pg_stat_activity, sampled
    every 100 ms on one superuser connection opened beforehand, so that sampling never
    takes a slot the workers need (or fails for want of one)."""

    def __init__(self, server: OwnPostgreSQL, dbname: str):
        self.server, self.dbname, self.peak = server, dbname, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._conn: psycopg.Connection | None = None

    def _sample(self) -> None:
        assert self._conn is not None
        while not self._stop.wait(0.1):
            # Client backends only: an autovacuum worker on the database is the server's own.
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
            (count,) = self._conn.execute(query, (self.dbname,)).fetchone() or (0,)
            self.peak = max(self.peak, count)

    def __enter__(self) -> PeakConnections:
        self._conn = self.server.admin()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        assert self._conn is not None
        self._conn.close()


class PgBouncer:
    """Debian's PgBouncer in front of a server: `pool_mode` pooling, at most `pool_size`
    server connections, every database forwarded, `user` let in without a password.

    PgBouncer refuses to run as root: as root it runs as ``nobody``, so its folder is
    one that user can enter, and it logs to the standard output this object keeps.
    """

    def __init__(
        self,
        server_port: int,
        pool_mode: str = "transaction",
        pool_size: int = 20,
        server_host: str = "127.0.0.1",
        user: str = "postgres",
    ):
        self.port = free_port()
        self.server_port, self.server_host = server_port, server_host
        self.pool_mode, self.pool_size, self.user = pool_mode, pool_size, user
        self.directory = owned_folder("pgbouncer")
        self._process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PgBouncer:
        executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(executable):
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install -y pgbouncer; make test does it)")
        os.chmod(self.directory, 0o755)
        (self.directory / "users.txt").write_text(f'"{self.user}" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\nmax_db_connections = {self.pool_size}\nmax_client_conn = 2000\n"
        )
        as_nobody = ["-u", "nobody"] if os.geteuid() == 0 else []
        self._log = open(self.directory / "pgbouncer.log", "wb")
        self._process = subprocess.Popen(
            [executable, *as_nobody, str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + BOUNCER_STARTUP_SECONDS
        while time.monotonic() < deadline and self._process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        log = (self.directory / "pgbouncer.log").read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"PgBouncer did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
