"""Hostile values on every write and filter, on every database: each either works
exactly or is a ValueError naming the field, raised before anything is written.
Never a driver's error, never a half-written row, and the same on every database."""
from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial
from orion.storage.base import LockAcquisitionTimeout, MissingArguments
from sqlalchemy import func, select

from orion_sql.models import Base
from support import IN_CI
from support.documents import assert_identical, new_experiment

EXAMPLES = settings(
    max_examples=int(os.environ.get("ORION_SQL_HOSTILE_EXAMPLES", "60")),
    deadline=None,
    derandomize=IN_CI,  # reproducible in CI; fresh examples on a developer's machine
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_unique = itertools.count()

# What a careless or hostile caller passes where a value goes.
hostile_text = st.one_of(
    st.text(alphabet=st.sampled_from(["\x00", "a", "é", "'", '"', ";", "%", "\\", "\U0001f600", " "]), max_size=8),
    st.just("x" * 5_000),  # beyond what an index entry holds
    st.just("1 OR 1=1"),
)
hostile_scalar = st.one_of(
    hostile_text,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, -(2**31) - 1, 2**63, float("nan"), float("inf"), -0.0, True, None]),
    st.binary(max_size=4),
    st.frozensets(st.integers(), max_size=2),
)
hostile_value = st.recursive(
    hostile_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(hostile_text, st.integers(), st.none()), inner, max_size=3),
    ),
    max_leaves=6,
)


def _rows(storage) -> dict[str, int]:
    with storage._db.transaction() as conn:
        return {table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in Base.metadata.sorted_tables}


def _works_or_names_it(storage, call, *, protocol_error=(DuplicateKeyError,)):
    """Run `call`: a ValueError (or the protocol's error for a duplicate) must name
    something and write nothing."""
    before = _rows(storage)
    try:
        return call()
    except ValueError as error:
        assert str(error), "a ValueError must say what was wrong"
        assert _rows(storage) == before, f"{error} was raised after something was written"
    except protocol_error as error:
        assert str(error)
        assert _rows(storage) == before


@pytest.fixture
def experiment(storage):
    return new_experiment(storage, name=f"target-{next(_unique)}")


@EXAMPLES
@given(
    value=hostile_value,
    where=st.sampled_from(["name", "version", "metadata.user", "space.x", "refers.parent_id", "_id"]),
)
def test_create_experiment(storage, value, where):
    config = {"name": f"e{next(_unique)}", "version": 1, "algorithm": {"random": {}}, "metadata": {"user": "u"}}
    target = config
    *parents, leaf = where.split(".")
    for parent in parents:
        target = target.setdefault(parent, {})
    target[leaf] = value
    if _works_or_names_it(storage, lambda: storage.create_experiment(config)):
        (stored,) = storage.fetch_experiments({"_id": config["_id"]})
        assert stored["name"] == config["name"]


@EXAMPLES
@given(value=hostile_value, key=st.sampled_from(["metadata.user", "space", "max_trials", "name"]))
def test_update_experiment(storage, experiment, value, key):
    _works_or_names_it(storage, lambda: storage.update_experiment(uid=experiment["_id"], **{key: value}))


@EXAMPLES
@given(value=hostile_value, field=st.sampled_from(["value", "name", "type"]))
def test_register_trial_params(storage, experiment, value, field):
    param = {"name": "x", "type": "categorical", "value": f"v{next(_unique)}", field: value}
    try:
        trial = Trial(experiment=experiment["_id"], status="new", params=[param])
        trial.to_dict()
    except Exception:
        return  # Oríon's own Trial refused it
    registered = _works_or_names_it(storage, lambda: storage.register_trial(trial))
    if registered is not None:
        (stored,) = storage.fetch_trials(uid=experiment["_id"], where={"_id": registered.id_override})
        assert_identical(stored.to_dict()["params"], trial.to_dict()["params"])


@EXAMPLES
@given(
    value=hostile_value,
    field=st.sampled_from(["worker", "exp_working_dir", "heartbeat", "submit_time", "status", "parent", "id", "_id"]),
)
@example(value=None, field="id")  # the hash column is NOT NULL: once a driver's error, drawn at random
def test_update_trials(storage, experiment, value, field):
    trial = storage.register_trial(Trial(experiment=experiment["_id"], status="new",
                                         params=[{"name": "x", "type": "real", "value": next(_unique)}]))
    _works_or_names_it(storage, lambda: storage.update_trial(trial, **{field: value}))


