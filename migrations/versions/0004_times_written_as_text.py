"""Times written as text: trials.written_times keeps the ISO-8601 text of a trial's
times given as strings (Oríon's own storage tests write them so), to read them back
as written. A nullable column added in place: no table copy, the views are untouched.

Revision ID: 0004_times_written_as_text
Revises: 0003_trial_change_tracking
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from orion_sql import resumable

revision = "0004_times_written_as_text"
down_revision = "0003_trial_change_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    resumable.add_column("trials", sa.Column("written_times", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")))


def downgrade() -> None:
    # In place (SQLite 3.35+): a batch copy of the table would break the views reading it.
    resumable.drop_column("trials", "written_times")
