"""Contract: trials (register, fetch, update, reserve, status, heartbeats, counts, results).

Expected values are those of Oríon's legacy storage (orion/storage/legacy.py) unless a
test says it checks orion_sql's own documented behaviour.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
import socket

import orion.core
import pytest
from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial
from orion.storage.base import FailedUpdate
from sqlalchemy import event

from support.documents import (
    T0,
    assert_identical,
    experiment_of,
    make_trial,
    new_experiment,
    same_database,
    seconds,
    utcnow,
)

STATUSES = ("new", "reserved", "suspended", "completed", "interrupted", "broken")


def register_one_per_status(storage, experiment_id) -> dict[str, Trial]:
    """One trial in each status, registered in STATUSES order, submitted in reverse."""
    trials = {}
    for index, status in enumerate(STATUSES):
        trial = make_trial(experiment_id, index + 0.5, status=status, submit_time=T0 - seconds(index))
        trials[status] = storage.register_trial(trial)
    return trials


def rich_trial(experiment_id) -> Trial:
    """A trial with every kind of value Oríon stores, in an order worth keeping."""
    return Trial(
        experiment=experiment_id,
        status="completed",
        worker="worker-1",
        exp_working_dir="/tmp/exp",
        parent="f" * 32,
        submit_time=T0,
        start_time=T0 + seconds(1.5),
        end_time=T0 + datetime.timedelta(hours=1, microseconds=1),
        heartbeat=datetime.datetime(2024, 2, 1, 0, 0, 0, 999999),
        params=[
            {"name": "/z", "type": "real", "value": 0.1},
            {"name": "/a", "type": "integer", "value": 42},
            {"name": "/tiny", "type": "real", "value": 1e-300},
            {"name": "/huge", "type": "real", "value": 1e300},
            {"name": "/nan", "type": "real", "value": float("nan")},
            {"name": "/inf", "type": "real", "value": float("inf")},
            {"name": "/minus_inf", "type": "real", "value": float("-inf")},
            {"name": "/choice", "type": "categorical", "value": "adam"},
            {"name": "/list", "type": "categorical", "value": [1, 2.5, "x", None, True]},
            {"name": "/none", "type": "categorical", "value": None},
            {"name": "/flag", "type": "categorical", "value": False},
            {"name": "/epochs", "type": "fidelity", "value": 3},
        ],
        results=[
            {"name": "loss", "type": "objective", "value": 0.123456789012345},
            {"name": "constraint", "type": "constraint", "value": -1},
            {"name": "grad", "type": "gradient", "value": [0.5, -2.0e-7, float("nan")]},
            {"name": "acc", "type": "statistic", "value": float("inf")},
            {"name": "note", "type": "statistic", "value": "ok"},
            {"name": "lie", "type": "lie", "value": 0.75},  # part of the trial's id
        ],
    )


# --- register / get / fetch -----------------------------------------------------------


def test_register_trial_round_trips_exactly(storage):
    config = new_experiment(storage)
    trial = rich_trial(config["_id"])
    assert storage.register_trial(trial) is trial
    assert isinstance(trial.id_override, int)
    registered = trial.to_dict()
    assert registered["_id"] == trial.id_override

    by_object = storage.get_trial(trial)
    by_uid = storage.get_trial(uid=trial.id, experiment_uid=config["_id"])
    (fetched,) = storage.fetch_trials(uid=config["_id"])
    for read in (by_object, by_uid, fetched):
        assert_identical(read.to_dict(), registered)
        assert read.id == trial.id  # the hash over params, parent and lie is unchanged

    assert storage.get_trial(uid="0" * 32, experiment_uid=config["_id"]) is None
    assert storage.get_trial(uid=trial.id, experiment_uid=config["_id"] + 1) is None


def test_integral_floats_and_big_ints_keep_their_type(storage):
    """1.0 is not 1, -0.0 is not 0.0, 2**70 is exact, 1.5e16 stays a float."""
    config = new_experiment(storage)
    values = [1.0, -0.0, 2.0**62, 1.5e16, 2**70, -(2**63), 10**20]
    trial = Trial(
        experiment=config["_id"],
        params=[{"name": f"/p{index}", "type": "real", "value": value} for index, value in enumerate(values)],
        results=[{"name": "obj", "type": "objective", "value": 3.0}],
    )
    storage.register_trial(trial)
    read = storage.get_trial(trial).to_dict()
    assert_identical(read["params"], trial.to_dict()["params"], "params")
    assert_identical(read, trial.to_dict())  # the trial's id hashes its params' text


def test_register_trial_errors_and_explicit_ids(storage):
    config = new_experiment(storage)
    other = new_experiment(storage, "other")
    storage.register_trial(make_trial(config["_id"], 1.5))
    with pytest.raises(DuplicateKeyError):
        storage.register_trial(make_trial(config["_id"], 1.5, status="completed"))
    # same params in another experiment: another trial
    storage.register_trial(make_trial(other["_id"], 1.5))
    missing = config["_id"] + other["_id"] + 1000
    with pytest.raises(ValueError, match="does not exist"):
        storage.register_trial(make_trial(missing, 2.5))
    with pytest.raises(ValueError, match="experiment"):
        storage.register_trial(make_trial("exp", 2.5))  # OrionState style: a name, not an id
    with pytest.raises(ValueError, match="experiment"):
        storage.register_trial(make_trial(None, 2.5))
    assert len(storage.fetch_trials(uid=config["_id"])) == 1
    assert len(storage.fetch_trials(uid=other["_id"])) == 1

    # an explicit `_id` (Trial.id_override) is kept; later generated ids do not collide
    explicit = make_trial(config["_id"], 20.5)
    explicit.id_override = 500
    storage.register_trial(explicit)
    assert explicit.id_override == 500
    assert storage.get_trial(explicit).to_dict()["_id"] == 500
    later = [storage.register_trial(make_trial(config["_id"], x + 0.5)).id_override for x in range(2, 5)]
    assert min(later) > 500 and len(set(later)) == 3
    clash = make_trial(config["_id"], 9.5)
    clash.id_override = later[0]
    with pytest.raises(DuplicateKeyError):
        storage.register_trial(clash)


def test_fetch_trials_order_filters_and_errors(storage):
    config = new_experiment(storage)
    other = new_experiment(storage, "other")
    trials = register_one_per_status(storage, config["_id"])
    unsubmitted = storage.register_trial(make_trial(config["_id"], 99.5, submit_time=None))
    storage.register_trial(make_trial(other["_id"], 0.5))
    experiment = experiment_of(storage, config)

    fetched = storage.fetch_trials(experiment)
    # by submit time; a trial never submitted first (legacy sorts None as 0)
    assert [t.status for t in fetched[1:]] == list(reversed(STATUSES))
    assert fetched[0].id == unsubmitted.id
    assert [t.id for t in storage.fetch_trials(uid=config["_id"])] == [t.id for t in fetched]

    def statuses(where):
        return sorted(t.status for t in storage.fetch_trials(uid=config["_id"], where=where))

    assert statuses({"status": "broken"}) == ["broken"]
    assert statuses({"status": {"$in": ["new", "completed"]}}) == ["completed", "new", "new"]
    assert statuses({"status": {"$ne": "new"}}) == sorted(STATUSES[1:])
    assert statuses({"status": {"$nin": ["new", "reserved"]}}) == ["broken", "completed", "interrupted", "suspended"]
    assert statuses({"submit_time": {"$gte": T0 - seconds(1)}}) == ["new", "reserved"]
    assert statuses({"submit_time": {"$lt": T0 - seconds(4)}}) == ["broken"]
    assert statuses({"submit_time": None}) == ["new"]
    assert statuses({"id": trials["completed"].id}) == ["completed"]
    assert statuses({"_id": trials["broken"].id_override}) == ["broken"]
    # orion_sql: `where` and the experiment argument must both hold (legacy lets the
    # argument overwrite the key in the caller's `where`)
    assert statuses({"experiment": other["_id"]}) == []

    where = {"status": "new"}
    storage.fetch_trials(uid=config["_id"], where=where)
    assert where == {"status": "new"}  # orion_sql leaves the caller's dict alone (legacy adds `experiment`)

    for bad_where, named in [
        ({"status": {"$regex": "n.*"}}, r"\$regex"),
        ({"colour": "red"}, "colour"),
        ({"params.x": 1.0}, "params"),
        ({"status": {"$in": "new"}}, r"\$in"),
    ]:
        with pytest.raises(ValueError, match=named):
            storage.fetch_trials(uid=config["_id"], where=bad_where)


def test_fetch_trials_reads_one_snapshot(storage):
    """A trial committed by another worker between fetch_trials' two statements (trials,
    then their params and results) is either wholly there or absent, never half-read."""
    config = new_experiment(storage)
    storage.register_trial(make_trial(config["_id"], 1.5))
    other = same_database(storage)
    interleaved = []

    def register_in_between(conn, cursor, statement, *_):
        if not interleaved and statement.lstrip().startswith("SELECT trials.id"):
            interleaved.append(other.register_trial(make_trial(config["_id"], 2.5)))

    event.listen(storage.database.engine, "after_cursor_execute", register_in_between)
    try:
        fetched = storage.fetch_trials(uid=config["_id"])
    finally:
        event.remove(storage.database.engine, "after_cursor_execute", register_in_between)
    assert interleaved
    assert all(len(trial.params) == 1 for trial in fetched)
    assert len(storage.fetch_trials(uid=config["_id"])) == 2


# --- update / delete ------------------------------------------------------------------


def test_update_trials_returns_matched_count_and_refuses_bad_fields(storage):
    config = new_experiment(storage)
    other = new_experiment(storage, "other")
    register_one_per_status(storage, config["_id"])
    storage.register_trial(make_trial(other["_id"], 0.5))

    assert storage.update_trials(uid=config["_id"], where={"status": {"$in": ["new", "suspended"]}}, worker="w2") == 2
    assert storage.update_trials(experiment_of(storage, config), where={"status": "nope-no-such"}, worker="x") == 0
    assert sorted(t.status for t in storage.fetch_trials(uid=config["_id"], where={"worker": "w2"})) == [
        "new",
        "suspended",
    ]
    assert storage.update_trials(uid=config["_id"], status="interrupted") == len(STATUSES)
    assert storage.count_completed_trials(experiment_of(storage, config)) == 0
    assert storage.fetch_trials(uid=other["_id"])[0].status == "new"  # other experiment untouched

    trial = storage.fetch_trials(uid=other["_id"])[0]
    for kwargs, named in [
        ({"colour": "red"}, "colour"),
        ({"status": "bogus"}, "bogus"),
        ({"submit_time": "yesterday"}, "submit_time"),
        ({"end_time": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}, "naive"),
    ]:
        with pytest.raises(ValueError, match=named):
            storage.update_trials(uid=other["_id"], **kwargs)
        with pytest.raises(ValueError, match=named):
            storage.update_trial(trial, **kwargs)
    with pytest.raises(ValueError, match=r"\$exists"):
        storage.update_trials(uid=other["_id"], where={"worker": {"$exists": True}}, worker="x")
    assert_identical(storage.fetch_trials(uid=other["_id"])[0].to_dict(), trial.to_dict())


def test_update_trial_by_object_or_uid(storage):
    config = new_experiment(storage)
    trial = storage.register_trial(make_trial(config["_id"], 1.5))
    results = [{"name": "loss", "type": "objective", "value": 0.5}, {"name": "s", "type": "statistic", "value": [1, 2]}]

    assert storage.update_trial(trial, results=results, end_time=T0 + seconds(9)) == 1
    assert storage.update_trial(uid=trial.id, experiment_uid=config["_id"], where={"status": "new"}, worker="w") == 1
    assert storage.update_trial(trial, where={"status": "reserved"}, worker="never") == 0
    assert storage.update_trial(uid="0" * 32, experiment_uid=config["_id"], worker="nobody") == 0

    stored = storage.get_trial(trial)
    assert [r.to_dict() for r in stored.results] == results
    assert (stored.end_time, stored.worker, stored.params) == (T0 + seconds(9), "w", {"x": 1.5})
    # results are replaced, not appended
    storage.update_trial(trial, results=results[:1])
    assert [r.to_dict() for r in storage.get_trial(trial).results] == results[:1]


# --- status queries and counts ------------------------------------------------------------


def test_status_queries_counts_and_deletion(storage):
    config = new_experiment(storage)
    other = new_experiment(storage, "other")
    trials = register_one_per_status(storage, config["_id"])
    storage.register_trial(make_trial(config["_id"], 10.5, status="completed", submit_time=T0 + seconds(1)))
    storage.register_trial(make_trial(other["_id"], 0.5, status="completed"))
    storage.register_trial(make_trial(other["_id"], 1.5, status="broken"))
    experiment = experiment_of(storage, config)

    def ids(found):
        return [trial.id for trial in found]

    # by submit time: register_one_per_status submits in reverse
    assert ids(storage.fetch_pending_trials(experiment)) == ids(
        [trials[s] for s in ("interrupted", "suspended", "new")]
    )
    assert ids(storage.fetch_noncompleted_trials(experiment)) == ids(
        [trials[s] for s in ("broken", "interrupted", "suspended", "reserved", "new")]
    )
    for status in STATUSES:
        assert [t.status for t in storage.fetch_trials_by_status(experiment, status)] == [status] * (
            2 if status == "completed" else 1
        )
    assert storage.count_completed_trials(experiment) == 2
    assert storage.count_broken_trials(experiment) == 1
    assert type(storage.count_completed_trials(experiment)) is int

    # delete_trials returns how many it deleted
    assert storage.delete_trials(uid=config["_id"], where={"status": {"$in": ["new", "broken"]}}) == 2
    assert storage.delete_trials(uid=config["_id"], where={"status": "new"}) == 0
    assert storage.count_broken_trials(experiment) == 0
    assert storage.delete_trials(experiment) == len(STATUSES) + 1 - 2
    assert (storage.count_completed_trials(experiment), storage.count_broken_trials(experiment)) == (0, 0)
    assert storage.fetch_pending_trials(experiment) == []
    assert storage.count_completed_trials(experiment_of(storage, other)) == 1  # other experiment untouched


# --- reservation ------------------------------------------------------------------------


def test_reserve_trial_takes_the_oldest_pending_one(storage):
    config = new_experiment(storage)
    other = new_experiment(storage, "other")
    storage.register_trial(make_trial(other["_id"], 0.5))
    order = ["completed", "suspended", "reserved", "new", "broken", "interrupted", "new"]
    registered = [
        storage.register_trial(make_trial(config["_id"], i + 0.5, status=status, submit_time=T0 - seconds(i)))
        for i, status in enumerate(order)
    ]
    experiment = experiment_of(storage, config)

    reserved = []
    while (trial := storage.reserve_trial(experiment)) is not None:
        before, after = utcnow() - seconds(5), utcnow() + seconds(5)
        assert trial.status == "reserved"
        assert before <= trial.start_time <= after and trial.heartbeat == trial.start_time
        assert_identical(storage.get_trial(trial).to_dict(), trial.to_dict())
        reserved.append(trial)
        assert len(reserved) <= 4
    # registration order among new, suspended and interrupted trials
    assert [t.id for t in reserved] == [registered[i].id for i in (1, 3, 5, 6)]
    assert reserved[0].params == {"x": 1.5} and reserved[0].submit_time == T0 - seconds(1)
    assert storage.fetch_pending_trials(experiment) == []
    assert storage.fetch_trials(uid=other["_id"])[0].status == "new"


# --- status changes, results, heartbeats ----------------------------------------------------


def test_set_trial_status(storage):
    config = new_experiment(storage)
    trial = storage.register_trial(make_trial(config["_id"], 1.5))

    assert storage.set_trial_status(trial, "reserved") is None
    assert trial.status == "reserved"
    stored = storage.get_trial(trial)
    assert stored.status == "reserved"
    assert abs(stored.heartbeat - utcnow()) < seconds(5)

    beat = T0 + seconds(3)
    storage.set_trial_status(trial, "interrupted", heartbeat=beat, was="reserved")
    assert (storage.get_trial(trial).status, storage.get_trial(trial).heartbeat) == ("interrupted", beat)

    with pytest.raises(FailedUpdate):
        storage.set_trial_status(trial, "completed", was="reserved")
    stale = copy.deepcopy(trial)
    stale.status = "new"
    with pytest.raises(FailedUpdate):
        storage.set_trial_status(stale, "reserved")  # `was` defaults to the object's status
    assert stale.status == "new" and storage.get_trial(trial).status == "interrupted"

    with pytest.raises(ValueError, match="bogus"):
        storage.set_trial_status(trial, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        storage.set_trial_status(trial, "new", was="bogus")
    assert storage.get_trial(trial).status == "interrupted"


def test_push_trial_results(storage):
    config = new_experiment(storage)
    trial = storage.register_trial(make_trial(config["_id"], 1.5))
    with pytest.raises(FailedUpdate):
        storage.push_trial_results(trial)  # not reserved

    trial = storage.reserve_trial(experiment_of(storage, config))
    trial.results = [Trial.Result(name="loss", type="objective", value=0.25)]
    trial.status = "completed"
    trial.end_time = T0 + seconds(60)
    assert storage.push_trial_results(trial) == 1
    assert_identical(storage.get_trial(trial).to_dict(), trial.to_dict())
    assert storage.count_completed_trials(experiment_of(storage, config)) == 1
    with pytest.raises(FailedUpdate):
        storage.push_trial_results(trial)  # completed now
    assert storage.retrieve_result(trial) is trial


@contextlib.contextmanager
def worker_heartbeat(seconds_between_beats: int):
    """Oríon's worker.heartbeat set for a block (pytest's monkeypatch cannot undo it
    on Oríon's Configuration object)."""
    saved = orion.core.config.worker.heartbeat
    orion.core.config.worker.heartbeat = seconds_between_beats
    try:
        yield
    finally:
        orion.core.config.worker.heartbeat = saved


