"""orion_sql: a relational storage (SQLite, PostgreSQL) for the Oríon optimizer.

Configure Oríon with ``storage: {type: sql}``; see the README.
"""

from orion_sql.storage import SQL
from orion_sql.version import __version__

__all__ = ["SQL", "__version__"]
