"""Freeze a SQLite database at a schema revision, for tests/test_schema.py.

    cd tests && ../.venv/bin/python -m support.make_frozen [REVISION]    (default: the head)

Creates tests/frozen/<REVISION>.sqlite: an empty file upgraded to REVISION that
holds a small real Oríon experiment (EXPERIMENT, TRIALS completed trials). At the
head, Oríon runs on the sql storage itself; at an older revision, Oríon runs in
memory and the revision's writer (support.revision_writers.WRITERS) stores the result
with that revision's SQL. Run it when a revision is released; a frozen file is
what that release wrote, so it is never remade.
"""
from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from orion_sql import SQL
from orion_sql.database import Database
from orion_sql.location import sqlite_url
from orion_sql.schema import head_revision, revisions, upgrade
from support.revision_writers import WRITERS, OrionRecord, run

FROZEN_DIR = Path(__file__).resolve().parents[1] / "frozen"
EXPERIMENT = "frozen"
TRIALS = 3


def freeze(revision: str, path: Path) -> None:
    """Write the frozen database of `revision` to `path` (which must not exist)."""
    if revision not in revisions():
        raise SystemExit(f"unknown revision {revision!r}; revisions: {', '.join(revisions())}")
    if path.exists():
        raise SystemExit(f"{path} exists: a frozen database is never remade")
    url = str(sqlite_url(str(path)))
    database = Database(make_url(url))
    upgrade(database, revision)
    if revision == head_revision():
        storage = SQL(uri=url)
        run(EXPERIMENT, storage, TRIALS).close()
        storage.close()  # its connections would keep the file in WAL mode
    else:
        with database.transaction(write=True) as conn:
            WRITERS[revision](conn, OrionRecord.run(EXPERIMENT, TRIALS))
    database.dispose()
    _as_one_file(path)


def _as_one_file(path: Path) -> None:
    """Fold the write-ahead log into the file and leave WAL mode: one self-contained file."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
    conn.close()


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else head_revision()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # Oríon's trial working directories go here, and away
        freeze(revision, FROZEN_DIR / f"{revision}.sqlite")
    print(f"froze {FROZEN_DIR / f'{revision}.sqlite'}")


if __name__ == "__main__":
    main()
