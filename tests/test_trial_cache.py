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
5. Writes under way while another process reads: never marked seen before they
   commit; and writers of one experiment never wait on each other for their stamps.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import pickle
import queue
import random
import threading
import time
import traceback
import warnings

import pytest
from orion.client import create_experiment as orion_create_experiment
from orion.client import get_experiment
from orion.core.evc.adapters import DimensionAddition, DimensionDeletion, DimensionPriorChange, DimensionRenaming
from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial
from orion.storage.base import FailedUpdate
from sqlalchemy import text

from orion_sql import SQL
from orion_sql.database import Database
from orion_sql.location import ConfigurationError
from orion_sql.trial_cache import TRIAL_SLOTS, isolated_copy
from support.documents import T0, new_experiment
from support.forkserver import CONTEXT
from support.mariadb import OwnMariaDB

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
    assert all(a is not b and a._params is not b._params for a, b in zip(second, third, strict=True))


def test_every_field_set_on_a_returned_trial_is_its_own(storage):
    """Fields a returned trial reads from the cached one until set (see SharedTrial)."""
    config = new_experiment(storage)
    storage.register_trial(make_trial(config["_id"], random.Random(12), "completed"))
    expected = as_dicts(storage.fetch_trials(uid=config["_id"]))
    (trial,) = storage.fetch_trials(uid=config["_id"])
    values = {"experiment": 999, "worker": "w", "exp_working_dir": "/elsewhere", "heartbeat": T0,
              "submit_time": T0, "start_time": T0, "end_time": T0, "id_override": -1, "parent": "p",
              "status": "broken"}
    for name, value in values.items():
        setattr(trial, name, value)
    assert {name: getattr(trial, name) for name in values} == values
    assert isolated_copy(trial).to_dict() == trial.to_dict()
    assert as_dicts(storage.fetch_trials(uid=config["_id"])) == expected


def test_an_isolated_copy_is_equal_and_fills_every_slot_of_orions_trial():
    assert tuple(Trial.__slots__) == TRIAL_SLOTS, "Oríon's Trial changed: update trial_cache"
    trial = make_trial(1, random.Random(1), "completed")
    trial.id_override = 7
    trial.parent = "abc"
    copied = isolated_copy(trial)
    assert copied.to_dict() == trial.to_dict()
    assert copied.id == trial.id


def test_a_returned_trial_copies_pickles_and_deep_copies_as_a_plain_trial_of_its_own(storage):
    """Oríon's EVC adapters deep-copy trials, executors pickle them, algorithm states are
    pickled into the database: none of it names orion_sql or shares the cache's values."""
    config = new_experiment(storage)
    storage.register_trial(make_trial(config["_id"], random.Random(8), "completed"))
    (trial,) = storage.fetch_trials(uid=config["_id"])
    expected = trial.to_dict()
    for made in (copy.copy(trial), copy.deepcopy(trial), pickle.loads(pickle.dumps(trial))):
        assert type(made) is Trial and made.to_dict() == expected
        made._params[1].value.append("mutated")
        made.results.append(Trial.Result(name="extra", type="statistic", value=1))
    assert b"orion_sql" not in pickle.dumps(storage.fetch_trials(uid=config["_id"]))
    assert as_dicts(storage.fetch_trials(uid=config["_id"])) == [expected]


# --- 2b. hashes: computed once per cached trial, never stale --------------------------------

FLAGS = [
    {"ignore_fidelity": fidelity, "ignore_lie": lie, "ignore_parent": parent}
    for fidelity in (False, True) for lie in (False, True) for parent in (False, True)
]


def hashes(trial: Trial) -> list[str]:
    """Every hash Oríon computes of a trial (``legacy_id`` counts the experiment too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy = trial.legacy_id
    found = [trial.compute_trial_hash(trial, **flags) for flags in FLAGS]
    return found + [trial.id, trial.hash_name, trial.hash_params, legacy, trial.__hash__()]


def orions_hashes(trial: Trial) -> list[str]:
    """What Oríon's own code computes for a plain Trial of the same content."""
    return hashes(Trial(**trial.to_dict()))


