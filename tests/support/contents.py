"""Everything a database holds, to check that a command left it exactly as it was."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url


def database_contents(url: str) -> dict:
    """Every row of every table (orion_sql's, its version table, anyone's), the names of
    views, and on PostgreSQL where each sequence stands."""
    engine = sa.create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            metadata = sa.MetaData()
            metadata.reflect(conn)
            contents: dict[str, list] = {
                table.name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
                for table in metadata.sorted_tables
            }
            contents["views"] = sorted(sa.inspect(conn).get_view_names())
            if engine.dialect.name == "postgresql":
                sequences = sa.text("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
                contents["sequences"] = list(conn.execute(sequences).all())
            return contents
    finally:
        engine.dispose()
