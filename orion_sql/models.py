"""SQLAlchemy models: the relational schema Oríon's documents are stored in.

The Alembic revisions under ``migrations/`` own the schema; these models describe
it for queries, and ``alembic check`` proves the two agree.
"""
from __future__ import annotations

import datetime
import math
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    FetchedValue,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from orion_sql import exact_json

TRIAL_STATUSES = ("new", "reserved", "suspended", "completed", "interrupted", "broken")
PENDING_STATUSES = ("new", "suspended", "interrupted")
PARAM_TYPES = ("integer", "real", "categorical", "fidelity")
RESULT_TYPES = ("objective", "constraint", "gradient", "statistic", "lie")


class _JsonText(TypeDecorator):
    """JSON in a TEXT column. SQLite gives a column declared JSON numeric affinity,
    which would turn the text 0.0 into the integer 0."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return exact_json.dumps(value)

    def process_result_value(self, value, dialect):
        return None if value is None else exact_json.loads(value)


# MariaDB (and MySQL: SQLAlchemy names the dialect after the URL) gets types of its own:
# text compared and ordered by code point with trailing spaces significant, indexed text
# within InnoDB's 3072-byte keys (4 bytes a utf8mb4 character), times to the microsecond,
# values and states beyond TEXT's and BLOB's 64 KiB.
MARIADB = ("mariadb", "mysql")
MARIADB_COLLATION = "utf8mb4_nopad_bin"
MAX_INDEXED_TEXT = 760
AnyText = Text().with_variant(mysql.LONGTEXT(collation=MARIADB_COLLATION), *MARIADB)
# Indexed text: names of experiments and benchmarks, users.
Name = Text().with_variant(mysql.VARCHAR(MAX_INDEXED_TEXT, collation=MARIADB_COLLATION), *MARIADB)
Bytes = LargeBinary().with_variant(mysql.LONGBLOB(), *MARIADB)


def short_text(length: int):
    """VARCHAR(`length`), compared by code point on MariaDB too."""
    return String(length).with_variant(mysql.VARCHAR(length, collation=MARIADB_COLLATION), *MARIADB)


class _FiniteDouble(TypeDecorator):
    """MariaDB's DOUBLE, which cannot hold NaN or infinities: those are stored as NULL
    (the exact value stays in the JSON `value` column beside it)."""

    impl = mysql.DOUBLE(asdecimal=False)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is not None and not math.isfinite(value) else value


Double = Float(53).with_variant(_FiniteDouble(), *MARIADB)


# Documents are queried by key, so PostgreSQL keeps them as JSONB; value columns keep
# the exact text exact_json wrote: JSON (text, validated) on PostgreSQL, TEXT on SQLite.
Document = JSON().with_variant(JSONB(), "postgresql")
ExactJson = JSON().with_variant(_JsonText(), "sqlite")
# Naive UTC, microseconds, on every database.
UtcDateTime = DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), *MARIADB)


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    """Declarative base with named constraints, so migrations can refer to them, and
    one column type per Python type (a column says its type only where it differs)."""

    type_annotation_map = {
        int: Integer,
        str: AnyText,
        float: Double,
        bytes: Bytes,
        datetime.datetime: UtcDateTime,
        dict[str, Any]: Document,
    }

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ExperimentRow(Base):
    """One Oríon experiment: its document, plus indexed columns derived from it."""

    __tablename__ = "experiments"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index(None, "parent_id"),
        Index(None, "root_id"),
        Index(None, "username"),
        Index(None, "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name)
    version: Mapped[int] = mapped_column()
    # refers.parent_id and refers.root_id. Not foreign keys: Oríon deletes an EVC
    # tree from its root down (`orion db rm`), which a constraint would forbid.
    parent_id: Mapped[int | None] = mapped_column()
    root_id: Mapped[int | None] = mapped_column()
    username: Mapped[str | None] = mapped_column(Name)  # metadata.user
    created_at: Mapped[datetime.datetime | None] = mapped_column()  # metadata.datetime
    document: Mapped[dict[str, Any]] = mapped_column()
    # Change tracking for the trial cache (revision 0003; triggers keep them): random
    # per experiment row, deletions of its trials, and (SQLite) changes of its trials.
    incarnation: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    trial_deletions: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    trial_changes: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())


class TrialRow(Base):
    """One trial of an experiment; its params and results live in their own tables."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("experiment_id", "hash"),
        # Reservation walks this index: oldest pending trial of one experiment, by id.
        Index(None, "experiment_id", "status", "id"),
        # The trial cache asks for what changed since its last read.
        Index(None, "experiment_id", "change_stamp"),
        CheckConstraint(f"status IN ({_sql_list(TRIAL_STATUSES)})", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)  # Oríon's trial `_id`
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    hash: Mapped[str] = mapped_column(short_text(32))  # Oríon's trial `id`
    status: Mapped[str] = mapped_column(short_text(16))
    worker: Mapped[str | None] = mapped_column()
    exp_working_dir: Mapped[str | None] = mapped_column()
    parent_hash: Mapped[str | None] = mapped_column(short_text(32))  # Oríon's `parent`
    submit_time: Mapped[datetime.datetime | None] = mapped_column()
    start_time: Mapped[datetime.datetime | None] = mapped_column()
    end_time: Mapped[datetime.datetime | None] = mapped_column()
    heartbeat: Mapped[datetime.datetime | None] = mapped_column()
    # When the row last changed, set by a trigger: see orion_sql.trial_cache.
    change_stamp: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    # {time field: its ISO-8601 text} for the times written as text (Oríon's own storage
    # tests do), read back as written while the text still denotes the column's time.
    written_times: Mapped[dict[str, Any] | None] = mapped_column()


