"""`orion db set|rm|release` on the sql storage: exactly the rows Oríon documents change, nothing else.

Two experiments: `tree` (versions 1 <- 2 <- 3, built by the Python API's
branching) and `other`. The commands run two at a time on disjoint data, and
after each pair every row of every table is compared with the rows before.
"""
from __future__ import annotations

import datetime

import pytest
from orion.client import build_experiment
from sqlalchemy import update

from orion_sql.models import AlgoLockRow, algo_locks

pytestmark = [pytest.mark.functional, pytest.mark.slow]

SPACES = {
    1: {"x": "uniform(0, 1)"},
    2: {"x": "uniform(0, 1)", "y": "uniform(0, 1, default_value=0.5)"},
    3: {"x": "uniform(0, 1)", "y": "uniform(0, 1, default_value=0.5)", "z": "uniform(0, 1, default_value=0.5)"},
}
STATUSES = {
    1: ["completed", "broken", "interrupted"],
    2: ["completed", "broken", "interrupted"],
    3: ["completed", "broken", "new"],
}


def add_trials(client, storage, statuses, space) -> dict[str, object]:
    """One trial per status; completed ones with an objective. Returns {status: trial}."""
    trials = {}
    for index, status in enumerate(statuses):
        params = {name: (index + 1) / 10 for name in space}
        if status == "completed":
            trials[status] = client.insert(params, results=[{"name": "objective", "type": "objective", "value": index}])
        else:
            trials[status] = client.insert(params)  # Oríon 0.2.7 leaves it `interrupted`
            if trials[status].status != status:
                storage.set_trial_status(trials[status], status)
    return trials


@pytest.fixture
def experiments(storage_config, sql_storage):
    """The `tree` versions and `other`: {name: (experiment id, {status: trial})}."""
    built = {}
    for version, space in SPACES.items():
        client = build_experiment("tree", space=space, branching={"enable": True}, storage=storage_config)
        assert client.version == version
        built[f"tree-v{version}"] = (client.id, add_trials(client, sql_storage, STATUSES[version], space))
    other = build_experiment("other", space=SPACES[1], storage=storage_config)
    built["other"] = (other.id, add_trials(other, sql_storage, ["completed", "broken"], SPACES[1]))
    return built


def trial_rows(experiments, *selection: tuple[str, str]) -> set[tuple]:
    """Primary keys of the trials rows of (experiment, status) pairs."""
    return {(experiments[name][1][status].id_override,) for name, status in selection}


def all_trial_rows(experiments, *names: str) -> set[tuple]:
    """Primary keys of the trials rows of these experiments."""
    return {(trial.id_override,) for name in names for trial in experiments[name][1].values()}


def rows_of_trials(snapshot, table: str, trial_keys: set[tuple]) -> set[tuple]:
    """Primary keys of the params or results rows of these trials."""
    trial_ids = {key[0] for key in trial_keys}
    return {key for key, row in snapshot[table].items() if row["trial_id"] in trial_ids}


def removed_trials(snapshot, trial_keys: set[tuple]) -> dict:
    """The diff of deleting these trials: the rows and their params and results."""
    diff = {"trials": {"removed": trial_keys}}
    for table in ("params", "results"):
        children = rows_of_trials(snapshot, table, trial_keys)
        if children:
            diff[table] = {"removed": children}
    return diff


def status_changes(experiments, old: str, new: str, *names: str) -> dict:
    """The diff of the `old` trial of each experiment becoming `new`."""
    return {(experiments[name][1][old].id_override,): {"status": (old, new)} for name in names}


def merged(*diffs: dict) -> dict:
    """One expected diff from several (of commands that ran together on disjoint rows)."""
    result: dict = {}
    for diff in diffs:
        for table, change in diff.items():
            for kind, keys in change.items():
                result.setdefault(table, {}).setdefault(kind, type(keys)()).update(keys)
    return result


