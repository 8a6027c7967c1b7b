"""Contract: benchmarks and experiments (create, fetch, update, delete, selections, ids).

Expected values are those of Oríon's legacy storage (orion/storage/legacy.py) unless a
comment says it checks orion_sql's own documented behaviour. Each test needs a fresh
database on both dialects, so related checks share one test.
"""
from __future__ import annotations

import copy
import datetime

import pytest
from orion.core.io.database import DuplicateKeyError
from orion.storage.legacy import Legacy

from support.documents import T0, assert_identical, experiment_of, make_trial, new_experiment

# --- benchmarks ----------------------------------------------------------------------


def test_benchmarks(storage):
    config = {"name": "bench", "algorithms": ["random", {"tpe": {"seed": 1}}], "targets": [{"assess": {}, "task": {}}]}
    original = copy.deepcopy(config)
    assert storage.create_benchmark(config) == 1
    assert isinstance(config["_id"], int)
    assert storage.fetch_benchmark({"name": "bench"}) == [{**original, "_id": config["_id"]}]
    assert storage.fetch_benchmark({"name": "other"}) == []

    storage.create_benchmark({"name": "b2", "algorithms": ["tpe"]})
    assert [doc["name"] for doc in storage.fetch_benchmark({})] == ["bench", "b2"]
    assert storage.fetch_benchmark({"name": "b2"}, {"algorithms": 1, "_id": 0}) == [{"algorithms": ["tpe"]}]

    with pytest.raises(DuplicateKeyError):
        storage.create_benchmark({"name": "bench", "algorithms": []})
    assert len(storage.fetch_benchmark({})) == 2


# --- create / fetch ------------------------------------------------------------------


def test_create_experiment_and_read_it_back_exactly(storage):
    config = {
        "name": "exp-ü",
        "version": 3,
        "max_trials": float("inf"),
        "max_broken": 3,
        "working_dir": None,
        "space": {"/x": "uniform(0, 1)", "/y": "choices(['a', 'b'])"},
        "algorithm": {"tpe": {"seed": None, "n_initial_points": 5, "gamma": 0.25, "flags": [True, False]}},
        "metadata": {
            "user": "bob",
            "datetime": datetime.datetime(2023, 5, 6, 7, 8, 9, 101112),
            "orion_version": "0.2.7",
            "user_args": ["./train.py", "--lr~loguniform(1e-5, 1)"],
            "VCS": {},
            "nested": {
                "deeper": {
                    "tiny": 1e-300,
                    "pi": 3.141592653589793,
                    "one": 1.0,
                    "minus_inf": float("-inf"),
                    "big_int": 2**62,
                }
            },
        },
        "refers": {"parent_id": None, "root_id": None, "adapter": []},
        "knowledge_base": None,
    }
    original = copy.deepcopy(config)
    assert storage.create_experiment(config) == 1
    assert isinstance(config["_id"], int)
    assert config == {**original, "_id": config["_id"]}  # only `_id` was added
    (fetched,) = storage.fetch_experiments({"name": "exp-ü"})
    assert_identical(fetched, {**original, "_id": config["_id"]})

    second = new_experiment(storage, "exp-ü", version=4)
    assert second["_id"] != config["_id"]

    # Floats PostgreSQL's JSONB would give back as decimals (1e300 as 10**300, -0.0 as
    # 0.0) are stored tagged: they come back as the same floats, and filter as numbers.
    huge = new_experiment(storage, "huge", metadata={"huge": 1e300, "big": 1.5e16, "zero": -0.0})
    (fetched,) = storage.fetch_experiments({"_id": huge["_id"]})
    assert_identical(fetched["metadata"], {"huge": 1e300, "big": 1.5e16, "zero": -0.0})
    assert storage.fetch_experiments({"metadata.huge": 1e300}, {"_id": 1}) == [{"_id": huge["_id"]}]
    assert storage.fetch_experiments({"metadata.big": {"$gt": 1e16}}, {"_id": 1}) == [{"_id": huge["_id"]}]


