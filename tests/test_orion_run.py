"""An Oríon run through the public API on the sql storage: the end-to-end check.

`orion.client.create_experiment(..., storage={"type": "sql", "uri": ...}).workon(fn)`
runs Oríon's own producer, algorithm lock, reservation and result pushing.
"""
from __future__ import annotations

import math

import pytest
from orion.client import create_experiment

SPACE = {
    "x": "uniform(-5, 5)",
    "y": "loguniform(1e-3, 10)",
    "opt": "choices(['adam', 'sgd'])",
    "n": "uniform(1, 100, discrete=True)",
}


def objective(x, y, opt, n):
    """Depends on every parameter, so a result stored against the wrong trial shows."""
    value = (x - 1) ** 2 + math.log(y) + (0.5 if opt == "sgd" else 0.0) + n / 1000
    return [{"name": "objective", "type": "objective", "value": value}]


@pytest.mark.slow
def test_workon_completes_20_trials(database_url):
    experiment = create_experiment(
        "orion-run",
        space=SPACE,
        algorithm={"random": {"seed": 7}},
        storage={"type": "sql", "uri": database_url},
    )
    assert experiment.workon(objective, max_trials=20) == 20

    trials = experiment.fetch_trials()
    assert len(trials) == 20
    assert len({trial.id for trial in trials}) == 20
    for trial in trials:
        assert trial.status == "completed"
        assert trial.params.keys() == SPACE.keys()
        (result,) = trial.results
        assert result.to_dict() == objective(**trial.params)[0]
        assert trial.objective.value == objective(**trial.params)[0]["value"]
        assert trial.start_time <= trial.end_time
    submit_times = [trial.submit_time for trial in trials]
    assert submit_times == sorted(submit_times)
    assert experiment.stats.trials_completed == 20
    assert experiment.is_done

    # what another client reading the same database sees
    reader = create_experiment("orion-run", storage={"type": "sql", "uri": database_url})
    assert reader.id == experiment.id
    assert sorted(trial.id for trial in reader.fetch_trials()) == sorted(trial.id for trial in trials)
    assert reader.storage.get_algorithm_lock_info(uid=experiment.id).state is not None
