"""Contract: Oríon 0.2.8's storage protocol, beside 0.2.7's (one class serves both).

Oríon 0.2.8 (its develop branch) cannot be installed here, so these call the new
signatures directly, as its `orion db dump|load` (orion/storage/backup.py) and its
`orion db upgrade` call them. Expected values are those of its legacy storage.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import time

import pytest
from orion.core.io.database import DuplicateKeyError
from orion.storage.base import LockAcquisitionTimeout

from orion_sql import SQL
from support.documents import T0, new_experiment

STATE = {"rng": [1, 2, 3], "suggested": 7}


def test_the_entry_point_is_found_through_importlib_metadata():
    """Oríon 0.2.8 finds storage plugins with importlib.metadata (0.2.7: pkg_resources)."""
    found = importlib.metadata.entry_points(group="BaseStorageProtocol")
    (entry_point,) = [point for point in found if point.name == "sql"]
    assert entry_point.load() is SQL


def test_create_experiment_writes_its_lock_as_given(storage):
    config = new_experiment(storage, name="plain")
    plain = storage.get_algorithm_lock_info(uid=config["_id"])
    assert (plain.state, plain.locked, plain.configuration) == (None, False, config["algorithm"])
    assert isinstance(plain.heartbeat, datetime.datetime)

    loaded = {"name": "loaded", "version": 1, "algorithm": {"tpe": {"seed": 2}}, "metadata": {"user": "u"}}
    assert storage.create_experiment(loaded, algo_locked=0, algo_state=STATE, algo_heartbeat=T0) == 1
    info = storage.get_algorithm_lock_info(uid=loaded["_id"])
    assert (info.state, info.configuration, info.locked, info.heartbeat) == (STATE, {"tpe": {"seed": 2}}, False, T0)
    with storage.acquire_algorithm_lock(uid=loaded["_id"], timeout=1) as locked:
        assert locked.state == STATE


def test_a_bad_lock_heartbeat_is_refused_before_the_experiment_is_written(storage):
    with pytest.raises(ValueError, match="heartbeat"):
        storage.create_experiment({"name": "never", "version": 1}, algo_heartbeat="yesterday")
    assert storage.fetch_experiments({"name": "never"}) == []


def test_write_algorithm_lock_creates_and_replaces_the_lock(storage):
    config = new_experiment(storage)
    uid = config["_id"]
    storage.delete_algorithm_lock(uid=uid)
    assert storage.write_algorithm_lock(uid, {"random": {"seed": 5}}) == 1
    created = storage.get_algorithm_lock_info(uid=uid)
    assert (created.configuration, created.state, created.locked) == ({"random": {"seed": 5}}, None, False)

    assert storage.write_algorithm_lock(uid, {"random": {"seed": 6}}, state=STATE, heartbeat=T0) == 1
    replaced = storage.get_algorithm_lock_info(uid=uid)
    assert (replaced.configuration, replaced.state, replaced.heartbeat) == ({"random": {"seed": 6}}, STATE, T0)

    # 0.2.7's initialize_algorithm_lock keeps refusing a second lock
    with pytest.raises(DuplicateKeyError):
        storage.initialize_algorithm_lock(uid, {"random": {}})
    with pytest.raises(ValueError, match="does not exist"):
        storage.write_algorithm_lock(uid + 1000, {"random": {}})


def test_a_lock_written_locked_has_no_live_holder(database_url, request):
    """SQLite: held until `lock_expiry` after its heartbeat, or `orion db release`;
    PostgreSQL: free, as a dead holder's lock is (only a live holder's row lock holds it)."""
    storage = SQL(uri=database_url, lock_expiry=1)
    config = new_experiment(storage)
    uid = config["_id"]
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    storage.write_algorithm_lock(uid, config["algorithm"], locked=1, state=STATE, heartbeat=now)
    if storage._db.dialect.has_row_locks:
        assert storage.get_algorithm_lock_info(uid=uid).locked is False
    else:
        assert storage.get_algorithm_lock_info(uid=uid).locked is True
        with pytest.raises(LockAcquisitionTimeout):
            with storage.acquire_algorithm_lock(uid=uid, timeout=0.1, retry_interval=0.01):
                pass  # pragma: no cover
        time.sleep(1.2)  # the written heartbeat expires
    with storage.acquire_algorithm_lock(uid=uid, timeout=5) as locked:
        assert locked.state == STATE
    storage.close()


def test_delete_benchmark(storage):
    for name in ("a", "b", "c"):
        storage.create_benchmark({"name": name, "targets": [{"assess": {}, "task": {}}]})
    assert storage.delete_benchmark({"name": "b"}) == 1
    assert [benchmark["name"] for benchmark in storage.fetch_benchmark({})] == ["a", "c"]
    assert storage.delete_benchmark({"name": {"$in": ["a", "c", "z"]}}) == 2
    assert storage.delete_benchmark({}) == 0
    assert storage.fetch_benchmark({}) == []
    with pytest.raises(ValueError, match="nosuch"):
        storage.delete_benchmark({"name": {"$nosuch": 1}})
