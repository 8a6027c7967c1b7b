"""Contract: the algorithm lock (initialize, acquire, release, info, delete).

Expected values are those of Oríon's legacy storage (orion/storage/legacy.py) unless a
test says it checks orion_sql's own documented behaviour. Mutual exclusion is checked
against another storage object and against a real forked process.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time

import pytest
import sqlalchemy as sa
from orion.core.io.database import DuplicateKeyError
from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState

from orion_sql import SQL
from orion_sql.models import algo_lock_waiters
from support.documents import experiment_of, new_experiment, same_database

STATE = {"rng": [3, [1, 2, 3], None], "suggested": 4, "best": 0.25}


def test_initialize_and_delete_algorithm_lock(storage):
    config = new_experiment(storage, algorithm={"tpe": {"seed": 3, "gamma": 0.25}})
    uid = config["_id"]
    # create_experiment initialised the lock from config["algorithm"]
    info = storage.get_algorithm_lock_info(uid=uid)
    assert isinstance(info, LockedAlgorithmState)
    assert (info.configuration, info.state, info.locked) == ({"tpe": {"seed": 3, "gamma": 0.25}}, None, False)
    assert storage.get_algorithm_lock_info(experiment_of(storage, config)).configuration == config["algorithm"]

    # orion_sql: one lock per experiment (legacy's `algo` collection has no unique index)
    with pytest.raises(DuplicateKeyError):
        storage.initialize_algorithm_lock(uid, {"random": {}})

    assert storage.delete_algorithm_lock(uid=uid) == 1
    assert storage.delete_algorithm_lock(experiment_of(storage, config)) == 0
    assert storage.get_algorithm_lock_info(uid=uid) is None
    with pytest.raises(LockAcquisitionTimeout):
        with storage.acquire_algorithm_lock(uid=uid, timeout=0.1, retry_interval=0.01):
            pass  # pragma: no cover

    assert storage.initialize_algorithm_lock(uid, {"gridsearch": {"n_values": 5}}) == 1
    info = storage.get_algorithm_lock_info(uid=uid)
    assert (info.configuration, info.state, info.locked) == ({"gridsearch": {"n_values": 5}}, None, False)
    # orion_sql: the experiment must exist (legacy accepts any id)
    with pytest.raises(ValueError, match="does not exist"):
        storage.initialize_algorithm_lock(uid + 1000, {"random": {}})


def test_acquire_saves_the_state_on_success_only(storage):
    config = new_experiment(storage)
    uid = config["_id"]
    with storage.acquire_algorithm_lock(uid=uid, timeout=5) as locked:
        assert isinstance(locked, LockedAlgorithmState)
        assert (locked.state, locked.configuration, locked.locked) == (None, config["algorithm"], True)
        locked.set_state(STATE)
    info = storage.get_algorithm_lock_info(uid=uid)
    assert (info.state, info.locked) == (STATE, False)

    with pytest.raises(RuntimeError, match="algorithm crashed"):
        with storage.acquire_algorithm_lock(experiment_of(storage, config), timeout=0) as locked:
            assert locked.state == STATE
            locked.set_state({"half": "written"})
            raise RuntimeError("algorithm crashed")
    info = storage.get_algorithm_lock_info(uid=uid)
    assert (info.state, info.locked) == (STATE, False)
    with storage.acquire_algorithm_lock(uid=uid, timeout=0) as locked:  # free again at once
        assert locked.state == STATE


def test_lock_held_is_seen_and_excludes_another_storage_object(storage):
    config = new_experiment(storage)
    other_config = new_experiment(storage, "other")
    uid = config["_id"]
    other = same_database(storage)
    with storage.acquire_algorithm_lock(uid=uid, timeout=5) as locked:
        locked.set_state(STATE)
        assert other.get_algorithm_lock_info(uid=uid).locked is True
        assert storage.get_algorithm_lock_info(uid=uid).locked is True
        assert other.get_algorithm_lock_info(uid=other_config["_id"]).locked is False
        started = time.monotonic()
        with pytest.raises(LockAcquisitionTimeout):
            with other.acquire_algorithm_lock(uid=uid, timeout=0.3, retry_interval=0.05):
                pass  # pragma: no cover
        assert 0.25 <= time.monotonic() - started < 5
        with other.acquire_algorithm_lock(uid=other_config["_id"], timeout=1):
            pass  # another experiment's lock is independent
    for view in (storage, other):
        assert view.get_algorithm_lock_info(uid=uid).locked is False
    with other.acquire_algorithm_lock(uid=uid, timeout=1) as locked:
        assert locked.state == STATE


def _hold_lock(storage, uid, held, finish):
    """Child process: take the lock, say so, keep it until told, save a state."""
    with storage.acquire_algorithm_lock(uid=uid, timeout=10) as locked:
        locked.set_state({"saved_by": "child"})
        held.set()
        if not finish.wait(20):
            raise TimeoutError("parent never said finish")


@contextlib.contextmanager
def _child_holding_the_lock(storage, uid):
    """A forked process holding the lock until the block ends (or `finish` is set),
    when it saves ``{"saved_by": "child"}``; yields `finish`."""
    context = multiprocessing.get_context("fork")
    held, finish = context.Event(), context.Event()
    child = context.Process(target=_hold_lock, args=(storage, uid, held, finish))
    child.start()
    try:
        assert held.wait(20), "child never took the lock"
        yield finish
    finally:
        finish.set()
        child.join(20)
    assert child.exitcode == 0


def test_lock_held_by_another_process(storage):
    uid = new_experiment(storage)["_id"]
    with _child_holding_the_lock(storage, uid):
        assert storage.get_algorithm_lock_info(uid=uid).locked is True
        with pytest.raises(LockAcquisitionTimeout):
            with storage.acquire_algorithm_lock(uid=uid, timeout=0.2, retry_interval=0.05):
                pass  # pragma: no cover
    info = storage.get_algorithm_lock_info(uid=uid)
    assert (info.state, info.locked) == ({"saved_by": "child"}, False)
    # a waiter gets the lock as soon as the holder lets go
    with storage.acquire_algorithm_lock(uid=uid, timeout=5) as locked:
        assert locked.state == {"saved_by": "child"}


def test_release_algorithm_lock(storage):
    """orion_sql returns 1 when the lock is free afterwards, 0 otherwise (legacy: None).

    On a lock a live worker holds (`orion db release` by mistake), SQLite frees the flag
    as legacy does; on PostgreSQL the lock is the holder's row lock, which only the
    holder's commit or death frees, so release reports 0 and the holder keeps it.
    """
    config = new_experiment(storage)
    uid = config["_id"]
    assert storage.release_algorithm_lock(uid=uid) == 1
    assert storage.get_algorithm_lock_info(uid=uid).state is None
    assert storage.release_algorithm_lock(experiment_of(storage, config), new_state=STATE) == 1
    assert storage.get_algorithm_lock_info(uid=uid).state == STATE
    assert storage.release_algorithm_lock(uid=uid) == 1  # without new_state the state is kept
    assert storage.get_algorithm_lock_info(uid=uid).state == STATE
    assert storage.release_algorithm_lock(uid=uid + 1000) == 0  # no such lock

    other = same_database(storage)
    with storage.acquire_algorithm_lock(uid=uid, timeout=5):
        released = other.release_algorithm_lock(uid=uid)
        still_locked = other.get_algorithm_lock_info(uid=uid).locked
    if storage.database.dialect.has_row_locks:
        assert (released, still_locked) == (0, True)
    else:
        assert (released, still_locked) == (1, False)
    assert other.get_algorithm_lock_info(uid=uid).locked is False


def test_waiters_in_transaction_pooling_mode_queue_and_follow_the_holder(storage):
    """orion_sql's own: with ``pool_mode="transaction"`` (as behind PgBouncer) a waiter
    never blocks on the lock row: it queues, polls NOWAIT and takes the lock once freed;
    with no timeout it tries once and leaves no ticket behind."""
    uid = new_experiment(storage)["_id"]
    pooled = SQL(uri=storage.database.url.render_as_string(hide_password=False), pool_mode="transaction")
    tickets_written = []
    sa.event.listen(
        pooled.database.engine,
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_: tickets_written.append("algo_lock_waiters" in statement),
    )
    try:
        with _child_holding_the_lock(storage, uid) as finish:
            started = time.monotonic()
            with pytest.raises(LockAcquisitionTimeout):
                with pooled.acquire_algorithm_lock(uid=uid, timeout=0):
                    pass  # pragma: no cover
            assert time.monotonic() - started < 5
            if storage.database.dialect.has_row_locks:
                assert not any(tickets_written), "a waiter with no timeout joined the queue"
            threading.Timer(0.5, finish.set).start()
            with pooled.acquire_algorithm_lock(uid=uid, timeout=30, retry_interval=0.05) as locked:
                assert locked.state == {"saved_by": "child"}
                locked.set_state({"saved_by": "the pooled waiter"})
    finally:
        pooled.close()
    info = storage.get_algorithm_lock_info(uid=uid)
    assert (info.state, info.locked) == ({"saved_by": "the pooled waiter"}, False)
    with storage.database.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(algo_lock_waiters)).scalar_one() == 0
