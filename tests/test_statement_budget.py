"""Statement budgets: the storage's hot methods issue a fixed number of statements.

Counted with SQLAlchemy's ``before_cursor_execute`` event on the storage's engine
(an executemany counts once: one statement sent with many rows) on experiments of
1 trial with 1 param and 1 result, 10 trials with 50 of each, and 1000 trials with
10 of each. Whatever the size, each method issues the same count: no N+1 query,
nothing that grows with the data. That count is exactly the method's budget on that
database, so a regression on either shows (PostgreSQL's one-statement paths included). SQLite's ``BEGIN`` (the
dialect sends it itself, ``BEGIN IMMEDIATE`` for writes) is not counted, just as
the PostgreSQL driver's implicit one is not.
"""
from __future__ import annotations

import datetime
import uuid

import pytest
from orion.algo.space import Space
from orion.core.worker.experiment import Experiment
from orion.core.worker.trial import Trial
from sqlalchemy import event, insert, select

from orion_sql import models

T0 = datetime.datetime(2024, 1, 31, 12, 0, 0, 123456)
# (trials already in the experiment, params per trial, results per trial)
SIZES = [(1, 1, 1), (10, 50, 50), (1000, 10, 10)]
# Statements per call and database, BEGIN excluded: each method is one transaction.
# Where PostgreSQL writes inside WITH, reserving and completing are one statement.
# MariaDB has no UPDATE ... RETURNING: reserving is the locked row, its UPDATE, its
# values; completing is the UPDATE (the id comes back as LAST_INSERT_ID, with whether
# the trial has results), results deleted (only if it has: the trials here do), results
# inserted; a status change is the UPDATE, then the new start time. Beside them MariaDB's transactions
# send only their COMMIT: see test_a_mariadb_reserve_complete_pair_is_its_statements_and_two_commits.
BUDGETS = {
    "register_trial": {"sqlite": 3, "postgresql": 3, "mariadb": 3},  # trial, its params, its results
    # Read through the trial cache after a change: whether anything changed; (MariaDB: the
    # barrier that waits for the experiment's writers under way;) then, in one snapshot,
    # that again, the changed trials, and their params and results.
    "fetch_trials": {"sqlite": 4, "postgresql": 4, "mariadb": 5},
    # UPDATE ... RETURNING over locked sub-selects, then its values (SQLite); both in one (PostgreSQL)
    "reserve_trial": {"sqlite": 2, "postgresql": 1, "mariadb": 3},
    # the row, then results replaced: delete, insert (SQLite); all in one (PostgreSQL)
    "push_trial_results": {"sqlite": 3, "postgresql": 1, "mariadb": 3},
    "set_trial_status": {"sqlite": 1, "postgresql": 1, "mariadb": 2},
    "update_heartbeat": {"sqlite": 1, "postgresql": 1, "mariadb": 1},
    "fetch_lost_trials": {"sqlite": 1, "postgresql": 1, "mariadb": 1},  # none is lost here: no values to read
    "fetch_pending_trials": {"sqlite": 4, "postgresql": 4, "mariadb": 5},  # as fetch_trials
    "count_completed_trials": {"sqlite": 1, "postgresql": 1, "mariadb": 1},
}


def make_trial(experiment_id, n_params: int, n_results: int) -> Trial:
    """A new trial with `n_params` params (one makes it unique) and `n_results` results."""
    return Trial(
        experiment=experiment_id,
        status="new",
        submit_time=T0,
        params=[{"name": "/unique", "type": "categorical", "value": uuid.uuid4().hex}]
        + [{"name": f"/p{index}", "type": "real", "value": index + 0.5} for index in range(n_params - 1)],
        results=results(n_results),
    )


def results(count: int) -> list[dict]:
    """An objective, then statistics."""
    kinds = ["objective"] + ["statistic"] * (count - 1)
    return [{"name": f"/r{index}", "type": kind, "value": index + 0.25} for index, kind in enumerate(kinds)]


def bulk_insert(storage, experiment_id, n_trials: int, n_params: int, n_results: int) -> None:
    """Fill an experiment quickly: one executemany per table, not the storage's API."""
    made = [make_trial(experiment_id, n_params, n_results) for _ in range(n_trials)]
    with storage.database.transaction(write=True) as conn:
        conn.execute(
            insert(models.trials),
            [{"experiment_id": experiment_id, "hash": t.id, "status": "new", "submit_time": T0} for t in made],
        )
        trial = models.TrialRow
        ids = dict(conn.execute(select(trial.hash, trial.id).where(trial.experiment_id == experiment_id)).all())
        for table, attribute in ((models.params, "params"), (models.results, "results")):
            rows = [
                {"trial_id": ids[t.id], "position": position, **value}
                for t in made
                for position, value in enumerate(t.to_dict()[attribute])
            ]
            conn.execute(insert(table), rows)


