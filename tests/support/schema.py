"""Reading and stamping a database's schema revision, for the lifecycle tests."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orion_sql.database import Database
from orion_sql.schema import VERSION_TABLE, current_revision

REPOSITORY = Path(__file__).resolve().parents[2]
FUTURE_REVISION = "ffff_future"  # a revision no orion_sql knows


def revision_of(url: str):
    database = Database(make_url(url))
    try:
        with database.transaction() as conn:
            return current_revision(conn)
    finally:
        database.dispose()


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return set(inspector.get_table_names()) | set(inspector.get_view_names())
    finally:
        engine.dispose()


def stamp(url: str, revision: str) -> None:
    """Record `revision` in the version table, as a newer orion_sql would have."""
    database = Database(make_url(url))
    with database.transaction(write=True) as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :revision"), {"revision": revision})
    database.dispose()