class _TrialValue:
    """Columns shared by params and results: one named, typed value of a trial."""

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column()
    type: Mapped[str | None] = mapped_column(short_text(16))
    value: Mapped[Any] = mapped_column(ExactJson)  # exact round trip, through exact_json
    numeric_value: Mapped[float | None] = mapped_column()
    text_value: Mapped[str | None] = mapped_column()

    @declared_attr.directive
    def __table_args__(cls):  # noqa: N805 (a class-level directive)
        allowed = _sql_list(cls.allowed_types)
        return (CheckConstraint(f"type IN ({allowed})", name="type"),)


class ParamRow(_TrialValue, Base):
    """A parameter of a trial, in the order Oríon gave them."""

    __tablename__ = "params"
    allowed_types = PARAM_TYPES


class ResultRow(_TrialValue, Base):
    """A result of a trial (objective, constraint, ...), in the order reported."""

    __tablename__ = "results"
    allowed_types = RESULT_TYPES


class AlgoLockRow(Base):
    """The algorithm of one experiment: configuration, pickled state, and its lock.

    On PostgreSQL the lock is this row's lock, held by the holder's transaction;
    ``locked``/``owner``/``heartbeat`` carry the lock on SQLite, which has no row locks.
    """

    __tablename__ = "algo_locks"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    configuration: Mapped[dict[str, Any] | None] = mapped_column()
    state: Mapped[bytes | None] = mapped_column()
    locked: Mapped[bool] = mapped_column(default=False)
    owner: Mapped[str | None] = mapped_column()
    heartbeat: Mapped[datetime.datetime | None] = mapped_column()


class AlgoLockWaiterRow(Base):
    """One process waiting for an experiment's algorithm lock (SQLite, behind a pooler), by arrival.

    The lowest live ticket takes the lock next, so no waiter starves; a waiter whose
    process died (same host: its pid is gone) or fell silent is struck off the queue.
    """

    __tablename__ = "algo_lock_waiters"
    __table_args__ = (Index(None, "experiment_id", "ticket"),)

    ticket: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("algo_locks.experiment_id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column()
    heartbeat: Mapped[datetime.datetime] = mapped_column()


class BenchmarkRow(Base):
    """One Oríon benchmark: its document, with its unique name as a column."""

    __tablename__ = "benchmarks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    document: Mapped[dict[str, Any]] = mapped_column()


# The tables, for Core statements (a model's __table__ is typed as any FromClause).
experiments = cast(Table, ExperimentRow.__table__)
trials = cast(Table, TrialRow.__table__)
params = cast(Table, ParamRow.__table__)
results = cast(Table, ResultRow.__table__)
algo_locks = cast(Table, AlgoLockRow.__table__)
algo_lock_waiters = cast(Table, AlgoLockWaiterRow.__table__)
benchmarks = cast(Table, BenchmarkRow.__table__)