def test_heartbeats_and_lost_trials(storage):
    config = new_experiment(storage)
    experiment = experiment_of(storage, config)
    now = utcnow()
    silent = storage.register_trial(make_trial(config["_id"], 1.5, status="reserved", heartbeat=now - seconds(30)))
    storage.register_trial(make_trial(config["_id"], 2.5, status="reserved", heartbeat=now))
    storage.register_trial(make_trial(config["_id"], 3.5, status="interrupted", heartbeat=now - seconds(3600)))
    ancient = storage.register_trial(make_trial(config["_id"], 4.5, status="reserved", heartbeat=now - seconds(3600)))

    with worker_heartbeat(120):  # lost after 600 s of silence
        assert [t.id for t in storage.fetch_lost_trials(experiment)] == [ancient.id]
    with worker_heartbeat(2):  # lost after 10 s
        assert sorted(t.id for t in storage.fetch_lost_trials(experiment)) == sorted([silent.id, ancient.id])
        assert storage.update_heartbeat(silent) == 1
        assert abs(storage.get_trial(silent).heartbeat - utcnow()) < seconds(5)
        assert [t.id for t in storage.fetch_lost_trials(experiment)] == [ancient.id]
    waiting = storage.register_trial(make_trial(config["_id"], 5.5))
    assert storage.update_heartbeat(waiting) == 0  # only a reserved trial has a heartbeat to update
    assert storage.get_trial(waiting).heartbeat is None


