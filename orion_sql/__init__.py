"""orion_sql: a relational storage (SQLite, PostgreSQL) for the Oríon optimizer.

Configure Oríon with ``storage: {type: sql}``; see the README.
"""
__version__ = "0.1.0"

from orion_sql.storage import SQL  # noqa: E402 (after __version__, which schema reads)

__all__ = ["SQL", "__version__"]
