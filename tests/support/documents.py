"""Oríon documents and objects for the contract tests: experiments, trials, comparisons."""
from __future__ import annotations

import datetime
import math

from orion.algo.space import Space
from orion.core.worker.experiment import Experiment
from orion.core.worker.trial import Trial

from orion_sql import SQL

# A naive UTC timestamp with microseconds, as Oríon writes them.
T0 = datetime.datetime(2024, 1, 31, 12, 0, 0, 123456)


def seconds(n: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=n)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def new_experiment(storage, name="exp", version=1, **fields) -> dict:
    """Create an experiment document (as Oríon builds them) and return it, `_id` set."""
    config = {
        "name": name,
        "version": version,
        "space": {"x": "uniform(0, 10)"},
        "algorithm": {"random": {"seed": 1}},
        "metadata": {"user": "tester", "datetime": T0, "orion_version": "0.2.7"},
        "refers": {"parent_id": None, "root_id": None, "adapter": []},
        "max_trials": 10,
        **fields,
    }
    storage.create_experiment(config)
    return config


def same_database(storage) -> SQL:
    """Another storage object on the same database: another worker's view."""
    return SQL(uri=storage.database.url.render_as_string(hide_password=False))


def experiment_of(storage, config: dict) -> Experiment:
    """The Oríon Experiment object for a stored document (what Oríon passes around)."""
    return Experiment(config["name"], Space(), version=config["version"], _id=config["_id"], storage=storage)


def make_trial(experiment_id, x, status="new", submit_time=T0, **fields) -> Trial:
    """A trial of one real parameter `x`, as Oríon's producer registers it."""
    return Trial(
        experiment=experiment_id,
        status=status,
        params=[{"name": "x", "type": "real", "value": x}],
        submit_time=submit_time,
        **fields,
    )


def assert_identical(actual, expected, path="value"):
    """Equal values of identical types all the way down; NaN matches NaN.

    Plain == would accept 1 for 1.0, True for 1, and never NaN for NaN.
    """
    assert type(actual) is type(expected), f"{path}: {actual!r} is a {type(actual).__name__}, expected {expected!r}"
    if isinstance(expected, dict):
        # the order of a dict's keys is not part of a document; a list's order is
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for index, (left, right) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(left, right, f"{path}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{path}: {actual!r} is not NaN"
    elif isinstance(expected, float):
        # repr tells 0.0 from -0.0 and shows every digit
        assert repr(actual) == repr(expected), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
