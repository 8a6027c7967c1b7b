"""The trial cache (orion_sql.trial_cache): never stale, never shared, bounded.

1. A differential test with real processes: three processes apply seeded random
   writes (every write path of the storage, plus SQL typed by hand) to the same
   experiments while reading them through their caches; after each step, once all
   are quiet, each process's cached reads equal uncached reads.
2. Isolation: mutating a returned Trial (status, params, results, attributes)
   never changes what a later read returns.
3. What the triggers must notice: deletions, an experiment deleted and created
   again with the same id, rows changed by hand.
4. The switch and the bound.
"""
from __future__ import annotations

import copy
import datetime
import multiprocessing
import queue
import random
import traceback

import pytest
from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial
from orion.storage.base import FailedUpdate
from sqlalchemy import text

from orion_sql import SQL
from orion_sql.location import ConfigurationError
from orion_sql.trial_cache import TRIAL_SLOTS, isolated_copy
from support.documents import T0, new_experiment

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["orion.client", "orion_sql"])
PROCESSES = 3
STEPS = 25
EXPERIMENT_IDS = (101, 102)  # explicit ids, so that a deleted experiment comes back with its id


def as_dicts(trials) -> list[dict]:
    return [trial.to_dict() for trial in trials]


def make_trial(experiment_id: int, rng: random.Random, status: str = "new") -> Trial:
    return Trial(
        experiment=experiment_id,
        status=status,
        submit_time=T0 + datetime.timedelta(seconds=rng.randint(0, 50)),
        params=[
            {"name": "x", "type": "real", "value": rng.random()},
            {"name": "layers", "type": "categorical", "value": [rng.randint(1, 3), "relu"]},
        ],
        results=[{"name": "loss", "type": "objective", "value": rng.random()}] if status == "completed" else [],
    )


def create_experiment(storage, experiment_id: int) -> None:
    new_experiment(storage, name=f"exp-{experiment_id}", _id=experiment_id)


# --- 1. the differential test --------------------------------------------------------


def random_write(storage: SQL, reader: SQL, rng: random.Random, worker: int) -> None:
    """One random write by one of the storage's write paths (or by hand); a write
    that loses a race with another process (FailedUpdate, ...) is part of the game."""
    try:
        _random_write(storage, reader, rng, worker)
    except (FailedUpdate, DuplicateKeyError, ValueError):
        pass


def _random_write(storage: SQL, reader: SQL, rng: random.Random, worker: int) -> None:
    experiment_id = rng.choice(EXPERIMENT_IDS)
    experiment = type("Experiment", (), {"id": experiment_id, "_id": experiment_id})()
    if not storage.fetch_experiments({"_id": experiment_id}):
        create_experiment(storage, experiment_id)
        return
    trials = reader.fetch_trials(uid=experiment_id)
    operation = rng.choice(
        ["register", "register", "reserve", "complete", "status", "update_trial", "update_trials",
         "heartbeat", "delete_trials", "by_hand", "delete_experiment"]
    )
    if operation == "register" or not trials:
        storage.register_trial(make_trial(experiment_id, rng, rng.choice(["new", "completed", "interrupted"])))
    elif operation == "reserve":
        storage.reserve_trial(experiment)
    elif operation == "complete":
        reserved = [trial for trial in trials if trial.status == "reserved"]
        if reserved:
            trial = reserved[0]
            trial.status = "completed"
            trial.end_time = T0
            trial.results = [Trial.Result(name="loss", type="objective", value=rng.random())]
            storage.push_trial_results(trial)
    elif operation == "status":
        storage.set_trial_status(rng.choice(trials), rng.choice(["interrupted", "suspended", "broken"]))
    elif operation == "update_trial":
        trial = rng.choice(trials)
        storage.update_trial(trial, results=[{"name": "loss", "type": "objective", "value": worker + rng.random()}])
    elif operation == "update_trials":  # what `orion db set` does
        storage.update_trials(uid=experiment_id, where={"status": "broken"}, status="interrupted")
    elif operation == "heartbeat":
        for trial in trials:
            if trial.status == "reserved":
                storage.update_heartbeat(trial)
    elif operation == "delete_trials":
        storage.delete_trials(uid=experiment_id, where={"status": rng.choice(["completed", "broken", "new"])})
    elif operation == "by_hand":
        with storage.database.transaction(write=True) as conn:
            conn.execute(text("UPDATE trials SET worker = :worker WHERE experiment_id = :experiment"),
                         {"worker": f"hand-{rng.random()}", "experiment": experiment_id})
    elif operation == "delete_experiment":
        storage.delete_experiment(uid=experiment_id)


