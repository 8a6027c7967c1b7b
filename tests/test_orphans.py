"""A killed test session's leftovers (servers of its own, databases on the shared
servers) are removed when the next session starts; a live session's never are."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from support.orphans import OWNER_FILE, owned_folder, remove_orphaned_folders
from support.session_database import drop_orphaned_databases


def _dead_pid() -> int:
    """The pid of a process that has ended: a killed session's."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _server_on(folder) -> subprocess.Popen:
    """A stand-in server: a process whose command line names its folder, as mariadbd's does."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(folder)])


def test_a_dead_sessions_server_is_killed_and_its_folder_removed():
    orphan, live = owned_folder("test"), owned_folder("test")
    (orphan / OWNER_FILE).write_text(str(_dead_pid()))
    orphan_server, live_server = _server_on(orphan), _server_on(live)
    try:
        remove_orphaned_folders()
        assert orphan_server.wait(timeout=30) == -signal.SIGKILL
        assert not orphan.exists()
        assert live_server.poll() is None and (live / OWNER_FILE).exists()
    finally:
        for server in (orphan_server, live_server):
            server.kill()
            server.wait()
        shutil.rmtree(live, ignore_errors=True)


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_a_dead_sessions_databases_are_dropped(request, dialect):
    server = request.getfixturevalue(dialect)
    orphan, live = f"orion_sql_test_{_dead_pid()}", f"orion_sql_empty_{os.getpid()}_0"
    server.create(orphan)
    server.create(live)
    try:
        dropped = drop_orphaned_databases(server)
        assert orphan in dropped and live not in dropped
        with server.connect() as conn, conn.cursor() as cursor:
            cursor.execute(server.LIST_DATABASES)
            names = {name for (name,) in cursor.fetchall()}
        assert orphan not in names and live in names
    finally:
        server.drop(orphan)
        server.drop(live)