class StatementCounter:
    """Counts the statements sent on an engine, BEGIN aside."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[str] = []

    def _count(self, conn, cursor, statement, parameters, context, executemany):
        if statement.split(None, 1)[0].upper() != "BEGIN":
            self.statements.append(statement)

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._count)


def counts_for(storage, name: str, n_trials: int, n_params: int, n_results: int) -> dict[str, int]:
    """Statements each method issues on an experiment of `n_trials` trials."""
    config = {"name": name, "version": 1, "space": {}, "algorithm": {"random": {"seed": 1}}}
    storage.create_experiment(config)
    experiment = Experiment(name, Space(), version=1, _id=config["_id"], storage=storage)
    bulk_insert(storage, config["_id"], n_trials, n_params, n_results)
    storage.fetch_trials(experiment)  # a warm engine: the pool holds a connection

    counted = {}

    def count(method: str, *args, **kwargs):
        with StatementCounter(storage.database.engine) as counter:
            result = getattr(storage, method)(*args, **kwargs)
        counted[method] = len(counter.statements)
        return result

    count("register_trial", make_trial(config["_id"], n_params, n_results))
    assert len(count("fetch_trials", experiment)) == n_trials + 1
    reserved = count("reserve_trial", experiment)
    assert len(reserved.params) == n_params and len(reserved.results) == n_results
    count("update_heartbeat", reserved)
    count("fetch_lost_trials", experiment)
    assert len(count("fetch_pending_trials", experiment)) == n_trials
    reserved.status = "completed"
    reserved.results = [Trial.Result(**result) for result in results(n_results)]
    count("push_trial_results", reserved)
    assert count("count_completed_trials", experiment) == 1
    pending = storage.fetch_pending_trials(experiment)[0]
    count("set_trial_status", pending, "interrupted")
    return counted


@pytest.mark.slow
def test_statement_counts_do_not_grow_with_trials_params_or_results(storage):
    by_size = {size: counts_for(storage, f"budget-{index}", *size) for index, size in enumerate(SIZES)}
    first = by_size[SIZES[0]]
    assert set(first) == set(BUDGETS)
    for size, counted in by_size.items():
        assert counted == first, f"statement counts changed with size {size}: {counted} != {first}"
    budgets = {method: budget[storage.database.dialect.name] for method, budget in BUDGETS.items()}
    assert first == budgets, f"statements per call (counted != budget): {first} != {budgets}"


@pytest.mark.parametrize("size", SIZES, ids=lambda size: "x".join(map(str, size)))
def test_reading_an_unchanged_experiment_again_is_one_small_statement(storage, size):
    """The trial cache asks the database one question (the experiment's row, and an
    index probe of its trials), whatever the experiment's size."""
    config = {"name": "unchanged", "version": 1, "space": {}, "algorithm": {"random": {"seed": 1}}}
    storage.create_experiment(config)
    experiment = Experiment("unchanged", Space(), version=1, _id=config["_id"], storage=storage)
    bulk_insert(storage, config["_id"], *size)
    first = storage.fetch_trials(experiment)
    with StatementCounter(storage.database.engine) as counter:
        for read in (
            lambda: storage.fetch_trials(experiment),
            lambda: storage.fetch_trials(uid=config["_id"]),
            lambda: storage.fetch_pending_trials(experiment),
            lambda: storage.fetch_trials_by_status(experiment, "new"),
        ):
            again = read()
            assert [trial.to_dict() for trial in again] == [trial.to_dict() for trial in first]
    assert len(counter.statements) == 4, counter.statements
    for statement in counter.statements:
        assert "params" not in statement and "results" not in statement


@pytest.fixture
def mariadb_commands(monkeypatch):
    """The commands PyMySQL sends (COM_QUERY texts; COMMIT and ROLLBACK are queries too):
    what the MariaDB server answers, one round trip each."""
    import pymysql.connections

    sent: list[str] = []
    send = pymysql.connections.Connection._execute_command

    def counted(self, command, sql):
        sent.append(sql.decode() if isinstance(sql, bytes) else sql)
        return send(self, command, sql)

    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", counted)
    return sent


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_a_mariadb_reserve_complete_pair_is_its_statements_and_two_commits(storage, mariadb_commands):
    """No ROLLBACK when a connection returns to the pool after a commit (PyMySQL sends one
    even with no transaction open), no DELETE of results a trial does not have: a freshly
    reserved trial costs the raw SKIP LOCKED loop's seven round trips."""
    config = {"name": "pair", "version": 1, "space": {}, "algorithm": {"random": {"seed": 1}}}
    storage.create_experiment(config)
    experiment = Experiment("pair", Space(), version=1, _id=config["_id"], storage=storage)
    fresh = Trial(experiment=config["_id"], status="new", params=[{"name": "/x", "type": "real", "value": 1}])
    storage.register_trial(fresh)  # no results yet
    mariadb_commands.clear()
    reserved = storage.reserve_trial(experiment)
    reserved.status = "completed"
    reserved.results = [Trial.Result(**result) for result in results(1)]
    storage.push_trial_results(reserved)
    kinds = [command.split(None, 1)[0].upper() for command in mariadb_commands]
    assert kinds == ["(SELECT", "UPDATE", "SELECT", "COMMIT", "UPDATE", "INSERT", "COMMIT"], mariadb_commands
    assert storage.get_trial(reserved).results == reserved.results


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_a_mariadb_connection_returned_inside_a_transaction_is_rolled_back(storage, mariadb_commands):
    """What skips the ROLLBACK after a commit still ends a transaction left open: a read
    (its result carries no status flags in PyMySQL) or a write, on a raw pooled connection."""
    for statement in ("SELECT COUNT(*) FROM trials", "UPDATE trials SET status = status"):
        raw = storage.database.engine.raw_connection()
        raw.cursor().execute(statement)
        mariadb_commands.clear()
        raw.close()
        assert mariadb_commands == ["ROLLBACK"]
        with storage.database.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@in_transaction").scalar() == 0