def set_value(trial): trial._params[0].value = 0.123  # noqa: E704
def append_param(trial): trial._params.append(Trial.Param(name="y", type="real", value=2.0))  # noqa: E704
def delete_param(trial): del trial._params[0]  # noqa: E704
def replace_params(trial): trial._params = [Trial.Param(name="x", type="real", value=0.5)]  # noqa: E704
def mutate_list_value(trial): trial._params[1].value.append("relu")  # noqa: E704
def rename_param(trial): trial._params[0].name = "renamed"  # noqa: E704
def make_fidelity(trial): trial._params[0].type = "fidelity"  # noqa: E704
def set_parent(trial): trial.parent = "another parent"  # noqa: E704
def append_lie(trial): trial.results.append(Trial.Result(name="lie", type="lie", value=0.5))  # noqa: E704
def set_results(trial): trial.results = [Trial.Result(name="l", type="objective", value=1), Trial.Result(name="lie", type="lie", value=2)]  # noqa: E501, E704
def set_experiment(trial): trial.experiment = 999  # noqa: E704


@pytest.mark.parametrize("mutation", [
    set_value, append_param, delete_param, replace_params, mutate_list_value, rename_param, make_fidelity,
    set_parent, append_lie, set_results, set_experiment,
], ids=lambda mutation: mutation.__name__)
def test_hashes_of_returned_trials_are_orions_before_and_after_any_change(storage, mutation):
    config = new_experiment(storage)
    rng = random.Random(9)
    storage.register_trial(make_trial(config["_id"], rng, "completed"))
    storage.register_trial(make_trial(config["_id"], rng, "new"))
    originals = [orions_hashes(trial) for trial in storage.fetch_trials(uid=config["_id"])]
    assert [hashes(trial) for trial in storage.fetch_trials(uid=config["_id"])] == originals
    # The cached hashes are warm now: a changed trial must not answer with them.
    for trial in storage.fetch_trials(uid=config["_id"]):
        mutation(trial)
        assert hashes(trial) == orions_hashes(trial)
    # ... and nothing of the change reaches a later read, its hashes included.
    assert [hashes(trial) for trial in storage.fetch_trials(uid=config["_id"])] == originals


def test_hashes_follow_a_change_made_between_two_hashings_of_one_trial(storage):
    config = new_experiment(storage)
    storage.register_trial(make_trial(config["_id"], random.Random(10), "completed"))
    (trial,) = storage.fetch_trials(uid=config["_id"])
    before = trial.compute_trial_hash(trial, ignore_lie=True)
    trial._params[0].value = -1.0
    assert trial.compute_trial_hash(trial, ignore_lie=True) != before
    assert trial.compute_trial_hash(trial, ignore_lie=True) == Trial(**trial.to_dict()).compute_trial_hash(
        Trial(**trial.to_dict()), ignore_lie=True)


Y = {"name": "y", "type": "real", "value": 0.5}


