"""The schema's state: the revisions this package ships, the one a database is at,
what that means (the one refusal rule), and bringing a database to a revision.

The revisions record themselves in ``orion_sql_version`` (not Alembic's default
``alembic_version``) so the schema can share a database with other Alembic users.
"""
from __future__ import annotations

import enum
import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from orion.core.io.database import DatabaseError, OutdatedDatabaseError
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from orion_sql.database import Database
from orion_sql.location import redact
from orion_sql.version import __version__

VERSION_TABLE = "orion_sql_version"
UPGRADE_COMMAND = "orion-sql upgrade"


def _migrations_dir() -> str:
    """Where the Alembic environment is (found without importing it): the installed
    ``orion_sql.migrations``, else, where orion_sql is imported from a checkout over a
    regular install (`alembic upgrade head` there), the checkout's ``migrations/``."""
    spec = importlib.util.find_spec("orion_sql.migrations")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


MIGRATIONS_DIR = _migrations_dir()


class NewerDatabaseError(DatabaseError):
    """The database was migrated by a newer orion_sql than the one installed (a DatabaseError:
    Oríon's command line prints its message as one line)."""


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no orion_sql schema yet
    CURRENT = "up to date"
    OUTDATED = "outdated"  # at an older revision: needs `orion-sql upgrade`
    NEWER = "newer than this orion_sql"  # at a revision this package does not know


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the shipped migrations, bound to `connection`."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["connection"] = connection
    return config


@functools.cache
def shipped_revisions() -> tuple[str, ...]:
    """Every revision this package ships, oldest first (read once per process)."""
    script = ScriptDirectory.from_config(alembic_config())
    return tuple(revision.revision for revision in reversed(list(script.walk_revisions())))


def head_revision() -> str:
    return shipped_revisions()[-1]


def revisions() -> list[str]:
    """Every revision this package ships, oldest first."""
    return list(shipped_revisions())


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, None if it has no orion_sql schema."""
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def state_of(revision: str | None) -> SchemaState:
    """What a database at `revision` is to this orion_sql."""
    if revision is None:
        return SchemaState.EMPTY
    if revision == head_revision():
        return SchemaState.CURRENT
    return SchemaState.OUTDATED if revision in shipped_revisions() else SchemaState.NEWER


@dataclass(frozen=True)
class SchemaStatus:
    """A database's revision and what it means for this orion_sql."""

    url: URL
    revision: str | None

    @property
    def state(self) -> SchemaState:
        return state_of(self.revision)

    def refusal(self, migrating: bool = False) -> Exception | None:
        """The one rule: orion_sql uses a database at head (or an empty one, which it
        initialises) and migrates any revision it knows. The error refusing anything
        else, or None."""
        where = redact(self.url)
        if self.state is SchemaState.NEWER:
            return NewerDatabaseError(
                f"the database {where} is at revision {self.revision}, which orion_sql {__version__} does not "
                f"know (its head is {head_revision()}): it was upgraded by a newer orion_sql; install that one"
            )
        if self.state is SchemaState.OUTDATED and not migrating:
            return OutdatedDatabaseError(
                f"The database {where} is outdated (at revision {self.revision}, this orion_sql's head is "
                f"{head_revision()}). You can upgrade it with the command `{UPGRADE_COMMAND}`."
            )
        return None

    def check(self, migrating: bool = False) -> None:
        """Raise the :meth:`refusal`, if any."""
        error = self.refusal(migrating)
        if error is not None:
            raise error


def read_status(database: Database) -> SchemaStatus:
    """The database's revision, read in a transaction of its own."""
    with database.transaction() as conn:
        return SchemaStatus(database.url, current_revision(conn))


def initialise_if_empty(database: Database, conn: Connection) -> SchemaStatus:
    """Inside a write transaction: take the migration lock and give an empty database
    the whole schema. Returns the status found under the lock (EMPTY: it was empty)."""
    database.dialect.lock_for_migration(conn)
    status = SchemaStatus(database.url, current_revision(conn))
    if status.state is SchemaState.EMPTY:
        command.upgrade(alembic_config(conn), "head")
    return status


def migrate(database: Database, alembic_command: Callable[[Config], None]) -> tuple[str | None, str | None]:
    """Run an Alembic command in one write transaction that other migrators wait for.

    Returns the revisions before and after it, as read inside that transaction.
    """
    with database.transaction(write=True) as conn:
        database.dialect.lock_for_migration(conn)
        before = current_revision(conn)
        alembic_command(alembic_config(conn))
        return before, current_revision(conn)


def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Run the revisions up to `revision`; returns the revisions before and after."""
    return migrate(database, lambda config: command.upgrade(config, revision))


def downgrade(database: Database, revision: str) -> tuple[str | None, str | None]:
    """Undo the revisions down to `revision` ("base": none left); returns before and after."""
    return migrate(database, lambda config: command.downgrade(config, revision))


def remove_schema(database: Database) -> None:
    """Undo every revision and drop the version table: the database holds no orion_sql
    schema afterwards (what a failed import leaves where DDL is not transactional).

    Only where the revisions' operations skip what is already gone (MariaDB, see
    orion_sql.resumable): the version table may name an older revision than the objects
    left (its last stamp was rolled back with the failed work), so every revision is
    undone from head."""
    if database.dialect.transactional_ddl:
        raise RuntimeError("remove_schema is for databases whose DDL is not transactional")
    migrate(database, lambda config: command.stamp(config, "head", purge=True))
    downgrade(database, "base")
    with database.transaction(write=True) as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))


def ensure_schema(database: Database) -> None:
    """Initialise an empty database; refuse one at another revision than head.

    Many workers may start at once on an empty database: they queue on the
    migration lock, and all but the first find the schema already there.
    """
    status = read_status(database)
    if status.state is SchemaState.EMPTY:
        with database.transaction(write=True) as conn:
            status = initialise_if_empty(database, conn)
    status.check()


def upgrade_for_orion_db_upgrade(database: Database) -> str:
    """What `orion db upgrade` means on sql: bring the schema to head. Returns what was done.

    The document rewrite Oríon runs next is for its legacy storage (it writes through
    legacy's database API); documents stored by orion_sql need none.
    """
    read_status(database).check(migrating=True)
    before, after = upgrade(database)
    if before == after:
        return f"{redact(database.url)} is already at head {after}; nothing to do."
    return f"Upgraded {redact(database.url)} from {before or 'base (no orion_sql schema)'} to {after}."