def differential_worker(url: str, worker: int, seed: int, barrier, problems) -> int:
    """Write at random, read through the cache meanwhile; at each quiet point, compare."""
    rng = random.Random(seed * 100 + worker)
    cached, uncached = SQL(uri=url), SQL(uri=url, cache_trials=0)
    for step in range(STEPS):
        random_write(cached, uncached, rng, worker)
        cached.fetch_trials(uid=rng.choice(EXPERIMENT_IDS))  # while others write
        barrier.wait(timeout=120)
        for experiment_id in EXPERIMENT_IDS:
            experiment = type("Experiment", (), {"id": experiment_id})()
            for read in ("fetch_trials", "fetch_pending_trials", "fetch_noncompleted_trials"):
                arguments = {"uid": experiment_id} if read == "fetch_trials" else {"experiment": experiment}
                got, expected = getattr(cached, read)(**arguments), getattr(uncached, read)(**arguments)
                if as_dicts(got) != as_dicts(expected):
                    problems.put(f"step {step}, worker {worker}, {read}({experiment_id}): "
                                 f"cached {as_dicts(got)} != uncached {as_dicts(expected)}")
            got = cached.fetch_trials_by_status(type("Experiment", (), {"id": experiment_id})(), "completed")
            if as_dicts(got) != as_dicts(uncached.fetch_trials_by_status(experiment, "completed")):
                problems.put(f"step {step}, worker {worker}: completed trials of {experiment_id} differ")
        barrier.wait(timeout=120)
    return STEPS


def _run(results, index, url, seed, barrier, problems):
    try:
        results.put((index, differential_worker(url, index, seed, barrier, problems)))
    except BaseException:
        barrier.abort()
        results.put((index, traceback.format_exc()))


