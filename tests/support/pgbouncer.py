"""A PgBouncer of the test's own, in front of the test's PostgreSQL server.

PgBouncer refuses to run as root: as root it is started with ``-u nobody``, so its
folder is one that user can enter. `make test` installs it when missing (.ci/ensure-pgbouncer).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

STARTUP_SECONDS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def pgbouncer(server_host: str, server_port: int, user: str, pool_mode: str) -> Iterator[int]:
    """A PgBouncer in `pool_mode` forwarding every database to the server; yields its port."""
    executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    folder = tempfile.mkdtemp(prefix="orion-sql-pgbouncer-")
    os.chmod(folder, 0o755)
    port = free_port()
    with open(os.path.join(folder, "users.txt"), "w") as users:
        users.write(f'"{user}" ""\n')
    with open(os.path.join(folder, "pgbouncer.ini"), "w") as ini:
        ini.write(
            f"[databases]\n* = host={server_host} port={server_port}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {folder}/users.txt\npool_mode = {pool_mode}\n"
        )
    as_nobody = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = open(os.path.join(folder, "pgbouncer.log"), "w")
    process = subprocess.Popen([executable, *as_nobody, os.path.join(folder, "pgbouncer.ini")], stdout=log, stderr=log)
    try:
        _wait_for(port, process, folder)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(folder)


def _wait_for(port: int, process: subprocess.Popen, folder: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    with open(os.path.join(folder, "pgbouncer.log")) as log:
        raise RuntimeError(f"PgBouncer did not start on port {port}:\n{log.read()}")
