"""Fill a database through a real Oríon run (its Python API on the `sql` storage).

What it holds, so that SQL over it has something to find:

- ``mlp`` v1 (user alice): a real, an integer and a categorical dimension; run by
  two workers (``node-a``, ``node-b``); trials whose objective raises are broken.
- ``mlp`` v2: its EVC child, adding a dimension and changing the algorithm's seed.
- ``mlp-wide`` v1: an EVC child of ``mlp`` v2 under another name, with a wider prior.
- ``svm`` v1 (user bob): completed and broken trials, and one interrupted trial
  whose worker is not recorded.

Oríon 0.2.7 never writes a trial's ``worker``; the runs record it the way a user
would, from ``workon``'s ``prepare_trial`` hook.
"""
from __future__ import annotations

import math

import pytest
from orion.client import build_experiment
from orion.client.runner import prepare_trial_working_dir
from orion.executor.single_backend import SingleExecutor

MLP_SPACE = {
    "lr": "loguniform(1e-4, 1)",
    "layers": "uniform(1, 4, discrete=True)",
    "optimizer": "choices(['adam', 'sgd'])",
}
SVM_SPACE = {"C": "loguniform(1e-2, 1e2)", "kernel": "choices(['rbf', 'linear', 'poly'])"}


class Diverged(RuntimeError):
    """The objective's way of breaking a trial."""


def mlp(lr, layers, optimizer, dropout=0.0):
    if lr > 0.3 and optimizer == "sgd":
        raise Diverged(f"lr={lr} diverged")
    loss = (math.log10(lr) + 2.5) ** 2 + 0.1 * (layers - 2) ** 2 + (0.3 if optimizer == "sgd" else 0.0)
    return [
        {"name": "loss", "type": "objective", "value": loss + dropout},
        {"name": "accuracy", "type": "statistic", "value": 1.0 / (1.0 + loss)},
    ]


def svm(C, kernel):
    if kernel == "poly" and C > 1:
        raise Diverged("the poly kernel did not converge")
    return [{"name": "error", "type": "objective", "value": abs(math.log10(C) - 1) / 10 + (kernel == "rbf") * 0.05}]


def recording_worker(name):
    """A `prepare_trial` hook that records which worker ran the trial."""

    def prepare(client, trial):
        prepare_trial_working_dir(client, trial)
        trial.worker = name  # what push_trial_results writes back
        client.storage.update_trial(trial, worker=name)  # what a broken trial keeps

    return prepare


def _experiment(user, name, **config):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOGNAME", user)  # Oríon's metadata.user is getpass.getuser()
        return build_experiment(name, executor=SingleExecutor(), max_broken=1000, **config)


def _work(client, fct, worker, trials):
    client.workon(fct, max_trials_per_worker=trials, max_broken=1000, prepare_trial=recording_worker(worker))


def fill(url: str) -> None:
    """Run the experiments described above on the database at `url`."""
    storage = {"type": "sql", "uri": url}

    v1 = _experiment("alice", "mlp", space=MLP_SPACE, algorithm={"random": {"seed": 1}}, max_trials=40, storage=storage)
    _work(v1, mlp, "node-a", 6)
    _work(v1, mlp, "node-b", 5)

    v2 = _experiment(
        "alice", "mlp", space={**MLP_SPACE, "dropout": "uniform(0, 0.5, default_value=0.0)"},
        algorithm={"random": {"seed": 2}}, max_trials=40, storage=storage, branching={"enable": True},
    )
    _work(v2, mlp, "node-a", 3)

    wide = _experiment(
        "alice", "mlp", space={**MLP_SPACE, "dropout": "uniform(0, 0.5, default_value=0.0)",
                               "layers": "uniform(1, 8, discrete=True)"},
        algorithm={"random": {"seed": 2}}, max_trials=40, storage=storage,
        branching={"enable": True, "branch_to": "mlp-wide"},
    )
    _work(wide, mlp, "node-b", 2)

    other = _experiment("bob", "svm", space=SVM_SPACE, algorithm={"random": {"seed": 3}}, max_trials=40, storage=storage)
    _work(other, svm, "node-c", 4)
    other.release(other.suggest(), status="interrupted")

    for client in (v1, v2, wide, other):
        client.close()


def fill_one_experiment(url: str) -> None:
    """A smaller run: ``mlp`` v1 only, a few trials by one worker."""
    client = _experiment("alice", "mlp", space=MLP_SPACE, algorithm={"random": {"seed": 1}},
                         max_trials=40, storage={"type": "sql", "uri": url})
    _work(client, mlp, "node-a", 3)
    client.close()
