"""Contract of Oríon's storage protocol: what every method needs.

Every test runs on a SQLite file and on PostgreSQL (the `storage` fixture), against
real experiment ids: Oríon's OrionState helper uses names as ids, which only works
on a store without foreign keys.
"""
from __future__ import annotations

import inspect
import pathlib

import pytest
from orion.storage.base import BaseStorageProtocol, MissingArguments

from orion_sql import SQL
from support.documents import new_experiment

# --- the protocol as a whole --------------------------------------------------------

PROTOCOL_METHODS = sorted(
    name
    for name, member in vars(BaseStorageProtocol).items()
    if inspect.isfunction(member) and not name.startswith("_")
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
