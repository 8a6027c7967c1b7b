"""Alembic glue: which revision a database is at, and bringing it to head.

The revisions record themselves in ``orion_sql_version`` (not Alembic's default
``alembic_version``) so the schema can share a database with other Alembic users.
"""
from __future__ import annotations

import enum
import os
from typing import Callable, Optional

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from orion.core.io.database import OutdatedDatabaseError
from sqlalchemy import Connection

import orion_sql.migrations
from orion_sql import __version__
from orion_sql.database import Database
from orion_sql.engine import redact

VERSION_TABLE = "orion_sql_version"
MIGRATIONS_DIR = os.path.dirname(orion_sql.migrations.__file__)
UPGRADE_COMMAND = "orion-sql upgrade"


class NewerDatabaseError(RuntimeError):
    """The database was migrated by a newer orion_sql than the one installed."""


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no orion_sql schema yet
    CURRENT = "up to date"
    OUTDATED = "outdated"  # at an older revision: needs `orion-sql upgrade`
    NEWER = "newer than this orion_sql"  # at a revision this package does not know


def alembic_config(connection: Optional[Connection] = None) -> Config:
    """An Alembic configuration for the shipped migrations, bound to `connection`."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    return script_directory().get_current_head()


def revisions() -> list[str]:
    """Every revision this package ships, oldest first."""
    return [script.revision for script in reversed(list(script_directory().walk_revisions()))]


def current_revision(conn: Connection) -> Optional[str]:
    """The revision the database is at, None if it has no orion_sql schema."""
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def state_of(revision: Optional[str]) -> SchemaState:
    if revision is None:
        return SchemaState.EMPTY
    if revision == head_revision():
        return SchemaState.CURRENT
    return SchemaState.OUTDATED if revision in revisions() else SchemaState.NEWER


def read_state(database: Database) -> tuple[Optional[str], SchemaState]:
    """The database's revision, and what it means for this orion_sql."""
    with database.transaction() as conn:
        revision = current_revision(conn)
    return revision, state_of(revision)


def initialise_if_empty(database: Database, conn: Connection) -> Optional[str]:
    """Inside a write transaction: take the migration lock and give an empty database
    the whole schema. Returns the revision found under the lock (None: it was empty)."""
    database.dialect.lock_for_migration(conn)
    revision = current_revision(conn)
    if revision is None:
        command.upgrade(alembic_config(conn), "head")
    return revision


def migrate(database: Database, alembic_command: Callable[[Config], None]) -> tuple[Optional[str], Optional[str]]:
    """Run an Alembic command in one write transaction that other migrators wait for.

    Returns the revisions before and after it, as read inside that transaction.
    """
    with database.transaction(write=True) as conn:
        database.dialect.lock_for_migration(conn)
        before = current_revision(conn)
        alembic_command(alembic_config(conn))
        return before, current_revision(conn)


def upgrade(database: Database, revision: str = "head") -> tuple[Optional[str], Optional[str]]:
    """Run the revisions up to `revision`; returns the revisions before and after."""
    return migrate(database, lambda config: command.upgrade(config, revision))


def downgrade(database: Database, revision: str) -> tuple[Optional[str], Optional[str]]:
    """Undo the revisions down to `revision` ("base": none left); returns before and after."""
    return migrate(database, lambda config: command.downgrade(config, revision))


def ensure_schema(database: Database) -> None:
    """Initialise an empty database; refuse one at another revision than head.

    Many workers may start at once on an empty database: they queue on the
    migration lock, and all but the first find the schema already there.
    """
    _, state = read_state(database)
    if state is SchemaState.EMPTY:
        with database.transaction(write=True) as conn:
            initialise_if_empty(database, conn)
    elif state is SchemaState.OUTDATED:
        raise OutdatedDatabaseError(
            f"The database is outdated. You can upgrade it with the command "
            f"`{UPGRADE_COMMAND}` (database: {redact(database.url)})."
        )
    elif state is SchemaState.NEWER:
        raise NewerDatabaseError(
            f"The database {redact(database.url)} was upgraded by a newer orion_sql than "
            f"the one installed (orion_sql {__version__}); upgrade orion_sql."
        )