@pytest.mark.parametrize(("adapter", "direction", "with_y"), [
    (DimensionAddition(Y), "forward", False),  # deep copy, then _params.append (adapters.py:318)
    (DimensionAddition(Y), "backward", True),  # deep copy, then del _params[i] (adapters.py:337)
    (DimensionDeletion(Y), "forward", True),
    (DimensionDeletion(Y), "backward", False),
    (DimensionRenaming("x", "z"), "forward", False),  # deep copy, then param.name = ...
    (DimensionPriorChange("x", "uniform(0, 1)", "uniform(0, 0.5)"), "forward", False),  # filters in place
], ids=lambda value: type(value).__name__ if not isinstance(value, (str, bool)) else str(value))
def test_orions_evc_adapters_adapt_returned_trials_as_plain_ones_and_change_no_later_read(
    storage, adapter, direction, with_y
):
    config = new_experiment(storage)
    rng = random.Random(11)
    for index in range(6):
        trial = make_trial(config["_id"], rng, "completed")
        if with_y:  # some at the default value, some not
            trial._params.append(Trial.Param(name="y", type="real", value=0.5 if index % 2 else 0.25))
        storage.register_trial(trial)
    expected = as_dicts(storage.fetch_trials(uid=config["_id"]))
    before = [hashes(trial) for trial in storage.fetch_trials(uid=config["_id"])]
    plain = getattr(adapter, direction)([Trial(**document) for document in copy.deepcopy(expected)])
    adapted = getattr(adapter, direction)(storage.fetch_trials(uid=config["_id"]))
    assert plain and as_dicts(adapted) == as_dicts(plain)
    assert [hashes(trial) for trial in adapted] == [hashes(trial) for trial in plain]
    assert as_dicts(storage.fetch_trials(uid=config["_id"])) == expected
    assert [hashes(trial) for trial in storage.fetch_trials(uid=config["_id"])] == before


def test_an_evc_tree_reads_the_same_through_the_cache_as_without(database_url):
    """Oríon's EVC code adapts each experiment's trials with the adapters above
    (a child that added a dimension: parent trials forward, child trials backward)."""
    cached, uncached = {"type": "sql", "uri": database_url}, {"type": "sql", "uri": database_url, "cache_trials": 0}
    objective = [{"name": "loss", "type": "objective", "value": 1.0}]
    parent = orion_create_experiment("evc", space={"x": "uniform(0, 1)"}, storage=cached)
    for x in (0.1, 0.2, 0.3):
        parent.insert({"x": x}, objective)
    child = orion_create_experiment("evc", space={"x": "uniform(0, 1)", "y": "uniform(0, 1, default_value=0.5)"},
                                    branching={"enable": True}, storage=cached)
    assert child.version == 2
    for x, y in ((0.1, 0.5), (0.4, 0.5), (0.5, 0.75)):
        child.insert({"x": x, "y": y}, objective)
    for version in (1, 2):
        reads = {}
        for name, storage in (("cached", cached), ("uncached", uncached)):
            client = get_experiment("evc", version=version, storage=storage)
            for _ in range(3):  # the cache warm, its hashes computed
                trials = client.fetch_trials(with_evc_tree=True)
                reads.setdefault(name, []).append((as_dicts(trials), [hashes(trial) for trial in trials]))
        assert reads["cached"] == reads["uncached"]
        assert len(reads["cached"][0][0]) == {1: 4, 2: 5}[version]  # duplicates of own trials dropped


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


def test_trials_moved_or_deleted_by_statements_that_read_experiments_are_seen(storage):
    """SQL a person would type, naming experiments by name: a trial moved to another
    experiment leaves the first one's reads, and a delete through a subquery on
    experiments works (MariaDB refuses it, error 1442, when a trigger of the statement
    writes to experiments: deletions are counted elsewhere there) and is seen."""
    first, second = new_experiment(storage, name="first"), new_experiment(storage, name="second")
    rng = random.Random(16)
    moved, kept = (storage.register_trial(make_trial(first["_id"], rng)) for _ in range(2))
    assert len(storage.fetch_trials(uid=first["_id"])) == 2 and storage.fetch_trials(uid=second["_id"]) == []
    with storage.database.transaction(write=True) as conn:
        conn.execute(text("UPDATE trials SET experiment_id = (SELECT id FROM experiments WHERE name = 'second')"
                          " WHERE id = :trial"), {"trial": moved.id_override})
    assert [trial.id_override for trial in storage.fetch_trials(uid=first["_id"])] == [kept.id_override]
    assert [trial.id_override for trial in storage.fetch_trials(uid=second["_id"])] == [moved.id_override]
    with storage.database.transaction(write=True) as conn:
        conn.execute(text("DELETE FROM trials"
                          " WHERE experiment_id = (SELECT id FROM experiments WHERE name = 'second')"))
    assert storage.fetch_trials(uid=second["_id"]) == []
    assert len(storage.fetch_trials(uid=first["_id"])) == 1


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


