"""Contract of Oríon's storage protocol: what every method needs, and the helpers the
contract modules share (test_contract_experiments, _trials, _locks import them).

Every test runs on a SQLite file and on PostgreSQL (the `storage` fixture), against
real experiment ids: Oríon's OrionState helper uses names as ids, which only works
on a store without foreign keys.
"""
from __future__ import annotations

import datetime
import inspect
import math
import pathlib

import pytest
from orion.algo.space import Space
from orion.core.worker.experiment import Experiment
from orion.core.worker.trial import Trial
from orion.storage.base import BaseStorageProtocol, MissingArguments

from orion_sql import SQL

# A naive UTC timestamp with microseconds, as Oríon writes them.
T0 = datetime.datetime(2024, 1, 31, 12, 0, 0, 123456)


def seconds(n: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=n)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


# --- shared helpers ------------------------------------------------------------------


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
    return SQL(uri=storage._db.url.render_as_string(hide_password=False))


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
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_identical(left, right, f"{path}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{path}: {actual!r} is not NaN"
    elif isinstance(expected, float):
        # repr tells 0.0 from -0.0 and shows every digit
        assert repr(actual) == repr(expected), f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


# --- the protocol as a whole --------------------------------------------------------

PROTOCOL_METHODS = sorted(
    name for name, member in vars(BaseStorageProtocol).items() if inspect.isfunction(member) and not name.startswith("_")
)


def test_protocol_has_the_28_methods_of_oríon_0_2_7():
    assert len(PROTOCOL_METHODS) == 28


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_sql_implements_every_protocol_method(name):
    assert getattr(SQL, name) is not getattr(BaseStorageProtocol, name)


def test_the_contract_modules_call_every_protocol_method():
    here = pathlib.Path(__file__).parent
    sources = "".join(path.read_text(encoding="utf-8") for path in here.glob("test_contract*.py"))
    assert [name for name in PROTOCOL_METHODS if f".{name}(" not in sources] == []


# Methods that name an experiment by object or uid: MissingArguments when given neither.
BY_EXPERIMENT = [
    ("delete_experiment", {}),
    ("update_experiment", {"max_trials": 3}),
    ("delete_trials", {}),
    ("fetch_trials", {}),
    ("update_trials", {"status": "new"}),
    ("release_algorithm_lock", {}),
    ("get_algorithm_lock_info", {}),
    ("delete_algorithm_lock", {}),
]
# Methods that name a trial by object or (uid, experiment_uid).
BY_TRIAL = [("get_trial", {}), ("update_trial", {"status": "new"})]


def test_missing_arguments_when_neither_object_nor_uid(storage):
    config = new_experiment(storage)
    for name, kwargs in BY_EXPERIMENT + BY_TRIAL:
        with pytest.raises(MissingArguments):
            getattr(storage, name)(**kwargs)
    with pytest.raises(MissingArguments):
        storage.get_trial(uid="0" * 32)  # a trial uid needs its experiment
    with pytest.raises(MissingArguments):
        with storage.acquire_algorithm_lock(timeout=0.1):
            pass  # pragma: no cover
    # nothing was touched
    assert storage.fetch_experiments({}) == [config]
    assert storage.get_algorithm_lock_info(uid=config["_id"]).locked is False
