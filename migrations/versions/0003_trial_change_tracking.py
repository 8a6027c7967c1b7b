"""Trial change tracking: what a process's trial cache asks to read only what changed.

Every inserted or updated trial row is stamped (``trials.change_stamp``) by a
trigger, so that every writer (the storage, ``orion-sql import``, SQL typed by
hand) marks what it changed without knowing it:

- PostgreSQL: the writing transaction's id, ``pg_current_xact_id()``. A reader
  that remembers its snapshot's ``xmin`` later asks for stamps ``>=`` it: every
  transaction it could not see then has an id at least that high. No shared
  counter, so concurrent writers never wait on each other for it.
- SQLite: a per-experiment counter, ``experiments.trial_changes``, bumped by the
  same trigger. SQLite runs one writer at a time, so counter order is commit order.

Deleting trials (or moving one to another experiment) bumps
``experiments.trial_deletions``: readers then reread the experiment whole.
``experiments.incarnation`` is random per experiment row, so an experiment
deleted and created again with the same id is told apart.

A parameter or result row changed by hand without touching its trial's row is
not seen (the storage always writes the trial row too).

Revision ID: 0003_trial_change_tracking
Revises: 0002_analytics_views
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

from orion_sql import resumable

revision = "0003_trial_change_tracking"
down_revision = "0002_analytics_views"
branch_labels = None
depends_on = None

COUNTERS = ("trial_changes", "trial_deletions")

# Frozen copies (a revision is history): the triggers of each database.
TRIGGERS = {
    "sqlite": {
        "create": [
            "UPDATE experiments SET incarnation = random()",
            # Column defaults cannot be volatile on SQLite's ALTER TABLE ADD COLUMN.
            """CREATE TRIGGER orion_sql_new_incarnation AFTER INSERT ON experiments BEGIN
                UPDATE experiments SET incarnation = random() WHERE id = NEW.id;
            END""",
            # coalesce: a trial of a missing experiment must fail on its foreign key.
            """CREATE TRIGGER orion_sql_stamp_inserted_trial AFTER INSERT ON trials BEGIN
                UPDATE experiments SET trial_changes = trial_changes + 1 WHERE id = NEW.experiment_id;
                UPDATE trials
                SET change_stamp = coalesce((SELECT trial_changes FROM experiments WHERE id = NEW.experiment_id), 0)
                WHERE id = NEW.id;
            END""",
            # WHEN: the trigger's own stamping does not fire it again (recursive_triggers on).
            """CREATE TRIGGER orion_sql_stamp_updated_trial AFTER UPDATE ON trials
            WHEN NEW.change_stamp IS OLD.change_stamp BEGIN
                UPDATE experiments SET trial_changes = trial_changes + 1 WHERE id = NEW.experiment_id;
                UPDATE trials
                SET change_stamp = coalesce((SELECT trial_changes FROM experiments WHERE id = NEW.experiment_id), 0)
                WHERE id = NEW.id;
                UPDATE experiments SET trial_deletions = trial_deletions + 1
                WHERE id = OLD.experiment_id AND OLD.experiment_id <> NEW.experiment_id;
            END""",
            """CREATE TRIGGER orion_sql_count_deleted_trial AFTER DELETE ON trials BEGIN
                UPDATE experiments SET trial_deletions = trial_deletions + 1 WHERE id = OLD.experiment_id;
            END""",
        ],
        "drop": [
            "DROP TRIGGER orion_sql_count_deleted_trial",
            "DROP TRIGGER orion_sql_stamp_updated_trial",
            "DROP TRIGGER orion_sql_stamp_inserted_trial",
            "DROP TRIGGER orion_sql_new_incarnation",
        ],
    },
    "postgresql": {
        "create": [
            # A volatile default: every existing row gets its own value too.
            "ALTER TABLE experiments ALTER COLUMN incarnation SET DEFAULT (random() * 4503599627370496)::bigint",
            "UPDATE experiments SET incarnation = DEFAULT",
            """CREATE FUNCTION orion_sql_stamp_trial() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                NEW.change_stamp := pg_current_xact_id()::text::bigint;
                IF TG_OP = 'UPDATE' AND NEW.experiment_id <> OLD.experiment_id THEN
                    UPDATE experiments SET trial_deletions = trial_deletions + 1 WHERE id = OLD.experiment_id;
                END IF;
                RETURN NEW;
            END $$""",
            """CREATE TRIGGER orion_sql_stamp_trial BEFORE INSERT OR UPDATE ON trials
            FOR EACH ROW EXECUTE FUNCTION orion_sql_stamp_trial()""",
            """CREATE FUNCTION orion_sql_count_deleted_trials() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE experiments SET trial_deletions = trial_deletions + 1
                WHERE id IN (SELECT DISTINCT experiment_id FROM deleted_trials);
                RETURN NULL;
            END $$""",
            """CREATE TRIGGER orion_sql_count_deleted_trials AFTER DELETE ON trials
            REFERENCING OLD TABLE AS deleted_trials
            FOR EACH STATEMENT EXECUTE FUNCTION orion_sql_count_deleted_trials()""",
        ],
        "drop": [
            "DROP TRIGGER orion_sql_count_deleted_trials ON trials",
            "DROP FUNCTION orion_sql_count_deleted_trials()",
            "DROP TRIGGER orion_sql_stamp_trial ON trials",
            "DROP FUNCTION orion_sql_stamp_trial()",
        ],
    },
}


# MariaDB (and MySQL): no triggers, the columns only. A per-experiment counter
# deadlocked concurrent writers there, and no stamp in commit order is available:
# the trial cache is off on MariaDB (MariaDBDialect.tracks_trial_changes).
TRIGGERS["mariadb"] = TRIGGERS["mysql"] = {"create": [], "drop": []}


def _triggers() -> dict:
    name = op.get_bind().dialect.name
    if name not in TRIGGERS:
        raise NotImplementedError(f"0003_trial_change_tracking has no triggers for the {name!r} database")
    return TRIGGERS[name]


def upgrade() -> None:
    resumable.add_column("experiments", sa.Column("incarnation", sa.BigInteger(), nullable=False, server_default="0"))
    for counter in COUNTERS:
        resumable.add_column("experiments", sa.Column(counter, sa.BigInteger(), nullable=False, server_default="0"))
    resumable.add_column("trials", sa.Column("change_stamp", sa.BigInteger(), nullable=False, server_default="0"))
    resumable.create_index(op.f("ix_trials_experiment_id_change_stamp"), "trials", ["experiment_id", "change_stamp"])
    for statement in _triggers()["create"]:
        op.execute(statement)


def downgrade() -> None:
    for statement in _triggers()["drop"]:
        op.execute(statement)
    resumable.drop_index(op.f("ix_trials_experiment_id_change_stamp"), table_name="trials")
    resumable.drop_column("trials", "change_stamp")
    for counter in reversed(COUNTERS):
        resumable.drop_column("experiments", counter)
    resumable.drop_column("experiments", "incarnation")
