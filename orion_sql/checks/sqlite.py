"""SQLite's checks: the file (or, before it exists, a scratch file beside it), WAL, the file system."""
from __future__ import annotations

import os
import tempfile

from sqlalchemy import text
from sqlalchemy.engine import URL

from orion_sql.checks.base import Check, CheckFailed, DialectChecks, Probe, passed, warning
from orion_sql.database import Database
from orion_sql.location import sqlite_url

# File systems shared over a network (or a cluster): SQLite's locks and WAL's shared
# memory are not reliable there.
NETWORK_FILE_SYSTEMS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "ocfs2", "gfs2", "davfs", "vboxsf", "fuse.sshfs", "fuse.glusterfs",
    "fuse.s3fs", "fuse.rclone", "fuse.cephfs", "fuse.gcsfuse",
}
MOUNT_TABLE = "/proc/self/mountinfo"


def open_database(probe: Probe) -> str | None:
    """The file, or a scratch file where it will be created (removed when the checks end)."""
    path = str(probe.url.database)  # a SQLite URL always names its file (see location.py)
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise CheckFailed(f"{path} is not a file", "give the path of a SQLite file (or of one to create)")
        probe.database = Database(probe.url)
        probe.cleanups.append(probe.database.dispose)
        return None
    folder = _nearest_existing(os.path.dirname(path))
    if not os.path.isdir(folder):
        raise CheckFailed(f"{path} cannot be created: {folder} is not a folder", "give a path in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckFailed(
            f"{path} does not exist, and the storage cannot create it: {folder} is not writable",
            "give a path in a folder this user can write, or create the folder with the right owner",
        )
    handle, scratch = tempfile.mkstemp(prefix=".orion-sql-test-", suffix=".sqlite", dir=folder)
    os.close(handle)
    probe.database = Database(sqlite_url(scratch))
    probe.scratch = True
    probe.cleanups.append(lambda: _remove(scratch))
    probe.cleanups.append(probe.database.dispose)
    return f"{path} does not exist yet (the storage creates it on first use): checked on a scratch file in {folder}"


def _nearest_existing(folder: str) -> str:
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return folder


def _remove(scratch: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(scratch + suffix):
            os.remove(scratch + suffix)


def version(conn) -> str:
    # Counting the schema's entries reads the file: a file that is not a database fails here.
    found = conn.execute(text("SELECT sqlite_version(), (SELECT count(*) FROM sqlite_master)")).one()
    return f"SQLite {found[0]}"


def check_file(probe: Probe):
    with probe.database.transaction() as conn:
        journal = conn.execute(text("PRAGMA journal_mode")).scalar_one()
    file_system = file_system_of(str(probe.database.url.database))
    found = f"journal mode {journal}, file system {file_system or 'unknown (no ' + MOUNT_TABLE + ')'}"
    if file_system in NETWORK_FILE_SYSTEMS:
        return warning(
            f"{found}: a network file system",
            "SQLite's locks and WAL need one machine's local disk: workers on several machines, or a "
            "file on NFS/CIFS, need PostgreSQL (`orion-sql setup` with a postgresql+psycopg:// URL)",
        )
    if journal.lower() != "wal":
        return warning(f"{found}: not WAL, so readers and the writer block each other",
                       "the storage asks for WAL: make sure the file and its folder are writable, on a local disk")
    return passed(found)


def file_system_of(path: str) -> str | None:
    """The type of the file system holding `path` (Linux), from the longest mount point above it."""
    try:
        with open(MOUNT_TABLE, encoding="utf-8") as table:
            mounts = [line.split() for line in table]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, best_type = "", None
    for fields in mounts:
        mount_point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        file_system = fields[fields.index("-") + 1]
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, file_system
    return best_type


def connect_advice(url: URL) -> str:
    return (
        "check the path, and that this user can read and write the file and its folder; a file that is "
        "not a SQLite database (a PickledDB orion_db.pkl, say) cannot be used: `orion-sql import` it instead"
    )


def write_advice(url: URL) -> str:
    return "the file and its folder must be writable by this user (SQLite writes -wal and -shm files beside it)"


SQLITE = DialectChecks(
    checks=[Check("file", "WAL mode, and a local file system", check_file, needs=("connection",))],
    open=open_database,
    version=version,
    connect_advice=connect_advice,
    write_advice=write_advice,
)
