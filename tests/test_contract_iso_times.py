"""Contract: ISO-8601 strings where datetimes usually stand, as Oríon's own storage
tests write them (`submit_time: "2017-11-23T02:00:00"`). PickledDB and MongoDB return
them as given; so does orion_sql, and it still uses them as times (ordering,
lost-trial detection, filters)."""
from __future__ import annotations

import datetime

import pytest
from orion.core.worker.trial import Trial

from support.documents import experiment_of, new_experiment

OLD = "2017-11-23T02:00:00"


def _trial(experiment_id, x, **times) -> Trial:
    return Trial(experiment=experiment_id, status="new", params=[{"name": "x", "type": "real", "value": x}], **times)


def test_an_experiment_s_datetime_written_as_text_comes_back_as_text_and_still_filters(storage):
    config = new_experiment(storage, metadata={"user": "tester", "datetime": OLD})
    (document,) = storage.fetch_experiments({"name": "exp"})
    assert document["metadata"]["datetime"] == OLD
    before = datetime.datetime(2018, 1, 1)
    assert [d["_id"] for d in storage.fetch_experiments({"metadata.datetime": {"$lte": before}})] == [config["_id"]]
    assert storage.fetch_experiments({"metadata.datetime": {"$gt": before}}) == []


def test_trial_times_written_as_text_come_back_as_written(storage):
    config = new_experiment(storage)
    times = {"submit_time": OLD, "start_time": "2017-11-23 02:00:01.5", "end_time": "2017-11-23T04:00:00+02:00",
             "heartbeat": datetime.datetime(2017, 11, 23, 2, 0, 3)}
    trial = storage.register_trial(_trial(config["_id"], 0.5, **times))
    (stored,) = storage.fetch_trials(uid=config["_id"])
    assert stored.to_dict() == trial.to_dict()
    assert {key: getattr(stored, key) for key in times} == times  # a string stays a string, a datetime a datetime


def test_times_written_as_text_order_trials_and_find_lost_ones(storage):
    config = new_experiment(storage)
    experiment = experiment_of(storage, config)
    later = storage.register_trial(_trial(config["_id"], 0.2, submit_time="2017-11-23T03:00:00"))
    earlier = storage.register_trial(_trial(config["_id"], 0.1, submit_time=OLD))
    middle = storage.register_trial(_trial(config["_id"], 0.3, submit_time=datetime.datetime(2017, 11, 23, 2, 30)))
    assert [t.id for t in storage.fetch_trials(uid=config["_id"])] == [earlier.id, middle.id, later.id]

    storage.update_trial(earlier, status="reserved", heartbeat=OLD)
    (lost,) = storage.fetch_lost_trials(experiment)
    assert (lost.id, lost.heartbeat, lost.submit_time) == (earlier.id, OLD, OLD)


def test_later_writes_replace_a_time_and_keep_the_others_as_written(storage):
    config = new_experiment(storage)
    trial = storage.register_trial(_trial(config["_id"], 0.5, submit_time=OLD, heartbeat=OLD))
    storage.set_trial_status(trial, "reserved", heartbeat="2017-11-23T02:00:09")
    (stored,) = storage.fetch_trials(uid=config["_id"])
    assert (stored.submit_time, stored.heartbeat) == (OLD, "2017-11-23T02:00:09")

    assert storage.update_heartbeat(stored) == 1  # the server's clock
    (beaten,) = storage.fetch_trials(uid=config["_id"])
    assert beaten.submit_time == OLD and isinstance(beaten.heartbeat, datetime.datetime)
    assert beaten.heartbeat > datetime.datetime(2020, 1, 1)

    beaten.status = "completed"
    beaten.end_time = "2017-11-23T05:00:00"
    beaten.results = [Trial.Result(name="loss", type="objective", value=1.5)]
    storage.push_trial_results(beaten)
    (pushed,) = storage.fetch_trials(uid=config["_id"])
    assert pushed.to_dict() == beaten.to_dict()

    storage.update_trials(uid=config["_id"], submit_time=datetime.datetime(2017, 11, 23, 2))
    (updated,) = storage.fetch_trials(uid=config["_id"])
    assert updated.submit_time == datetime.datetime(2017, 11, 23, 2) and updated.end_time == "2017-11-23T05:00:00"


@pytest.mark.parametrize("field", ["submit_time", "start_time", "end_time", "heartbeat"])
def test_text_that_is_not_a_time_is_refused_naming_the_field(storage, field):
    config = new_experiment(storage)
    with pytest.raises(ValueError, match=f"{field}.*ISO-8601"):
        storage.register_trial(_trial(config["_id"], 0.5, **{field: "yesterday"}))
    with pytest.raises(ValueError, match="metadata.datetime.*ISO-8601"):
        new_experiment(storage, name="other", metadata={"datetime": "yesterday"})
    assert storage.fetch_trials(uid=config["_id"]) == []
    assert storage.fetch_experiments({"name": "other"}) == []
