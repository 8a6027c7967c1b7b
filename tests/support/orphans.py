"""What a killed test session leaves behind, removed when the next one starts.

A test session killed by a signal (a CI timeout, a developer's Ctrl-\\) never runs
its teardown: the servers its tests started keep running, holding memory, ports and
CPU on a 2-core machine, and its session databases stay on the shared servers. Each
of these carries the pid of the pytest process that made it (a server folder's
``owner`` file, a cluster's or database's name); one whose process is gone is an
orphan. Sessions running side by side never remove each other's: theirs are alive.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

FOLDER_PREFIX = "orion_sql_"
OWNER_FILE = "owner"
# Names of databases and Debian clusters that end in their session's pid (and a port).
_OWNED_NAME = re.compile(r"^orion_sql_[a-z_]*?(\d+)(_\d+)?$")


def owned_folder(kind: str) -> Path:
    """A new temporary folder for a server of this session's own, marked with its pid."""
    folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{kind}_"))
    (folder / OWNER_FILE).write_text(str(os.getpid()))
    return folder


def orphaned(names: Iterable[str]) -> list[str]:
    """The names, of those given, of databases or clusters whose session is gone."""
    owners = {name: _OWNED_NAME.match(name) for name in names}
    return [name for name, found in owners.items() if found is not None and not _alive(int(found.group(1)))]


def remove_orphaned_folders() -> list[Path]:
    """Kill the processes of server folders whose session is gone, remove the folders;
    returns them."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):  # not one of ours, or being made right now
            continue
        if _alive(owner):
            continue
        for pid in _processes_naming(str(folder)):
            _kill(pid)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def remove_orphaned_clusters(version: str) -> list[str]:
    """As root: drop Debian clusters of :class:`support.servers.OwnPostgreSQL` whose session is gone."""
    folder = Path("/etc/postgresql", version)
    if os.geteuid() != 0 or not folder.is_dir():
        return []
    names = orphaned(path.name for path in folder.iterdir())
    for name in names:
        subprocess.run(["pg_dropcluster", version, name, "--stop"], check=False, capture_output=True)
    return names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _processes_naming(text: str) -> list[int]:
    """Pids of processes whose command line mentions `text` (a server started on its folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
