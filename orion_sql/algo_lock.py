"""The algorithm lock of an experiment: one holder at a time, across machines.

Two strategies behind one interface, chosen by the dialect:

- :class:`RowLock` (PostgreSQL): the holder's own transaction holds the row lock
  for the whole ``with`` block. Waiters block on the row itself and proceed the
  moment the holder commits; behind a pooler in transaction mode, where a blocked
  waiter would pin a server connection, they queue in arrival order and the next
  in line tries NOWAIT (:mod:`orion_sql.lock_queue`). The server drops the lock
  with a dead holder's connection. A holder whose connection dropped has lost the lock: it saves its
  state only if, once it holds the lock again, nobody changed the state meanwhile,
  and otherwise logs an error and drops it (Oríon would crash on an exception
  there, in ``observe``).
- :class:`~orion_sql.lease_lock.LeaseLock` (SQLite, which has no row locks): a
  flag, a holder and a heartbeat; a holder that died on this host is replaced at
  once, waiters queue as behind a pooler (see :mod:`orion_sql.lease_lock`).

On success the new algorithm state is saved as the lock is released; on an
exception inside the block the stored state is left as it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import time
from collections.abc import Iterator
from typing import Any

from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState
from sqlalchemy import Connection, select, update
from sqlalchemy.exc import DBAPIError

from orion_sql.database import Database, RetryEpisode, first_line
from orion_sql.dialects import ErrorKind
from orion_sql.dialects.base import BEHIND_POOLER
from orion_sql.lock_queue import NEXT_IN_LINE_POLL_SECONDS, LockQueue, new_owner
from orion_sql.models import AlgoLockRow, algo_locks

log = logging.getLogger(__name__)


def locked_state(row, locked: bool) -> LockedAlgorithmState:
    state = pickle.loads(row.state) if row.state is not None else None
    locked_state = LockedAlgorithmState(state=state, configuration=row.configuration, locked=locked)
    locked_state.heartbeat = row.heartbeat  # Oríon 0.2.8 has it as an argument; 0.2.7 has none
    return locked_state


def this_lock(experiment_id):
    return AlgoLockRow.experiment_id == experiment_id


class AlgorithmLock:
    """What both strategies share: reading the lock row, saving the state, the queue.

    `expiry`: how long a silent holder (SQLite) or a silent queued waiter keeps its place.
    """

    def __init__(self, database: Database, expiry: float):
        self.database = database
        self.expiry = expiry

    def saved(self, state) -> dict:
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

    def missing(self, experiment_id) -> LockAcquisitionTimeout:
        return LockAcquisitionTimeout(f"experiment {experiment_id!r} has no algorithm lock")

    def queue(self, experiment_id, owner: str) -> LockQueue:
        """The experiment's waiters' queue, which `owner` joins to wait its turn."""
        return LockQueue(self.database, experiment_id, owner, self.expiry, lambda: self.missing(experiment_id))


class RowLock(AlgorithmLock):
    """The lock is the row lock held by the holder's transaction (PostgreSQL, MariaDB)."""

    def info(self, experiment_id):
        def read(conn: Connection):
            row = conn.execute(select(algo_locks).where(this_lock(experiment_id))).first()
            if row is None:
                return None
            lockable = select(AlgoLockRow.experiment_id).where(this_lock(experiment_id))
            free = conn.execute(lockable.with_for_update(skip_locked=True)).first()
            return locked_state(row, locked=free is None)

        return self.database.run(read, write=False)

    def release(self, experiment_id, new_state=None):
        def release(conn: Connection):
            try:
                row = conn.execute(
                    select(algo_locks).where(this_lock(experiment_id)).with_for_update(nowait=True)
                ).first()
            except DBAPIError as error:
                if self.database.dialect.classify(error) is ErrorKind.LOCK_NOT_AVAILABLE:
                    return 0  # a live holder has it; it frees it when done or when it dies
                raise
            if row is not None and new_state is not None:
                conn.execute(update(algo_locks).where(this_lock(experiment_id)).values(**self.saved(new_state)))
            return int(row is not None)

        return self.database.run(release, write=True, idempotent=True)

    @contextlib.contextmanager
    def acquire(self, experiment_id, timeout, retry_interval) -> Iterator[LockedAlgorithmState]:
        transaction, conn, row = self._take(experiment_id, timeout, retry_interval)
        locked = locked_state(row, locked=True)
        try:
            yield locked
        except BaseException as error:
            locked.reset()
            _end(transaction, error)  # rolled back: the stored state is unchanged
            raise
        try:
            conn.execute(update(algo_locks).where(this_lock(experiment_id)).values(**self.saved(locked.state)))
            transaction.close()  # commits
        except DBAPIError as error:
            _end(transaction, error)
            if self.database.dialect.classify(error) not in (ErrorKind.DISCONNECT, ErrorKind.UNAVAILABLE):
                raise
            self._save_if_unchanged(experiment_id, row.state, locked.state, error)

    def _save_if_unchanged(self, experiment_id, read: bytes | None, state, error: DBAPIError) -> None:
        """After the holder's connection dropped (the server freed the lock): take the
        lock again and save `state` if the stored state is still the one this holder
        read (as if this holder had run after whoever held the lock meanwhile);
        otherwise drop it, and say so."""
        lost = f"lost the connection holding the algorithm lock of experiment {experiment_id!r} ({first_line(error)})"
        try:
            retaken = self._take(experiment_id, self.database.settings.retry_time, NEXT_IN_LINE_POLL_SECONDS)
        except LockAcquisitionTimeout as retaking:
            log.error("%s; this holder's algorithm state was not saved (%s)", lost, retaking)
            return
        transaction, conn, row = retaken
        with transaction:
            if row.state != read:
                log.error("%s; another worker changed the algorithm state since: this holder's was not saved", lost)
                return
            conn.execute(update(algo_locks).where(this_lock(experiment_id)).values(**self.saved(state)))
        log.warning("%s; took it again and saved the state, which nobody had changed meanwhile", lost)

    def _take(
        self, experiment_id, timeout: float, retry_interval: float
    ) -> tuple[contextlib.ExitStack, Connection, Any]:
        """An open transaction (closing it commits) holding the lock row, its connection, the row.

        Waiters block on the row lock (a lock timeout of what is left of `timeout`);
        behind a pooler (found at connect, or said by ``pool_mode``) they queue instead
        (:mod:`orion_sql.lock_queue`) and the next in line tries NOWAIT, so that none
        pins a pooled server connection. With no `timeout`, one NOWAIT try. A lost or
        refused connection is retried within `timeout`.
        """
        deadline = time.monotonic() + timeout
        reconnecting = RetryEpisode(timeout)
        while True:
            attempt = self._attempt(experiment_id, None if timeout <= 0 else deadline)
            if attempt.taken is not None:
                return attempt.taken
            if attempt.kind is not ErrorKind.LOCK_NOT_AVAILABLE:
                self._recover(attempt, experiment_id, timeout, reconnecting)
            elif attempt.polling and timeout > 0:
                return self._queue(experiment_id, deadline, timeout, retry_interval, reconnecting)
            else:
                raise LockAcquisitionTimeout(
                    f"algorithm lock of experiment {experiment_id!r} still held after {timeout}s"
                )

    def _queue(self, experiment_id, deadline: float, timeout: float, retry_interval: float, reconnecting):
        """Wait in the experiment's queue; the next in line tries NOWAIT until it holds the row."""

        def take():
            attempt = self._attempt(experiment_id, None)
            if attempt.taken is None and attempt.kind is not ErrorKind.LOCK_NOT_AVAILABLE:
                self._recover(attempt, experiment_id, timeout, reconnecting)
            return attempt.taken

        return self.queue(experiment_id, new_owner()).wait(take, deadline, timeout, retry_interval)

    def _attempt(self, experiment_id, deadline: float | None) -> _Attempt:
        """One try at the lock row: blocking until `deadline`, or NOWAIT when `deadline`
        is None or a pooler serves the connection."""
        transaction, conn = contextlib.ExitStack(), None
        polling = deadline is None
        try:
            conn = transaction.enter_context(self.database.transaction(write=True))
            statement = select(algo_locks).where(this_lock(experiment_id))
            polling = polling or conn.info.get(BEHIND_POOLER, False)
            # NO KEY UPDATE: queued waiters insert tickets referencing this row (a KEY SHARE
            # lock), which a plain FOR UPDATE would block until the holder commits.
            if polling or deadline is None:
                statement = statement.with_for_update(nowait=True, key_share=True)
            else:
                self.database.dialect.set_lock_timeout(conn, max(deadline - time.monotonic(), 0.001))
                statement = statement.with_for_update(key_share=True)
            row = conn.execute(statement).first()
            if row is None:
                raise self.missing(experiment_id)
            return _Attempt(polling, taken=(transaction, conn, row))
        except BaseException as raised:
            _end(transaction, raised)
            if not isinstance(raised, DBAPIError):
                raise
            kind = self.database.dialect.classify(raised, connecting=conn is None)
            return _Attempt(polling, kind=kind, error=raised)

    def _recover(self, attempt: _Attempt, experiment_id, timeout: float, reconnecting: RetryEpisode) -> None:
        """Pause before another try after a lost or refused connection; raise anything else."""
        assert attempt.error is not None
        if attempt.kind not in (ErrorKind.TRANSIENT, ErrorKind.UNAVAILABLE, ErrorKind.DISCONNECT):
            raise attempt.error
        try:
            reconnecting.pause(attempt.kind, attempt.error)
        except DBAPIError:
            raise LockAcquisitionTimeout(
                f"algorithm lock of experiment {experiment_id!r}: database unreachable for {timeout}s "
                f"({first_line(attempt.error)})"
            ) from attempt.error


@dataclasses.dataclass
class _Attempt:
    """What one try at the lock row gave: the lock, or the failure and its kind."""

    polling: bool
    taken: tuple[contextlib.ExitStack, Connection, Any] | None = None
    kind: ErrorKind | None = None
    error: DBAPIError | None = None


def _end(transaction: contextlib.ExitStack, error: BaseException) -> None:
    """Roll `transaction` back after `error`; a dead connection has rolled back already."""
    with contextlib.suppress(DBAPIError):
        transaction.__exit__(type(error), error, error.__traceback__)