# --- 5. writes under way ---------------------------------------------------------------


def url_of(storage: SQL) -> str:
    return storage.database.url.render_as_string(hide_password=False)


def _write_and_hold(url: str, trial_id: int, written, release) -> None:
    """Child process: change a trial's worker in a transaction, say so, commit when told."""
    database = Database(url)
    with database.transaction(write=True) as conn:
        conn.execute(text("UPDATE trials SET worker = 'held' WHERE id = :trial"), {"trial": trial_id})
        written.set()
        release.wait(timeout=120)
    database.dispose()


def _child_holding_a_write(storage: SQL, trial_id: int):
    """A child process that has written `trial_id` and holds its transaction open until
    its event is set: (process, release event)."""
    written, release = CONTEXT.Event(), CONTEXT.Event()
    child = CONTEXT.Process(target=_write_and_hold, args=(url_of(storage), trial_id, written, release))
    child.start()
    assert written.wait(timeout=60), "the child never wrote"
    return child, release


def workers(storage: SQL, experiment_id: int) -> dict[int, str]:
    return {trial.id_override: trial.worker for trial in storage.fetch_trials(uid=experiment_id)}


@pytest.mark.parametrize("hold", [0.3, 2.5], ids=["committed-while-the-read-waits", "held-past-the-barrier"])
def test_a_write_under_way_during_a_read_that_found_a_later_one_is_seen_once_committed(storage, hold):
    """Trial A is written (stamped) by a transaction that commits only after another
    process wrote trial B and read the experiment: that read must not mark A's write
    seen. On MariaDB the read's barrier waits for A's writer (committed after 0.3 s),
    or gives up after a second and keeps the last mark (2.5 s); a mark drawn from the
    sequence without the barrier is above A's stamp, and no later read fetches A again.
    (SQLite runs one writer at a time: B's write waits for A's commit.)"""
    config = new_experiment(storage)
    rng = random.Random(13)
    held, later = (storage.register_trial(make_trial(config["_id"], rng)) for _ in range(2))
    assert len(storage.fetch_trials(uid=config["_id"])) == 2  # cached
    child, release = _child_holding_a_write(storage, held.id_override)
    committing = threading.Timer(hold, release.set)
    committing.start()
    with storage.database.transaction(write=True) as conn:
        conn.execute(text("UPDATE trials SET worker = 'later' WHERE id = :trial"), {"trial": later.id_override})
    during = workers(storage, config["_id"])
    committing.join()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert during[later.id_override] == "later"
    assert workers(storage, config["_id"]) == {held.id_override: "held", later.id_override: "later"}


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_writers_of_one_experiment_never_wait_on_each_other_for_their_stamps(storage):
    """While one transaction holds an uncommitted write of a trial, other processes
    register, reserve and complete the experiment's other trials at once (a
    per-experiment counter made them queue; SQLite runs one writer at a time anyway)."""
    config = new_experiment(storage)
    rng = random.Random(14)
    held = storage.register_trial(make_trial(config["_id"], rng))
    experiment = type("Experiment", (), {"id": config["_id"], "_id": config["_id"]})()
    child, release = _child_holding_a_write(storage, held.id_override)
    done = threading.Event()

    def write_others():
        storage.register_trial(make_trial(config["_id"], rng))
        reserved = storage.reserve_trial(experiment)  # the held trial is locked: the new one
        reserved.status = "completed"
        reserved.results = [Trial.Result(name="loss", type="objective", value=1.0)]
        storage.push_trial_results(reserved)
        done.set()

    writer = threading.Thread(target=write_others)
    writer.start()
    finished = done.wait(timeout=30)
    release.set()
    writer.join(timeout=60)
    child.join(timeout=60)
    assert finished, "writes of other trials waited for the uncommitted one"
    assert sorted(trial.status for trial in storage.fetch_trials(uid=config["_id"])) == ["completed", "new"]


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_the_mariadb_barrier_waits_for_writers_under_way_and_draws_its_mark_after_them(storage):
    """The mark is drawn once the experiment's row is locked, after every writer that
    held its shared lock ended: above a value drawn while the barrier waited."""
    config = new_experiment(storage)
    trial = storage.register_trial(make_trial(config["_id"], random.Random(15)))
    barrier = storage.database.dialect.trial_change_barrier()
    writer, other = Database(url_of(storage)), Database(url_of(storage))
    marks = []
    with writer.transaction(write=True) as conn:
        conn.execute(text("UPDATE trials SET worker = 'w' WHERE id = :trial"), {"trial": trial.id_override})
        stamp = conn.execute(text("SELECT change_stamp FROM trials WHERE id = :trial"),
                             {"trial": trial.id_override}).scalar_one()
        reader = threading.Thread(target=lambda: marks.append(storage.database.run(
            lambda read: read.execute(barrier, {"experiment": config["_id"]}).scalar(), write=False, autocommit=True
        )))
        reader.start()
        time.sleep(0.3)
        waited = not marks
        with other.transaction(autocommit=True) as drawing:
            meanwhile = drawing.execute(text("SELECT NEXTVAL(orion_sql_trial_stamps)")).scalar_one()
    reader.join(timeout=30)
    writer.dispose()
    other.dispose()
    assert waited, "the barrier did not wait for the write under way"
    assert marks and marks[0] > meanwhile > stamp


