"""Oríon's benchmark client on the sql storage: the benchmark is stored, found again, and its experiments run."""
from __future__ import annotations

import pytest
from orion.benchmark.assessment import AverageResult
from orion.benchmark.benchmark_client import get_or_create_benchmark
from orion.benchmark.task import RosenBrock
from orion.executor.single_backend import SingleExecutor

pytestmark = pytest.mark.functional

MAX_TRIALS = 3
REPETITIONS = 2


def test_get_or_create_benchmark_stores_finds_and_runs(sql_storage):
    targets = [{"assess": [AverageResult(REPETITIONS)], "task": [RosenBrock(max_trials=MAX_TRIALS, dim=2)]}]
    created = get_or_create_benchmark(
        sql_storage, "bench", algorithms=["random"], targets=targets, executor=SingleExecutor()
    )

    # Oríon 0.2.7 never gives a Benchmark its id (created.id stays None, on PickledDB too).
    (document,) = sql_storage.fetch_benchmark({"name": "bench"})
    assert isinstance(document.pop("_id"), int)
    assert document == created.configuration
    assert created.configuration["targets"] == [
        {
            "assess": {"AverageResult": {"repetitions": REPETITIONS}},
            "task": {"RosenBrock": {"max_trials": MAX_TRIALS, "dim": 2}},
        }
    ]

    created.process()
    # Found again from the storage alone (no algorithms, no targets given): the same benchmark.
    found = get_or_create_benchmark(sql_storage, "bench", executor=SingleExecutor())
    assert found.configuration == created.configuration
    assert len(sql_storage.fetch_benchmark({})) == 1

    experiments = sql_storage.fetch_experiments({})
    assert sorted(experiment["name"] for experiment in experiments) == [
        f"bench_AverageResult_RosenBrock_{repetition}_0" for repetition in range(REPETITIONS)
    ]
    for experiment in experiments:
        trials = sql_storage.fetch_trials(uid=experiment["_id"])
        assert [trial.status for trial in trials] == ["completed"] * MAX_TRIALS
    assert found.status() == [
        {
            "Algorithms": "random",
            "Assessments": "AverageResult",
            "Tasks": "RosenBrock",
            "Total Experiments": REPETITIONS,
            "Completed Experiments": REPETITIONS,
            "Submitted Trials": REPETITIONS * MAX_TRIALS,
        }
    ]
    created.close()
    found.close()
