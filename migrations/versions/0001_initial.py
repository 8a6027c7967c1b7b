"""Initial schema: experiments, trials, params, results, algo_locks, benchmarks.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from orion_sql import resumable

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types of this revision (models may change later).
DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
# Exact values: JSON text on PostgreSQL; TEXT on SQLite, where a column declared JSON
# would have numeric affinity and store the text 0.0 as the integer 0.
EXACT_JSON = sa.JSON().with_variant(sa.Text(), "sqlite")
# MariaDB (and MySQL): text compared by code point, trailing spaces significant;
# indexed text within InnoDB's 3072-byte keys; microseconds; values beyond 64 KiB.
MARIADB = ("mariadb", "mysql")
COLLATION = "utf8mb4_nopad_bin"
TEXT = sa.Text().with_variant(mysql.LONGTEXT(collation=COLLATION), *MARIADB)
NAME = sa.Text().with_variant(mysql.VARCHAR(760, collation=COLLATION), *MARIADB)
DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *MARIADB)
DOUBLE = sa.Float(precision=53).with_variant(mysql.DOUBLE(asdecimal=False), *MARIADB)
BYTES = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MARIADB)


def _varchar(length: int):
    return sa.String(length=length).with_variant(mysql.VARCHAR(length, collation=COLLATION), *MARIADB)


STATUSES = "'new', 'reserved', 'suspended', 'completed', 'interrupted', 'broken'"
PARAM_TYPES = "'integer', 'real', 'categorical', 'fidelity'"
RESULT_TYPES = "'objective', 'constraint', 'gradient', 'statistic', 'lie'"


def _value_table(name: str, allowed_types: str) -> None:
    resumable.create_table(
        name,
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", TEXT, nullable=False),
        sa.Column("type", _varchar(16), nullable=True),
        sa.Column("value", EXACT_JSON, nullable=False),
        sa.Column("numeric_value", DOUBLE, nullable=True),
        sa.Column("text_value", TEXT, nullable=True),
        sa.CheckConstraint(f"type IN ({allowed_types})", name=op.f(f"ck_{name}_type")),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name=op.f(f"fk_{name}_trial_id_trials"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("trial_id", "position", name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    resumable.create_table(
        "benchmarks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("document", DOCUMENT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmarks")),
        sa.UniqueConstraint("name", name=op.f("uq_benchmarks_name")),
    )
    resumable.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("root_id", sa.Integer(), nullable=True),
        sa.Column("username", NAME, nullable=True),
        sa.Column("created_at", DATETIME, nullable=True),
        sa.Column("document", DOCUMENT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_experiments_name_version")),
    )
    for column in ("created_at", "parent_id", "root_id", "username"):
        resumable.create_index(op.f(f"ix_experiments_{column}"), "experiments", [column])

    resumable.create_table(
        "algo_locks",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("configuration", DOCUMENT, nullable=True),
        sa.Column("state", BYTES, nullable=True),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("owner", TEXT, nullable=True),
        sa.Column("heartbeat", DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiments.id"],
            name=op.f("fk_algo_locks_experiment_id_experiments"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", name=op.f("pk_algo_locks")),
    )
    resumable.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("hash", _varchar(32), nullable=False),
        sa.Column("status", _varchar(16), nullable=False),
        sa.Column("worker", TEXT, nullable=True),
        sa.Column("exp_working_dir", TEXT, nullable=True),
        sa.Column("parent_hash", _varchar(32), nullable=True),
        sa.Column("submit_time", DATETIME, nullable=True),
        sa.Column("start_time", DATETIME, nullable=True),
        sa.Column("end_time", DATETIME, nullable=True),
        sa.Column("heartbeat", DATETIME, nullable=True),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_trials_status")),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiments.id"],
            name=op.f("fk_trials_experiment_id_experiments"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("experiment_id", "hash", name=op.f("uq_trials_experiment_id_hash")),
    )
    # Reservation: the oldest pending trial of one experiment, walked in id order.
    resumable.create_index(op.f("ix_trials_experiment_id_status_id"), "trials", ["experiment_id", "status", "id"])

    _value_table("params", PARAM_TYPES)
    _value_table("results", RESULT_TYPES)


def downgrade() -> None:
    for table in ("results", "params", "trials", "algo_locks", "experiments", "benchmarks"):
        resumable.drop_table(table)