def test_a_mariadb_crash_that_hands_out_stamps_again_makes_the_next_read_start_over():
    """A crash loses the sequence's values drawn since the redo log was last written out
    (a commit writes it, and the server about every second): a reader's mark drawn then
    may be handed out again as a stamp. The server's run (its start time, in whole
    seconds) in every check makes the first read after a restart read whole. (Checked:
    without it, the trial written after the restart was never read again.) The crash
    must come before the log is written out: a try where it did not is made again."""
    with OwnMariaDB() as server:
        url = server.create_database("crash")
        storage = SQL(uri=url)
        for attempt in range(ATTEMPTS):
            time.sleep(1.1)  # this run of the server began over a second ago: the next one is told apart
            config = new_experiment(storage, name=f"crash-{attempt}")
            rng = random.Random(17)
            first, second = (storage.register_trial(make_trial(config["_id"], rng)) for _ in range(2))
            storage.fetch_trials(uid=config["_id"])
            storage.update_trial(first, worker="before")  # committed: the log is written out
            with pymysql_admin(server, "crash") as cursor:  # a refill of the sequence's cache, not written out yet
                cursor.execute("SELECT MAX(NEXTVAL(orion_sql_trial_stamps)) FROM seq_1_to_1000")
            assert workers(storage, config["_id"])[first.id_override] == "before"
            mark = storage._cache._experiments[config["_id"]].mark
            server.restart("immediate")
            storage.close()
            storage.update_trial(second, worker="after")
            with pymysql_admin(server, "crash") as cursor:
                cursor.execute("SELECT change_stamp FROM trials WHERE id = %s", (second.id_override,))
                handed_out_again = cursor.fetchone()[0] < mark
            if handed_out_again:
                assert workers(storage, config["_id"]) == {first.id_override: "before", second.id_override: "after"}
                break
        storage.close()
    assert handed_out_again, f"in {ATTEMPTS} tries the log was always written out before the crash: nothing proved"


ATTEMPTS = 5


@contextlib.contextmanager
def pymysql_admin(server: OwnMariaDB, database: str | None = None):
    import pymysql

    with pymysql.connect(host="127.0.0.1", port=server.port, user="root", database=database,
                         autocommit=True) as conn, conn.cursor() as cursor:
        yield cursor