def test_fetch_experiments_filters(storage):
    first = new_experiment(storage, "a")
    second = new_experiment(
        storage, "a", version=2, refers={"parent_id": first["_id"], "root_id": first["_id"], "adapter": []}
    )
    third = new_experiment(storage, "b", metadata={"user": "alice", "datetime": T0 + datetime.timedelta(days=1)})

    def names(query):
        return [(doc["name"], doc["version"]) for doc in storage.fetch_experiments(query)]

    assert names({}) == [("a", 1), ("a", 2), ("b", 1)]
    assert names({"name": "a"}) == [("a", 1), ("a", 2)]
    assert names({"name": "a", "version": 2}) == [("a", 2)]
    assert names({"_id": third["_id"]}) == [("b", 1)]
    assert names({"metadata.user": "alice"}) == [("b", 1)]
    assert names({"metadata": {"user": "tester"}}) == [("a", 1), ("a", 2)]
    assert names({"refers.parent_id": first["_id"]}) == [("a", 2)]
    assert names({"refers.root_id": second["refers"]["root_id"]}) == [("a", 2)]
    assert names({"metadata.datetime": {"$gt": T0}}) == [("b", 1)]
    assert names({"version": {"$gte": 2}}) == [("a", 2)]
    assert names({"version": {"$lt": 2}, "name": {"$nin": ["b"]}}) == [("a", 1)]
    assert names({"name": {"$in": ["b", "c"]}}) == [("b", 1)]
    assert names({"name": {"$ne": "a"}}) == [("b", 1)]
    assert names({"max_trials": 10, "algorithm.random.seed": 1}) == [("a", 1), ("a", 2), ("b", 1)]
    assert names({"no_such_key": 1}) == []

    query = {"name": {"$where": "1"}}
    with pytest.raises(ValueError, match=r"\$where"):
        storage.fetch_experiments(query)
    with pytest.raises(ValueError, match=r"\$in"):
        storage.fetch_experiments({"name": {"$in": "a"}})
    assert query == {"name": {"$where": "1"}}


SELECTIONS = [
    {"name": 1},
    {"name": 1, "_id": 0},
    {"_id": 1},
    {"_id": 0},
    {"metadata.user": 1, "version": 1},
    {"metadata": {"user": 1}},
    {"algorithm": 1},
    {"missing": 1, "_id": 0},
    {"max_trials": 0, "name": 0},
    {"metadata": 0, "max_trials": 0, "_id": 0},  # EphemeralDB drops only leaves by their full key
    {"metadata.user": 0},
]


def test_fetch_experiments_selection_like_ephemeraldb(storage):
    """Oríon's EphemeralDB (legacy storage) is the reference for selections."""
    reference = Legacy(database={"type": "EphemeralDB"})
    for store in (storage, reference):
        new_experiment(store, "other")
        config = new_experiment(store)
    for selection in SELECTIONS:
        expected = reference.fetch_experiments({"name": "exp"}, copy.deepcopy(selection))
        if "_id" in expected[0]:
            expected[0]["_id"] = config["_id"]
        assert storage.fetch_experiments({"name": "exp"}, selection) == expected, selection
        assert expected[0] != config  # the selection did select
    with pytest.raises(ValueError, match="Cannot mix"):
        storage.fetch_experiments({}, {"name": 1, "version": 0})


# --- identity ----------------------------------------------------------------------------


def test_experiment_identity_errors(storage):
    new_experiment(storage, "exp", version=1)
    with pytest.raises(DuplicateKeyError):
        new_experiment(storage, "exp", version=1)
    new_experiment(storage, "exp", version=2)  # another version is another experiment
    assert [doc["version"] for doc in storage.fetch_experiments({"name": "exp"})] == [1, 2]

    b = new_experiment(storage, "b")
    with pytest.raises(DuplicateKeyError):
        storage.update_experiment(uid=b["_id"], name="exp")  # (exp, 1) is taken

    with pytest.raises(ValueError, match="_id"):
        storage.create_experiment({"name": "c", "version": 1, "_id": "c"})  # ids are integers
    with pytest.raises(ValueError, match="name"):
        storage.create_experiment({"version": 1})
    assert [(doc["name"], doc["version"]) for doc in storage.fetch_experiments({})] == [
        ("exp", 1),
        ("exp", 2),
        ("b", 1),
    ]


