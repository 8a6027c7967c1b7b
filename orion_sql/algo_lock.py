"""The algorithm lock of an experiment: one holder at a time, across machines.

Two strategies behind one interface, chosen by the dialect:

- :class:`RowLock` (PostgreSQL): the holder's own transaction holds the row lock
  for the whole ``with`` block. Waiters block on the row itself and proceed the
  moment the holder commits; the server drops the lock with a dead holder's
  connection. Nothing polls.
- :class:`LeaseLock` (SQLite, which has no row locks): a flag, an owner token and
  a heartbeat the holder refreshes from a background thread. A lock whose
  heartbeat is older than ``expiry`` seconds belongs to a dead holder and may be
  taken over. Waiters poll with backoff, from 5 ms to 50 ms (or ``retry_interval``
  if shorter).

On success the new algorithm state is saved as the lock is released; on an
exception inside the block the stored state is left as it was.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import pickle
import threading
import time
import uuid
from collections.abc import Iterator

from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState
from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.exc import DBAPIError

from orion_sql.database import Database, process_name
from orion_sql.dialects import ErrorKind
from orion_sql.models import AlgoLockRow, algo_locks

log = logging.getLogger(__name__)

FIRST_POLL_SECONDS = 0.005
# The longest pause between polls: a lock freed while its waiters sleep stays idle,
# and with Oríon's 1 s retry_interval that idling was most of a busy experiment's time.
LAST_POLL_SECONDS = 0.05


def _locked_state(row, locked: bool) -> LockedAlgorithmState:
    state = pickle.loads(row.state) if row.state is not None else None
    locked_state = LockedAlgorithmState(state=state, configuration=row.configuration, locked=locked)
    locked_state.heartbeat = row.heartbeat  # Oríon 0.2.8 has it as an argument; 0.2.7 has none
    return locked_state



def _this_lock(experiment_id):
    return AlgoLockRow.experiment_id == experiment_id


class AlgorithmLock:
    """What both strategies share: reading the lock row, saving the state."""

    def __init__(self, database: Database):
        self.database = database

    def _saved(self, state) -> dict:
        return {"state": pickle.dumps(state), "heartbeat": self.database.dialect.now()}

    def info(self, experiment_id) -> LockedAlgorithmState | None:
        """The stored state and configuration, and whether someone holds the lock now."""
        raise NotImplementedError

    def release(self, experiment_id, new_state=None) -> int:
        """Free the lock from outside its holder (``orion db release``).

        Returns 1 when the experiment's lock is free afterwards, 0 when it has no
        lock or a live holder keeps it.
        """
        raise NotImplementedError

    def acquire(self, experiment_id, timeout: float, retry_interval: float):
        """Context manager yielding the LockedAlgorithmState; see the module docstring."""
        raise NotImplementedError

    def _missing(self, experiment_id) -> LockAcquisitionTimeout:
        return LockAcquisitionTimeout(f"experiment {experiment_id!r} has no algorithm lock")


class RowLock(AlgorithmLock):
    """The lock is the row lock held by the holder's transaction (PostgreSQL)."""

    def info(self, experiment_id):
        def read(conn: Connection):
            row = conn.execute(select(algo_locks).where(_this_lock(experiment_id))).first()
            if row is None:
                return None
            lockable = select(AlgoLockRow.experiment_id).where(_this_lock(experiment_id))
            free = conn.execute(lockable.with_for_update(skip_locked=True)).first()
            return _locked_state(row, locked=free is None)

        return self.database.run(read, write=False)

    def release(self, experiment_id, new_state=None):
        def release(conn: Connection):
            try:
                row = conn.execute(
                    select(algo_locks).where(_this_lock(experiment_id)).with_for_update(nowait=True)
                ).first()
            except DBAPIError as error:
                if self.database.dialect.classify(error) is ErrorKind.LOCK_NOT_AVAILABLE:
                    return 0  # a live holder has it; it frees it when done or when it dies
                raise
            if row is not None and new_state is not None:
                conn.execute(update(algo_locks).where(_this_lock(experiment_id)).values(**self._saved(new_state)))
            return int(row is not None)

        return self.database.run(release, write=True, idempotent=True)

    @contextlib.contextmanager
    def acquire(self, experiment_id, timeout, retry_interval) -> Iterator[LockedAlgorithmState]:
        del retry_interval  # waiters block on the row lock: nothing to poll
        with self.database.transaction(write=True) as conn:
            row = self._wait_for_row(conn, experiment_id, timeout)
            locked = _locked_state(row, locked=True)
            try:
                yield locked
            except Exception:
                locked.reset()
                raise  # leaving the transaction with an exception rolls it back: state unchanged
            conn.execute(update(algo_locks).where(_this_lock(experiment_id)).values(**self._saved(locked.state)))

    def _wait_for_row(self, conn: Connection, experiment_id, timeout: float):
        statement = select(algo_locks).where(_this_lock(experiment_id))
        if timeout > 0:
            self.database.dialect.set_lock_timeout(conn, timeout)
            statement = statement.with_for_update()
        else:
            statement = statement.with_for_update(nowait=True)
        try:
            row = conn.execute(statement).first()
        except DBAPIError as error:
            if self.database.dialect.classify(error) is ErrorKind.LOCK_NOT_AVAILABLE:
                raise LockAcquisitionTimeout(
                    f"algorithm lock of experiment {experiment_id!r} still held after {timeout}s"
                ) from None
            raise
        if row is None:
            raise self._missing(experiment_id)
        return row


