"""Fenced writes: a worker that comes back after losing its trial changes nothing.

A real worker process reserves a trial and is paused (SIGSTOP); its trial goes
silent, is found lost and is reserved by another worker. Resumed, the stale
worker's completion, heartbeats (as Oríon's pacemaker sends them, re-reading the
trial first) and status change all fail, and the stored trial is as the new
holder left it.
"""

from __future__ import annotations

import datetime
import os
import signal
import time

import pytest
from orion.core.worker.trial import Trial
from orion.storage.base import FailedUpdate
from test_concurrency import LOST_AFTER, experiment_object, kill, short_heartbeat, start

from orion_sql import SQL
from support.documents import new_experiment
from support.forkserver import CONTEXT

__all__ = ["short_heartbeat"]  # a fixture this module uses


def _attempt(write) -> str:
    try:
        return repr(write())
    except FailedUpdate:
        return "FailedUpdate"


def _stale_worker(url: str, experiment_id, reserved, go) -> dict:
    """Reserve a trial, wait (paused meanwhile), then try every write a worker makes."""
    storage = SQL(uri=url)
    trial = storage.reserve_trial(experiment_object(storage, experiment_id))
    reserved.put(trial.id)
    go.wait(timeout=120)
    outcomes = {
        "heartbeat": _attempt(lambda: storage.update_heartbeat(trial)),
        "pacemaker heartbeat": _attempt(lambda: storage.update_heartbeat(storage.get_trial(trial))),
        "status change": _attempt(lambda: storage.set_trial_status(trial, "interrupted", was="reserved")),
    }
    trial.status = "completed"
    trial.end_time = datetime.datetime.utcnow()
    trial.results = [Trial.Result(name="objective", type="objective", value=-1.0)]
    outcomes["completion"] = _attempt(lambda: storage.push_trial_results(trial))
    return outcomes


@pytest.mark.slow
def test_a_stale_workers_writes_fail_and_change_nothing(database_url, short_heartbeat):
    storage = SQL(uri=database_url)
    experiment_id = new_experiment(storage, "fenced")["_id"]
    experiment = experiment_object(storage, experiment_id)
    storage.register_trial(
        Trial(experiment=experiment_id, status="new", params=[{"name": "x", "type": "real", "value": 0.5}])
    )
    reserved, go = CONTEXT.Queue(), CONTEXT.Event()
    worker, results = start(_stale_worker, database_url, experiment_id, reserved, go)
    try:
        trial_id = reserved.get(timeout=60)
        os.kill(worker.pid, signal.SIGSTOP)
        deadline = time.monotonic() + LOST_AFTER + 30
        while not (lost := storage.fetch_lost_trials(experiment)):
            assert time.monotonic() < deadline, "the paused worker's trial never became lost"
            time.sleep(0.2)
        assert [trial.id for trial in lost] == [trial_id]
        storage.set_trial_status(lost[0], "interrupted", was="reserved")  # what Oríon does with lost trials
        mine = storage.reserve_trial(experiment)
        assert mine.id == trial_id
        before = storage.get_trial(mine).to_dict()

        os.kill(worker.pid, signal.SIGCONT)
        go.set()
        _, ok, outcomes = results.get(timeout=60)
        worker.join(timeout=30)
    finally:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGCONT)
            kill(worker)

    assert ok, outcomes
    assert outcomes == {
        "heartbeat": "0",
        "pacemaker heartbeat": "0",
        "status change": "FailedUpdate",
        "completion": "FailedUpdate",
    }
    assert storage.get_trial(mine).to_dict() == before
    # The legitimate holder's writes still work.
    assert storage.update_heartbeat(mine) == 1
    mine.status = "completed"
    mine.results = [Trial.Result(name="objective", type="objective", value=1.0)]
    assert storage.push_trial_results(mine) == 1
    assert storage.get_trial(mine).objective.value == 1.0
