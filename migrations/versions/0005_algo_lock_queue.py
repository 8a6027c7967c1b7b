"""Algorithm lock queue: SQLite waiters take the lock in arrival order.

One new table, ``algo_lock_waiters`` (a ticket per waiting process); no existing
table changes. PostgreSQL queues waiters on the row lock and never writes it.

Revision ID: 0005_algo_lock_queue
Revises: 0004_times_written_as_text
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from orion_sql import resumable

revision = "0005_algo_lock_queue"
down_revision = "0004_times_written_as_text"
branch_labels = None
depends_on = None


# Frozen copies of the column types (MariaDB and MySQL: code point text, microseconds).
OWNER = sa.Text().with_variant(mysql.LONGTEXT(collation="utf8mb4_nopad_bin"), "mariadb", "mysql")
HEARTBEAT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb", "mysql")


def upgrade() -> None:
    resumable.create_table(
        "algo_lock_waiters",
        sa.Column("ticket", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("heartbeat", HEARTBEAT, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["algo_locks.experiment_id"],
            name=op.f("fk_algo_lock_waiters_experiment_id_algo_locks"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ticket", name=op.f("pk_algo_lock_waiters")),
    )
    resumable.create_index(
        op.f("ix_algo_lock_waiters_experiment_id_ticket"), "algo_lock_waiters", ["experiment_id", "ticket"]
    )


def downgrade() -> None:
    # Its index goes with it (MariaDB refuses to drop an index its foreign key uses).
    resumable.drop_table("algo_lock_waiters")
