"""Alembic environment for orion_sql.

Programmatic runs (the storage, `orion-sql`) hand over a connection already in a
locked write transaction. `alembic upgrade head` run by hand finds the database
as the storage does: ``-x url=...``, else ``ORION_DB_ADDRESS``, else the embedded
SQLite default.
"""
from logging.config import fileConfig

from alembic import context

from orion_sql.database import Database
from orion_sql.location import configured_url
from orion_sql.models import Base

config = context.config
# Set by orion_sql.schema.alembic_config, and by alembic.ini for the alembic command.
VERSION_TABLE = config.get_main_option("version_table")
if not VERSION_TABLE:
    raise RuntimeError("the Alembic configuration names no version_table (orion_sql keeps its own)")
if config.config_file_name and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)  # the alembic CLI


def database_url():
    return configured_url(context.get_x_argument(as_dictionary=True).get("url"))


def ours(name, type_, parent_names) -> bool:
    """Compare only orion_sql's tables: another application's tables in the same
    database are not drift, and autogenerate must never drop them (so a revision
    that removes one of our tables writes its drop_table by hand)."""
    return type_ != "table" or name in Base.metadata.tables


def run_on(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=ours,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=database_url(),
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run_on(config.attributes["connection"])
else:
    database = Database(database_url())
    with database.transaction(write=True) as connection:
        database.dialect.lock_for_migration(connection)
        run_on(connection)
    database.dispose()
