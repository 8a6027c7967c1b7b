"""The algorithm-lock half of Oríon's storage protocol, both generations.

Oríon 0.2.7 creates a lock with `initialize_algorithm_lock`, Oríon 0.2.8 writes one
with `write_algorithm_lock`; holding, releasing and reading it go through
:mod:`orion_sql.algo_lock`. Kept apart from :mod:`orion_sql.storage` so that the
trial and experiment methods there stay readable.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orion.storage.base import LockAcquisitionTimeout, get_uid
from sqlalchemy import Connection, delete, insert

from orion_sql import arguments, mapping, rows
from orion_sql.algo_lock import AlgorithmLock, RowLock
from orion_sql.database import Database, MissingReference
from orion_sql.lease_lock import LeaseLock
from orion_sql.models import algo_locks


def algorithm_lock(database: Database, expiry: float) -> AlgorithmLock:
    """The lock strategy that suits the database: the row lock where the database has
    row locks, else the lease (see :mod:`orion_sql.algo_lock`)."""
    if database.dialect.has_row_locks:
        return RowLock(database, expiry)
    return LeaseLock(database, expiry)


class AlgorithmLockMethods:
    """The storage's algorithm-lock methods; the storage gives them its database and lock."""

    _db: Database
    _lock: AlgorithmLock

    def initialize_algorithm_lock(self, experiment_id, algorithm_config):
        """Oríon 0.2.7: create the experiment's algorithm lock; DuplicateKeyError if it has one."""
        experiment_id = mapping.checked_id(experiment_id, "experiment id")
        row = rows.algorithm_lock_row(self._db.dialect, experiment_id, algorithm_config)
        return self._write_lock(lambda conn: conn.execute(insert(algo_locks).values(row)), experiment_id)

    def write_algorithm_lock(self, experiment_id, algorithm_config, locked=0, state=None, heartbeat=None):
        """Oríon 0.2.8: create or replace the experiment's algorithm lock (its `orion db load`).

        A lock written `locked` has no live holder (see :func:`orion_sql.rows.algorithm_lock_row`).
        """
        experiment_id = mapping.checked_id(experiment_id, "experiment id")
        row = rows.algorithm_lock_row(self._db.dialect, experiment_id, algorithm_config, locked, state, heartbeat)

        def replace(conn):
            conn.execute(delete(algo_locks).where(algo_locks.c.experiment_id == experiment_id))
            conn.execute(insert(algo_locks).values(row))

        return self._write_lock(replace, experiment_id)

    def _write_lock(self, work: Callable[[Connection], Any], experiment_id) -> int:
        try:
            self._db.run(work, write=True)
        except MissingReference:
            raise ValueError(f"experiment {experiment_id!r} does not exist") from None
        return 1

    def release_algorithm_lock(self, experiment=None, uid=None, new_state=None):
        """Free the lock from outside its holder (``orion db release``).

        Returns 1 when the lock is free afterwards; 0 when the experiment has no
        lock, or (PostgreSQL) a live worker holds it: a dead one's lock is
        released by the server with its connection.
        """
        return self._lock.release(arguments.experiment_id(experiment, uid), new_state)

    def get_algorithm_lock_info(self, experiment=None, uid=None):
        """The stored algorithm state and heartbeat; ``locked`` is true while someone holds the lock."""
        return self._lock.info(arguments.experiment_id(experiment, uid))

    def delete_algorithm_lock(self, experiment=None, uid=None):
        statement = delete(algo_locks).where(algo_locks.c.experiment_id == arguments.experiment_id(experiment, uid))
        return self._db.run(rows.rows_matched(statement), write=True, autocommit=True)

    def acquire_algorithm_lock(self, experiment=None, uid=None, timeout=60, retry_interval=1):
        """Hold the experiment's algorithm lock for a ``with`` block (see orion_sql.algo_lock).

        LockAcquisitionTimeout when not acquired within `timeout` seconds.
        """
        uid = get_uid(experiment, uid)
        try:
            mapping.checked_id(uid, "experiment id")
        except ValueError:  # Oríon expects its protocol error for an id that names no lock
            raise LockAcquisitionTimeout(f"experiment {uid!r} has no algorithm lock") from None
        return self._lock.acquire(uid, timeout, retry_interval)
