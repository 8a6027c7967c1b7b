"""Real Oríon runs: Oríon's own client and workon loop on a storage, for the tests that
need what Oríon itself writes (analytics, import/export, frozen databases)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from orion.client import build_experiment
from orion.client.runner import prepare_trial_working_dir
from orion.executor.single_backend import SingleExecutor


def run_experiment(
    name: str, storage: Any, objective: Callable, trials: int, *, user: str | None = None,
    worker: str | None = None, **config: Any,
):
    """Build (or resume) experiment `name` on `storage` (a storage configuration or
    object) with Oríon's `build_experiment(**config)`, then run `trials` trials of
    `objective` (see :func:`run_trials`). Returns the client, for more runs or close().

    `user` is recorded as the experiment's ``metadata.user``. Trials run in this
    process (Oríon's SingleExecutor), so a test sees every failure directly.
    """
    with pytest.MonkeyPatch.context() as patch:
        if user:
            patch.setenv("LOGNAME", user)  # Oríon's metadata.user is getpass.getuser()
        client = build_experiment(name, storage=storage, executor=SingleExecutor(), **config)
    run_trials(client, objective, trials, worker)
    return client


def run_trials(client, objective: Callable, trials: int, worker: str | None = None) -> int:
    """`trials` more trials by Oríon's own workon loop (broken ones count, up to the
    experiment's max_broken). With `worker`, each trial records it as its worker,
    as a user would from ``prepare_trial`` (Oríon 0.2.7 never writes it)."""
    return client.workon(
        objective, max_trials_per_worker=trials, max_broken=client.max_broken,
        prepare_trial=prepare_trial_working_dir if worker is None else recording_worker(worker),
    )


def recording_worker(name: str):
    """A `prepare_trial` hook that records which worker ran the trial."""

    def prepare(client, trial):
        prepare_trial_working_dir(client, trial)
        trial.worker = name  # what push_trial_results writes back
        client.storage.update_trial(trial, worker=name)  # what a broken trial keeps

    return prepare