class LeaseLock(AlgorithmLock):
    """A flag with an owner and a heartbeat, taken over once expired (SQLite)."""

    def __init__(self, database: Database, expiry: float):
        super().__init__(database)
        self.expiry = expiry

    def _expired(self):
        return AlgoLockRow.heartbeat <= self.database.dialect.now(minus=datetime.timedelta(seconds=self.expiry))

    def info(self, experiment_id):
        held = and_(AlgoLockRow.locked, ~self._expired())

        def read(conn: Connection):
            row = conn.execute(select(algo_locks, held.label("held")).where(_this_lock(experiment_id))).first()
            return None if row is None else _locked_state(row, locked=bool(row.held))

        return self.database.run(read, write=False)

    def _freed(self, state) -> dict:
        values = {"locked": False, "owner": None, "heartbeat": self.database.dialect.now()}
        return values if state is None else {**values, **self._saved(state)}

    def release(self, experiment_id, new_state=None):
        statement = update(algo_locks).where(_this_lock(experiment_id)).values(**self._freed(new_state))
        return self.database.run(lambda conn: conn.execute(statement).rowcount, write=True, idempotent=True)

    @contextlib.contextmanager
    def acquire(self, experiment_id, timeout, retry_interval) -> Iterator[LockedAlgorithmState]:
        owner = f"{process_name()}:{uuid.uuid4().hex[:8]}"  # this acquisition, not just this process
        row = self._take(experiment_id, owner, timeout, retry_interval)
        locked = _locked_state(row, locked=True)
        heartbeat = _Heartbeat(self, experiment_id, owner)
        saved = False
        try:
            yield locked
            saved = True
        except Exception:
            locked.reset()
            raise
        finally:
            heartbeat.stop()
            self._give_back(experiment_id, owner, locked.state if saved else None)

    def _take(self, experiment_id, owner: str, timeout: float, retry_interval: float):
        """Set the flag, waiting with backoff; returns the lock row."""
        now = self.database.dialect.now
        statement = (
            update(algo_locks)
            .where(_this_lock(experiment_id), or_(~AlgoLockRow.locked, self._expired()))
            .values(locked=True, owner=owner, heartbeat=now())
            .returning(algo_locks)
        )
        deadline = time.monotonic() + timeout
        pause = FIRST_POLL_SECONDS
        while True:
            row = self.database.run(lambda conn: conn.execute(statement).first(), write=True)
            if row is not None:
                return row
            if pause == FIRST_POLL_SECONDS and self.info(experiment_id) is None:
                raise self._missing(experiment_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockAcquisitionTimeout(
                    f"algorithm lock of experiment {experiment_id!r} still held after {timeout}s"
                )
            time.sleep(min(pause, retry_interval, LAST_POLL_SECONDS, remaining))
            pause *= 2

    def _give_back(self, experiment_id, owner: str, state) -> None:
        mine = and_(_this_lock(experiment_id), AlgoLockRow.owner == owner)
        statement = update(algo_locks).where(mine).values(**self._freed(state))
        if not self.database.run(lambda conn: conn.execute(statement).rowcount, write=True):
            log.warning(
                "The algorithm lock of experiment %r expired (no heartbeat for %ss) and was "
                "taken over; this holder's algorithm state was not saved.",
                experiment_id,
                self.expiry,
            )

    def beat(self, experiment_id, owner: str) -> None:
        """Tell waiters the holder is alive."""
        statement = (
            update(algo_locks)
            .where(_this_lock(experiment_id), AlgoLockRow.owner == owner)
            .values(heartbeat=self.database.dialect.now())
        )
        self.database.run(lambda conn: conn.execute(statement), write=True, idempotent=True)


class _Heartbeat:
    """A daemon thread refreshing a held lease every third of its expiry."""

    def __init__(self, lock: LeaseLock, experiment_id, owner: str):
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(lock, experiment_id, owner), name="orion_sql-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self, lock: LeaseLock, experiment_id, owner: str) -> None:
        while not self._stopped.wait(lock.expiry / 3):
            try:
                lock.beat(experiment_id, owner)
            except Exception:  # keep beating: one failed beat is not an expiry
                log.warning("algorithm lock heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def algorithm_lock(database: Database, expiry: float) -> AlgorithmLock:
    """The lock strategy that suits the database."""
    if database.dialect.has_row_locks:
        return RowLock(database)
    return LeaseLock(database, expiry)
