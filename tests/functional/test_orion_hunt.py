"""`orion hunt` and the read-only commands on the sql storage, configured by file and by environment."""
from __future__ import annotations

import base64
import json

import numpy
import pytest

pytestmark = [pytest.mark.functional, pytest.mark.slow]

X_PRIOR = "-x~uniform(-2, 2)"


def objective(trial) -> float:
    """What the black box reports for the trial's parameters."""
    return (trial.params["/x"] - 1) ** 2 + trial.params.get("/y", 0.0) ** 2


def experiment_of(storage, name: str, version: int = 1) -> dict:
    (document,) = storage.fetch_experiments({"name": name, "version": version})
    return document


def assert_reached_max_trials(storage, name: str, max_trials: int) -> list:
    """At least max_trials completed trials with the black box's objective, no duplicate.

    With several workers Oríon 0.2.7 overshoots max_trials by a trial or two (a
    worker suggests before it sees the others' results): so does PickledDB. A
    trial left over is one never reserved (`new`), none stays reserved or broken.
    """
    trials = storage.fetch_trials(uid=experiment_of(storage, name)["_id"])
    completed = [trial for trial in trials if trial.status == "completed"]
    assert len(completed) >= max_trials
    assert {trial.status for trial in trials} <= {"completed", "new"}
    assert len({trial.id for trial in trials}) == len(trials)
    assert len({trial.params["/x"] for trial in trials}) == len(trials)
    for trial in completed:
        assert trial.objective.value == objective(trial)
    return completed


def plotted_values(values) -> list[float]:
    """A plotly trace's y values, whether plain or base64-packed (plotly >= 6)."""
    if isinstance(values, dict):
        return numpy.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def test_hunt_from_config_file_with_two_workers_then_list_info_plot_insert(orion_cli, sql_storage, tmp_path):
    """The config file's storage section reaches every command that takes `-c`."""
    orion_cli.run(
        "hunt", "-n", "from-file", "--exp-max-trials", "8", "--n-workers", "2", *orion_cli.script(X_PRIOR),
        via="file",
    )
    trials = assert_reached_max_trials(sql_storage, "from-file", 8)
    experiment_id = experiment_of(sql_storage, "from-file")["_id"]
    hunted_trials = sql_storage.fetch_trials(uid=experiment_id)
    best = min(trials, key=objective)

    plot = tmp_path / "regret.json"
    listing, info, _, _ = orion_cli.run_together(
        ["list"],
        ["info", "-n", "from-file"],
        ["plot", "regret", "-n", "from-file", "-o", str(plot)],
        ["insert", "-n", "from-file", "script", "-x=0.5"],
        via="file",
    )

    assert listing.stdout.split() == ["from-file-v1"]

    metadata = experiment_of(sql_storage, "from-file")["metadata"]
    assert f"name: from-file\nversion: 1\nuser: {metadata['user']}\n" in info.stdout
    assert f"datetime: {metadata['datetime']}\n" in info.stdout
    assert "max trials: 8\n" in info.stdout
    assert "/x: uniform(-2, 2)\n" in info.stdout
    assert f"trials completed: {len(trials)}\n" in info.stdout
    assert f"best trial:\n  id: {best.id}\n  evaluation: {best.objective.value}\n" in info.stdout

    # PNG needs kaleido's Chrome, which this machine lacks: Oríon's JSON output instead.
    regret = {trace["name"]: trace for trace in json.loads(plot.read_text())["data"]}
    plotted_ids = [point[0] for point in regret["trials"]["customdata"]]
    plotted = dict(zip(plotted_ids, plotted_values(regret["trials"]["y"]), strict=True))
    assert plotted == {trial.id: trial.objective.value for trial in trials}
    assert list(plotted_values(regret["best-to-date"]["y"]))[-1] == best.objective.value

    hunted = {trial.id for trial in hunted_trials}
    inserted = [trial for trial in sql_storage.fetch_trials(uid=experiment_id) if trial.id not in hunted]
    assert [(trial.status, trial.params) for trial in inserted] == [("new", {"/x": 0.5})]


def test_two_hunts_at_once_from_the_environment(orion_cli, sql_storage):
    """Two `orion hunt` processes of two workers each share one experiment: no trial twice.

    They share a --working-dir: without one, Oríon 0.2.7 gives each process a
    temporary one, and a trial keeps the directory of the process that suggested
    it, which deletes it on exit under the feet of the other (any storage).
    """
    command = [
        "hunt", "-n", "from-env", "--exp-max-trials", "10", "--n-workers", "2",
        "--working-dir", str(orion_cli.cwd / "trials"), *orion_cli.script(X_PRIOR),
    ]
    first, second = orion_cli.run_together(command, command)
    assert_reached_max_trials(sql_storage, "from-env", 10)
    for hunt in (first, second):
        assert "Search finished successfully" in hunt.stdout
    assert len(sql_storage.fetch_experiments({"name": "from-env"})) == 1
