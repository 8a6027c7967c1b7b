"""Helpers the test modules share (fixtures live in conftest.py)."""

DIALECTS = ["sqlite", "postgresql", "mariadb"]

# Test modules whose MariaDB runs are skipped (module -> why), with the reason printed
# by `pytest -ra`. None now; test_fleet runs its own PostgreSQL servers (restarts,
# PgBouncer) and has no MariaDB variant yet.
MARIADB_PENDING: dict[str, str] = {}