def test_client_reserve_of_a_given_trial(storage):
    """Oríon 0.2.7's ExperimentClient.reserve passes its heartbeat interval (an int) as
    the heartbeat time: the storage takes it as the server's clock."""
    from orion.client import ExperimentClient
    from orion.core.io.experiment_builder import ExperimentBuilder

    client = ExperimentBuilder(storage=storage).build("client-reserve", space={"x": "uniform(0, 1)"})
    client = ExperimentClient(client, heartbeat=30)
    trial = client.insert({"x": 0.5})
    trial.status = "interrupted"  # as Oríon leaves an inserted trial
    client.reserve(trial)
    try:
        (stored,) = storage.fetch_trials(uid=client.id)
        assert stored.status == "reserved"
        assert isinstance(stored.heartbeat, datetime.datetime)
        assert abs((stored.heartbeat - datetime.datetime.utcnow()).total_seconds()) < 5
    finally:
        client.release(trial, "interrupted")


def test_reserve_trial_records_the_reserving_worker(storage):
    """Oríon 0.2.7 never sets `worker`; the storage records which process reserved the
    trial (host:pid), and a worker pushed with the results wins."""
    config = new_experiment(storage)
    storage.register_trial(make_trial(config["_id"], 0.5))
    reserved = storage.reserve_trial(experiment_of(storage, config))
    assert reserved.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert storage.get_trial(reserved).worker == reserved.worker
    reserved.status, reserved.worker = "completed", "gpu-node-7"
    reserved.results = [Trial.Result(name="objective", type="objective", value=1.0)]
    storage.push_trial_results(reserved)
    assert storage.get_trial(reserved).worker == "gpu-node-7"
