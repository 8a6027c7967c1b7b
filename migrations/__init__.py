"""orion_sql's Alembic environment; installed as the package orion_sql.migrations."""