@pytest.mark.parametrize("seed", [1, 2])
def test_cached_reads_equal_uncached_reads_while_processes_write(database_url, seed):
    storage = SQL(uri=database_url)
    for experiment_id in EXPERIMENT_IDS:
        create_experiment(storage, experiment_id)
    storage.close()
    results, problems = CONTEXT.Queue(), CONTEXT.Queue()
    barrier = CONTEXT.Barrier(PROCESSES)
    processes = [CONTEXT.Process(target=_run, args=(results, index, database_url, seed, barrier, problems))
                 for index in range(PROCESSES)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    failures = [outcome for _, outcome in outcomes if outcome != STEPS]
    assert not failures, "\n".join(failures)
    found = []
    while True:
        try:
            found.append(problems.get(timeout=1))
        except queue.Empty:
            break
    assert not found, "\n".join(found[:5])


# --- 2. isolation --------------------------------------------------------------------


def test_mutating_returned_trials_never_changes_later_reads(storage):
    config = new_experiment(storage)
    rng = random.Random(3)
    for status in ("new", "completed", "completed"):
        storage.register_trial(make_trial(config["_id"], rng, status))
    first = storage.fetch_trials(uid=config["_id"])
    expected = copy.deepcopy(as_dicts(first))  # to_dict shares list values
    for trial in first:
        trial.status = "broken"
        trial.worker = "someone"
        trial.submit_time = None
        trial._params[0].value = -1.0
        trial._params[1].value.append("mutated")  # a list value, shared if copied shallowly
        trial.results.append(Trial.Result(name="extra", type="statistic", value=1))
        trial._params.append(Trial.Param(name="y", type="real", value=2.0))
    assert as_dicts(storage.fetch_trials(uid=config["_id"])) == expected
    for trial in storage.fetch_trials_by_status(type("E", (), {"id": config["_id"]})(), "completed"):
        trial.results += [Trial.Result(name="more", type="statistic", value=2)]  # in place, as Oríon's observe does
    assert as_dicts(storage.fetch_trials(uid=config["_id"])) == expected
    second, third = storage.fetch_trials(uid=config["_id"]), storage.fetch_trials(uid=config["_id"])
    assert all(a is not b and a._params is not b._params for a, b in zip(second, third))


def test_an_isolated_copy_is_equal_and_fills_every_slot_of_orions_trial():
    assert tuple(Trial.__slots__) == TRIAL_SLOTS, "Oríon's Trial changed: update trial_cache"
    trial = make_trial(1, random.Random(1), "completed")
    trial.id_override = 7
    trial.parent = "abc"
    copied = isolated_copy(trial)
    assert copied.to_dict() == trial.to_dict()
    assert copied.id == trial.id


# --- 3. what must be noticed -----------------------------------------------------------


def test_an_experiment_deleted_and_created_again_with_its_id_is_a_new_one(storage):
    rng = random.Random(4)
    create_experiment(storage, 101)
    storage.register_trial(make_trial(101, rng))
    assert len(storage.fetch_trials(uid=101)) == 1
    other = SQL(uri=str(storage.database.url.render_as_string(hide_password=False)))
    other.delete_experiment(uid=101)
    assert storage.fetch_trials(uid=101) == []
    create_experiment(other, 101)
    assert storage.fetch_trials(uid=101) == []
    other.register_trial(make_trial(101, rng))
    assert as_dicts(storage.fetch_trials(uid=101)) == as_dicts(other.fetch_trials(uid=101))
    # deleted and created again between two reads: nothing of the old one survives
    other.delete_experiment(uid=101)
    create_experiment(other, 101)
    assert storage.fetch_trials(uid=101) == []
    other.close()


def test_trials_changed_or_deleted_by_hand_in_sql_are_seen(storage):
    config = new_experiment(storage)
    rng = random.Random(5)
    for _ in range(3):
        storage.register_trial(make_trial(config["_id"], rng))
    assert {trial.status for trial in storage.fetch_trials(uid=config["_id"])} == {"new"}
    with storage.database.transaction(write=True) as conn:
        conn.execute(text("UPDATE trials SET status = 'broken' WHERE id = (SELECT min(id) FROM trials)"))
    assert sorted(trial.status for trial in storage.fetch_trials(uid=config["_id"])) == ["broken", "new", "new"]
    with storage.database.transaction(write=True) as conn:
        conn.execute(text("DELETE FROM trials WHERE status = 'broken'"))
    assert [trial.status for trial in storage.fetch_trials(uid=config["_id"])] == ["new", "new"]


def test_values_replaced_alone_are_seen(storage):
    """update_trial with params or results only still marks the trial changed."""
    config = new_experiment(storage)
    trial = storage.register_trial(make_trial(config["_id"], random.Random(6)))
    storage.fetch_trials(uid=config["_id"])
    storage.update_trial(trial, params=[{"name": "x", "type": "real", "value": 0.25}])
    (read,) = storage.fetch_trials(uid=config["_id"])
    assert read.params == {"x": 0.25}


# --- 4. the switch and the bound ---------------------------------------------------------


def test_the_cache_can_be_turned_off_by_argument_or_environment(database_url, monkeypatch):
    assert SQL(uri=database_url)._cache is not None
    assert SQL(uri=database_url, cache_trials=0)._cache is None
    monkeypatch.setenv("ORION_SQL_CACHE_TRIALS", "0")
    assert SQL(uri=database_url)._cache is None
    monkeypatch.setenv("ORION_SQL_CACHE_TRIALS", "many")
    with pytest.raises(ConfigurationError, match="ORION_SQL_CACHE_TRIALS"):
        SQL(uri=database_url)
    with pytest.raises(ConfigurationError, match="cache_trials"):
        SQL(uri=database_url, cache_trials=-1)


def test_the_cache_keeps_at_most_its_bound_dropping_experiments_read_longest_ago(database_url):
    storage = SQL(uri=database_url, cache_trials=5)
    rng = random.Random(7)
    ids = []
    for index in range(3):
        config = new_experiment(storage, name=f"bounded-{index}")
        ids.append(config["_id"])
        for _ in range(3):
            storage.register_trial(make_trial(config["_id"], rng))
    for experiment_id in ids:
        assert len(storage.fetch_trials(uid=experiment_id)) == 3
        assert storage._cache.size <= 5 or len(storage._cache._experiments) == 1
    assert list(storage._cache._experiments) == [ids[-1]]
    assert len(storage.fetch_trials(uid=ids[0])) == 3  # read again from the database
    storage.close()