def test_explicit_experiment_ids_are_kept_and_later_ids_do_not_collide(storage):
    zero = new_experiment(storage, "zero", _id=0)
    assert zero["_id"] == 0
    assert storage.fetch_experiments({"name": "zero"}, {"_id": 1}) == [{"_id": 0}]
    generated = [new_experiment(storage, f"auto{n}")["_id"] for n in range(3)]
    assert all(isinstance(uid, int) and uid > 0 for uid in generated) and len(set(generated)) == 3

    high = max(generated) + 10_000
    assert new_experiment(storage, "high", _id=high)["_id"] == high
    after = [new_experiment(storage, f"after{n}")["_id"] for n in range(2)]
    assert min(after) > high and len(set(after)) == 2  # the id sequence moved past it

    for uid in (0, generated[1], high):
        with pytest.raises(DuplicateKeyError):
            new_experiment(storage, f"taken{uid}", _id=uid)
    for uid in (0, high):
        assert storage.get_algorithm_lock_info(uid=uid) is not None
        assert storage.delete_experiment(uid=uid) == 1
    assert len(storage.fetch_experiments({})) == 5


# --- update ----------------------------------------------------------------------------


def test_update_experiment(storage):
    config = new_experiment(storage)
    other = new_experiment(storage, "other")
    parent = new_experiment(storage, "parent")
    uid = config["_id"]

    # returns the number of experiments matched
    assert storage.update_experiment(uid=uid, max_trials=50, working_dir="/tmp/w") == 1
    assert storage.update_experiment(experiment=experiment_of(storage, config), max_broken=2) == 1
    assert storage.update_experiment(uid=uid + other["_id"] + parent["_id"] + 100, max_trials=1) == 0
    where = {"max_trials": 999}
    assert storage.update_experiment(uid=uid, where=where, max_trials=1) == 0
    assert where == {"max_trials": 999}  # orion_sql leaves the caller's dict alone (legacy adds `_id`)
    assert storage.update_experiment(uid=uid, where={"max_trials": 50}, max_trials=60) == 1

    # dotted keys set nested fields; the columns lifted from the document follow it
    storage.update_experiment(uid=uid, **{"refers.parent_id": parent["_id"], "metadata.user": "carol"})
    storage.update_experiment(uid=uid, algorithm={"tpe": {"seed": 2}})
    (doc,) = storage.fetch_experiments({"_id": uid})
    assert (doc["max_trials"], doc["working_dir"], doc["max_broken"]) == (60, "/tmp/w", 2)
    assert doc["refers"] == {"parent_id": parent["_id"], "root_id": None, "adapter": []}
    assert doc["metadata"] == {**config["metadata"], "user": "carol"}
    assert doc["algorithm"] == {"tpe": {"seed": 2}}
    assert [d["_id"] for d in storage.fetch_experiments({"refers.parent_id": parent["_id"]})] == [uid]
    assert [d["_id"] for d in storage.fetch_experiments({"metadata.user": "carol"})] == [uid]
    assert storage.fetch_experiments({"_id": other["_id"]}) == [other]

    with pytest.raises(ValueError, match=r"\$regex"):
        storage.update_experiment(uid=uid, where={"name": {"$regex": "e.*"}}, max_trials=1)
    with pytest.raises(ValueError, match="_id"):
        storage.update_experiment(uid=uid, _id=uid + 1)
    assert storage.fetch_experiments({"_id": uid}) == [doc]


# --- delete ------------------------------------------------------------------------------


def test_delete_experiment_returns_count_and_cascades(storage):
    config = new_experiment(storage)
    kept = new_experiment(storage, "kept")
    storage.register_trial(make_trial(config["_id"], 1.5))
    storage.register_trial(make_trial(kept["_id"], 1.5))
    assert storage.delete_experiment(uid=config["_id"]) == 1
    assert storage.delete_experiment(uid=config["_id"]) == 0
    assert [doc["name"] for doc in storage.fetch_experiments({})] == ["kept"]
    assert storage.fetch_trials(uid=config["_id"]) == []
    assert storage.get_algorithm_lock_info(uid=config["_id"]) is None
    assert len(storage.fetch_trials(uid=kept["_id"])) == 1
    assert storage.delete_experiment(experiment=experiment_of(storage, kept)) == 1
    assert storage.fetch_experiments({}) == []
