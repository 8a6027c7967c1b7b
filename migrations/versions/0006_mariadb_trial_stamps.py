"""Trial change tracking on MariaDB: stamps from a sequence, ordered by a lock.

Revision 0003 stamps trial rows on PostgreSQL and SQLite; on MariaDB it added the
columns only. This revision stamps them there too (nothing changes elsewhere):

- ``orion_sql_trial_stamps``, a sequence: one server-wide counter whose NEXTVAL
  is not transactional (writers never wait on each other for it) and only grows,
  a server restart included (it skips the values it had cached).
- BEFORE INSERT and BEFORE UPDATE triggers on ``trials`` first take a SHARED lock
  on the trial's experiment row (held to the end of the writing transaction),
  then draw the row's ``change_stamp``. Shared locks do not conflict with each
  other: writers of one experiment never wait on each other for it. A reader's
  barrier (``MariaDBDialect.trial_change_barrier``) takes that row FOR UPDATE and
  draws a value v while it holds it: every transaction that drew a stamp below v
  held the shared lock before v was drawn, so had ended before the barrier got
  the lock. Stamps below v are thus committed (or rolled back) for good, and a
  snapshot taken afterwards has seen all of them: v is its mark.
- Deleted trials (and a trial moved to another experiment) are counted in
  ``orion_sql_trial_deletions``, one row per experiment, not in
  ``experiments.trial_deletions``: a trigger that may update ``experiments``
  makes MariaDB open that table for writing in every statement that fires it, and
  the shared lock above then becomes an exclusive one (writers of one experiment
  queued on each other, as the per-experiment counter first tried here did), and a
  statement that reads ``experiments`` itself (``DELETE FROM trials WHERE
  experiment_id = (SELECT id FROM experiments ...)``) fails with error 1442.
- A BEFORE INSERT trigger on ``experiments`` makes ``incarnation`` random per
  row, so an experiment deleted and created again with the same id is told apart.

Existing rows keep their stamp 0: a process's first read of an experiment reads it
whole. MySQL has no sequences: this revision refuses to run there.

Revision ID: 0006_mariadb_trial_stamps
Revises: 0005_algo_lock_queue
Create Date: 2026-12-02
"""
from alembic import op

revision = "0006_mariadb_trial_stamps"
down_revision = "0005_algo_lock_queue"
branch_labels = None
depends_on = None

# Frozen copies (a revision is history). Each statement can run again after a
# failure halfway (MariaDB commits each DDL statement by itself).
_LOCK_EXPERIMENT_THEN_STAMP = """
    DECLARE held INT;
    SELECT COUNT(*) INTO held FROM experiments WHERE id = NEW.experiment_id LOCK IN SHARE MODE;
    SET NEW.change_stamp = NEXTVAL(orion_sql_trial_stamps);"""
_COUNT_DELETION = """INSERT INTO orion_sql_trial_deletions (experiment_id, deletions) VALUES (OLD.experiment_id, 1)
    ON DUPLICATE KEY UPDATE deletions = deletions + 1"""
CREATE = [
    "CREATE SEQUENCE IF NOT EXISTS orion_sql_trial_stamps NOCYCLE",
    """CREATE TABLE IF NOT EXISTS orion_sql_trial_deletions (
        experiment_id INTEGER NOT NULL,
        deletions BIGINT NOT NULL,
        CONSTRAINT pk_orion_sql_trial_deletions PRIMARY KEY (experiment_id),
        CONSTRAINT fk_orion_sql_trial_deletions_experiment_id_experiments FOREIGN KEY (experiment_id)
            REFERENCES experiments (id) ON DELETE CASCADE
    ) ENGINE=InnoDB""",
    f"""CREATE TRIGGER IF NOT EXISTS orion_sql_stamp_inserted_trial BEFORE INSERT ON trials
    FOR EACH ROW BEGIN{_LOCK_EXPERIMENT_THEN_STAMP}
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS orion_sql_stamp_updated_trial BEFORE UPDATE ON trials
    FOR EACH ROW BEGIN{_LOCK_EXPERIMENT_THEN_STAMP}
    IF NEW.experiment_id <> OLD.experiment_id THEN
        {_COUNT_DELETION};
    END IF;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS orion_sql_count_deleted_trial AFTER DELETE ON trials
    FOR EACH ROW {_COUNT_DELETION}""",
    """CREATE TRIGGER IF NOT EXISTS orion_sql_new_incarnation BEFORE INSERT ON experiments
    FOR EACH ROW SET NEW.incarnation = FLOOR(RAND() * 4503599627370496)""",
    # After the trigger: no row is left with the column's default.
    "UPDATE experiments SET incarnation = FLOOR(RAND() * 4503599627370496)",
]
DROP = [
    "DROP TRIGGER IF EXISTS orion_sql_new_incarnation",
    "DROP TRIGGER IF EXISTS orion_sql_count_deleted_trial",
    "DROP TRIGGER IF EXISTS orion_sql_stamp_updated_trial",
    "DROP TRIGGER IF EXISTS orion_sql_stamp_inserted_trial",
    "DROP TABLE IF EXISTS orion_sql_trial_deletions",
    "DROP SEQUENCE IF EXISTS orion_sql_trial_stamps",
]


def _statements(which: list[str]) -> list[str]:
    dialect = op.get_bind().dialect
    if dialect.name not in ("mariadb", "mysql"):
        return []  # revision 0003 tracks trial changes there
    if not getattr(dialect, "is_mariadb", False):
        raise NotImplementedError("orion_sql needs MariaDB 10.6 or newer: MySQL has no sequences")
    return which


def upgrade() -> None:
    for statement in _statements(CREATE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DROP):
        op.execute(statement)