@EXAMPLES
@given(value=hostile_value)
def test_push_trial_results(storage, experiment, value):
    trial = storage.register_trial(Trial(experiment=experiment["_id"], status="reserved",
                                         params=[{"name": "x", "type": "real", "value": next(_unique)}]))
    trial.status = "completed"
    trial.results = [Trial.Result(name="loss", type="objective", value=1.0),
                     Trial.Result(name="extra", type="statistic", value=value)]
    _works_or_names_it(storage, lambda: storage.push_trial_results(trial))


@EXAMPLES
@given(value=hostile_value, where=st.sampled_from(["name", "targets"]))
def test_create_benchmark(storage, value, where):
    config = {"name": f"b{next(_unique)}", "targets": []}
    config[where] = value
    _works_or_names_it(storage, lambda: storage.create_benchmark(config))


@EXAMPLES
@given(value=hostile_value, configuration=hostile_value)
def test_algorithm_lock_writes(storage, experiment, value, configuration):
    _works_or_names_it(storage, lambda: storage.write_algorithm_lock(experiment["_id"], {"random": configuration}))
    _works_or_names_it(storage, lambda: storage.write_algorithm_lock(value, {"random": {}}))


@EXAMPLES
@given(
    value=hostile_value,
    key=st.one_of(st.sampled_from(["name", "_id", "version", "metadata.user", "space.x"]), hostile_text),
    operator=st.sampled_from([None, "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte"]),
)
def test_filters(storage, experiment, value, key, operator):
    query = {key: value if operator is None else {operator: value}}
    trial_query = {("status" if key == "name" else key): query[key]}
    for call in (
        lambda: storage.fetch_experiments(query),
        lambda: storage.fetch_benchmark(query),
        lambda: storage.fetch_trials(uid=experiment["_id"], where=trial_query),
        lambda: storage.update_experiment(uid=experiment["_id"], where=query, max_trials=3),
        lambda: storage.delete_trials(uid=experiment["_id"], where=trial_query),
    ):
        _works_or_names_it(storage, call)


@EXAMPLES
@given(uid=hostile_value)
def test_ids(storage, experiment, uid):
    for call in (
        lambda: storage.fetch_trials(uid=uid),
        lambda: storage.delete_trials(uid=uid),
        lambda: storage.delete_experiment(uid=uid),
        lambda: storage.get_algorithm_lock_info(uid=uid),
        lambda: storage.release_algorithm_lock(uid=uid),
        lambda: storage.get_trial(uid=uid, experiment_uid=experiment["_id"]),
        lambda: storage.get_trial(uid="0" * 32, experiment_uid=uid),
    ):
        # uid=None (drawn now and then) is no id at all: Oríon's MissingArguments, as legacy.
        _works_or_names_it(storage, call, protocol_error=(DuplicateKeyError, MissingArguments))
    names_the_lock = type(uid) is int and uid == experiment["_id"]  # True == 1, but True is no id
    refusal = MissingArguments if uid is None else LockAcquisitionTimeout
    with _nothing() if names_the_lock else pytest.raises(refusal):
        with storage.acquire_algorithm_lock(uid=uid, timeout=0.1, retry_interval=0.01):
            pass


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("where", ["name", "metadata.user"])
def test_names_hold_760_characters_and_no_more(storage, where):
    """Indexed text (experiment and benchmark names, users) holds 760 characters on
    every database: what MariaDB's InnoDB keys hold in utf8mb4 (4 bytes a character)."""
    def config(length: int) -> dict:
        text = "x" * length
        name, user = (text, "u") if where == "name" else (f"n{next(_unique)}", text)
        return {"name": name, "version": 1, "algorithm": {"random": {}}, "metadata": {"user": user}}

    longest = config(760)
    storage.create_experiment(longest)
    assert storage.fetch_experiments({"_id": longest["_id"]})[0]["name"] == longest["name"]
    before = _rows(storage)
    with pytest.raises(ValueError, match=f"{where} is 761 characters long"):
        storage.create_experiment(config(761))
    with pytest.raises(ValueError, match="name is 761 characters long"):
        storage.create_benchmark({"name": "x" * 761, "targets": []})
    assert _rows(storage) == before