def test_db_set_rm_release(orion_cli, experiments, sql_storage, rows, database_url):
    other_id = experiments["other"][0]
    other_broken = experiments["other"][1]["broken"]

    # rm --status broken from version 1: its children's broken trials go too, not other's.
    # set by id: only that trial of `other`.
    before = rows.snapshot()
    rm_broken, set_by_id = orion_cli.run_together(
        ["db", "rm", "tree", "--version", "1", "--status", "broken", "-f"],
        ["db", "set", "other", f"id={other_broken.id}", "status=interrupted", "-f"],
        via="file",
    )
    broken = trial_rows(experiments, ("tree-v1", "broken"), ("tree-v2", "broken"), ("tree-v3", "broken"))
    assert rows.diff(before, rows.snapshot()) == merged(
        removed_trials(before, broken),
        {"trials": {"changed": {(other_broken.id_override,): {"status": ("broken", "interrupted")}}}},
    )
    assert "3 trials deleted" in rm_broken.stdout
    assert "1 trials modified" in set_by_id.stdout

    # set by status from version 2: v2 and its child v3, not the parent v1.
    # release while a live worker holds the lock: SQLite's lease is freed by force (as
    # PickledDB's flag is); PostgreSQL's row lock stays with its live holder, and says so.
    with sql_storage.acquire_algorithm_lock(uid=other_id, timeout=5):
        before = rows.snapshot()
        set_by_status, held_release = orion_cli.run_together(
            ["db", "set", "tree", "--version", "2", "status=interrupted", "status=suspended", "-f"],
            ["db", "release", "other", "-f"],
            via="file",
        )
        after = rows.snapshot()
        expected = {"trials": {"changed": status_changes(experiments, "interrupted", "suspended", "tree-v2")}}
        held, freed = before["algo_locks"][(other_id,)], after["algo_locks"][(other_id,)]
        if database_url.startswith("sqlite"):
            assert held["locked"] and held["owner"]
            assert (freed["locked"], freed["owner"]) == (False, None)
            assert "Algorithm lock successfully released." in held_release.stdout
            expected["algo_locks"] = {"changed": {(other_id,): _changed(held, freed, "locked", "owner", "heartbeat")}}
        else:
            assert "Release of algorithm lock failed." in held_release.stdout
        assert rows.diff(before, after) == expected
        assert "1 trials modified" in set_by_status.stdout

    # set '*' on the latest version (v3) only; release a lock nobody holds (on SQLite,
    # a flag left by a worker that died).
    if database_url.startswith("sqlite"):
        _leave_stale_lock(rows, other_id)
    before = rows.snapshot()
    set_all, free_release = orion_cli.run_together(
        ["db", "set", "tree", "*", "status=new", "-f"],
        ["db", "release", "other", "-f"],
        via="env",
    )
    after = rows.snapshot()
    expected = {"trials": {"changed": status_changes(experiments, "completed", "new", "tree-v3")}}
    if database_url.startswith("sqlite"):
        stale, freed = before["algo_locks"][(other_id,)], after["algo_locks"][(other_id,)]
        assert (freed["locked"], freed["owner"]) == (False, None)
        expected["algo_locks"] = {"changed": {(other_id,): _changed(stale, freed, "locked", "owner", "heartbeat")}}
    assert rows.diff(before, after) == expected
    assert "Algorithm lock successfully released." in free_release.stdout
    assert "2 trials modified" in set_all.stdout  # v3's completed and new trials (new stays new)

    # rm --version 2: v2 and its child v3 with their trials and locks, not v1.
    # rm an experiment by name: its only version, trials and lock.
    before = rows.snapshot()
    rm_version, rm_other = orion_cli.run_together(
        ["db", "rm", "tree", "--version", "2", "-f"],
        ["db", "rm", "other", "-f"],
        via="env",
    )
    gone = {experiments[name][0] for name in ("tree-v2", "tree-v3", "other")}
    gone_trials = all_trial_rows(experiments, "tree-v2", "tree-v3", "other") - broken
    assert rows.diff(before, rows.snapshot()) == merged(
        removed_trials(before, gone_trials),
        {"experiments": {"removed": {(uid,) for uid in gone}}, "algo_locks": {"removed": {(uid,) for uid in gone}}},
    )
    assert "4 trials deleted\n2 experiments deleted\n" in rm_version.stdout
    assert "2 trials deleted\n1 experiments deleted\n" in rm_other.stdout
    assert [document["version"] for document in sql_storage.fetch_experiments({"name": "tree"})] == [1]


def _changed(old: dict, new: dict, *columns: str) -> dict:
    """Which of these columns differ between two versions of a row, as a diff gives them."""
    return {column: (old[column], new[column]) for column in columns if old[column] != new[column]}


def _leave_stale_lock(rows, experiment_id) -> None:
    """What a worker killed inside the lock leaves on SQLite: the flag, its owner, an old heartbeat."""
    long_ago = datetime.datetime(2000, 1, 1)
    with rows.database.transaction(write=True) as conn:
        conn.execute(
            update(algo_locks)
            .where(AlgoLockRow.experiment_id == experiment_id)
            .values(locked=True, owner="dead-host:1:00000000", heartbeat=long_ago)
        )
