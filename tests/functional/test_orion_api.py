"""Oríon's Python API (orion.client) on the sql storage, compared with what the storage holds."""
from __future__ import annotations

import os

import pytest
from orion.client import build_experiment, create_experiment, get_experiment
from orion.core.io.database import DuplicateKeyError
from orion.core.utils.exceptions import UnsupportedOperation

pytestmark = pytest.mark.functional

SPACE = {"x": "uniform(-2, 2)"}


def objective(x: float) -> list[dict]:
    """The function `workon` optimizes, in Oríon's result format, with the process that ran it."""
    return [
        {"name": "objective", "type": "objective", "value": (x - 1) ** 2},
        {"name": "pid", "type": "statistic", "value": os.getpid()},
    ]


def by_id(trials) -> dict:
    """{trial id: status}, to compare sets of trials at a glance."""
    return {trial.id: trial.status for trial in trials}


def test_create_suggest_observe_insert_and_fetch(storage_config, sql_storage):
    client = create_experiment("api", space=SPACE, max_trials=10, storage=storage_config)
    (document,) = sql_storage.fetch_experiments({"name": "api"})
    assert (client.id, client.version, document["space"]) == (document["_id"], 1, {"x": "uniform(-2, 2)"})

    def stored():
        return by_id(sql_storage.fetch_trials(uid=client.id))

    suggested = client.suggest()
    assert stored() == {suggested.id: "reserved"}
    client.observe(suggested, objective(suggested.params["x"]))

    released = client.insert({"x": 0.5})  # Oríon 0.2.7 registers it reserved, then releases it `interrupted`
    reserved = client.insert({"x": 0.25}, reserve=True)
    observed = client.insert({"x": 1.5}, results=objective(1.5))
    with pytest.raises(DuplicateKeyError):
        client.insert({"x": 0.5})
    assert stored() == {
        suggested.id: "completed",
        released.id: "interrupted",
        reserved.id: "reserved",
        observed.id: "completed",
    }
    # A pending trial is suggested before the algorithm is asked for a new one.
    resumed = client.suggest()
    assert resumed.id == released.id
    client.release(reserved, status="broken")

    assert by_id(client.fetch_trials_by_status("completed")) == {suggested.id: "completed", observed.id: "completed"}
    assert by_id(client.fetch_trials_by_status("broken")) == {reserved.id: "broken"}
    assert by_id(client.fetch_noncompleted_trials()) == {released.id: "reserved", reserved.id: "broken"}
    assert client.fetch_pending_trials() == []

    frame = client.to_pandas()
    assert list(frame.columns) == [
        "id",
        "experiment_id",
        "status",
        "suggested",
        "reserved",
        "completed",
        "objective",
        "x",
    ]
    expected = {
        trial.id: (client.id, trial.status, trial.objective.value if trial.objective else None, trial.params["x"])
        for trial in sql_storage.fetch_trials(uid=client.id)
    }
    shown = {
        row.id: (row.experiment_id, row.status, None if row.objective != row.objective else row.objective, row.x)
        for row in frame.itertuples()
    }
    assert shown == expected
    assert frame.set_index("id").loc[observed.id, "objective"] == 0.25

    client.release(resumed)
    client.close()  # raises if a trial were still reserved by this client


def test_get_experiment_is_read_only(storage_config, sql_storage, rows):
    writer = build_experiment("read-only", space=SPACE, storage=storage_config)
    trial = writer.insert({"x": 0.5}, reserve=True)
    before = rows.snapshot()

    reader = get_experiment("read-only", storage=storage_config)
    assert reader.id == writer.id
    assert by_id(reader.fetch_trials()) == {trial.id: "reserved"}
    for write in (
        lambda: reader.insert({"x": 0.75}),
        lambda: reader.suggest(),
        lambda: reader.observe(trial, objective(0.5)),
        lambda: reader.release(trial),
    ):
        with pytest.raises(UnsupportedOperation):
            write()
    assert rows.diff(before, rows.snapshot()) == {}
    writer.release(trial)
    writer.close()


def test_workon_with_two_joblib_workers(storage_config, sql_storage):
    client = build_experiment("workon", space=SPACE, max_trials=8, storage=storage_config)
    with pytest.warns(DeprecationWarning, match="Joblib is deprecated"):
        with client.tmp_executor("joblib", n_workers=2):
            client.workon(objective, max_trials=8, n_workers=2)

    trials = sql_storage.fetch_trials(uid=client.id)
    completed = [trial for trial in trials if trial.status == "completed"]
    assert len(completed) >= 8  # with several workers Oríon may overshoot, on PickledDB too
    assert {trial.status for trial in trials} <= {"completed", "new"}
    assert len({trial.id for trial in trials}) == len({trial.params["x"] for trial in trials}) == len(trials)
    for trial in completed:
        assert trial.objective.value == (trial.params["x"] - 1) ** 2
    workers = {trial.statistics[0].value for trial in completed}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2  # the executor's processes ran them
    assert client.is_done
