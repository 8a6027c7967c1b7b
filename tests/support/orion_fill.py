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

from support.orion_runs import run_experiment, run_trials

MLP_SPACE = {
    "lr": "loguniform(1e-4, 1)",
    "layers": "uniform(1, 4, discrete=True)",
    "optimizer": "choices(['adam', 'sgd'])",
}
SVM_SPACE = {"C": "loguniform(1e-2, 1e2)", "kernel": "choices(['rbf', 'linear', 'poly'])"}
MAX_BROKEN = 1000  # broken trials are part of what the analytics find


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


def fill(url: str) -> None:
    """Run the experiments described above on the database at `url`."""
    storage = {"type": "sql", "uri": url}
    common = {"max_trials": 40, "max_broken": MAX_BROKEN}
    with_dropout = {**MLP_SPACE, "dropout": "uniform(0, 0.5, default_value=0.0)"}

    v1 = run_experiment("mlp", storage, mlp, 6, user="alice", worker="node-a", space=MLP_SPACE,
                        algorithm={"random": {"seed": 1}}, **common)
    run_trials(v1, mlp, 5, worker="node-b")
    v2 = run_experiment("mlp", storage, mlp, 3, user="alice", worker="node-a", space=with_dropout,
                        algorithm={"random": {"seed": 2}}, branching={"enable": True}, **common)
    wide = run_experiment(
        "mlp", storage, mlp, 2, user="alice", worker="node-b",
        space={**with_dropout, "layers": "uniform(1, 8, discrete=True)"}, algorithm={"random": {"seed": 2}},
        branching={"enable": True, "branch_to": "mlp-wide"}, **common,
    )
    other = run_experiment("svm", storage, svm, 4, user="bob", worker="node-c", space=SVM_SPACE,
                           algorithm={"random": {"seed": 3}}, **common)
    other.release(other.suggest(), status="interrupted")

    for client in (v1, v2, wide, other):
        client.close()


def fill_one_experiment(url: str) -> None:
    """A smaller run: ``mlp`` v1 only, a few trials by one worker."""
    client = run_experiment("mlp", {"type": "sql", "uri": url}, mlp, 3, worker="node-a", user="alice",
                            space=MLP_SPACE, algorithm={"random": {"seed": 1}}, max_trials=40, max_broken=MAX_BROKEN)
    client.close()
