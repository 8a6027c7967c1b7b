"""The algorithm lock where the database has no row locks (SQLite): a lease.

The lock row carries a flag, its holder and a heartbeat the holder refreshes from
a background thread. The holder is named as the waiters of
:mod:`orion_sql.lock_queue` are, so a holder that died on this host is seen dead at
once (its pid is gone) and its lock taken over; one on another host is presumed
dead only once its heartbeat is older than ``expiry``. Waiters queue in arrival
order; the next in line reads the lock row and writes only to take it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator

from orion.storage.base import LockedAlgorithmState
from sqlalchemy import Connection, and_, select, update

from orion_sql.algo_lock import AlgorithmLock, locked_state, this_lock
from orion_sql.lock_queue import new_owner, process_is_gone, silent
from orion_sql.models import AlgoLockRow, algo_locks

log = logging.getLogger(__name__)


class LeaseLock(AlgorithmLock):
    """A flag with an owner and a heartbeat, handed over in arrival order (SQLite)."""

    def _read(self, conn: Connection, experiment_id):
        """The lock row, with `held`: whether a live holder has it."""
        row = conn.execute(
            select(algo_locks, silent(self.database, AlgoLockRow.heartbeat, self.expiry).label("silent")).where(
                this_lock(experiment_id)
            )
        ).first()
        if row is None:
            return None, False
        return row, bool(row.locked) and not (row.silent or process_is_gone(row.owner))

    def info(self, experiment_id):
        def read(conn: Connection):
            row, held = self._read(conn, experiment_id)
            return None if row is None else locked_state(row, locked=held)

        return self.database.run(read, write=False)

    def _freed(self, state=None) -> dict:
        values = {"locked": False, "owner": None, "heartbeat": self.database.dialect.now()}
        return values if state is None else {**values, **self.saved(state)}

    def release(self, experiment_id, new_state=None):
        statement = update(algo_locks).where(this_lock(experiment_id)).values(**self._freed(new_state))
        return self.database.run(lambda conn: conn.execute(statement).rowcount, write=True, idempotent=True)

    @contextlib.contextmanager
    def acquire(self, experiment_id, timeout, retry_interval) -> Iterator[LockedAlgorithmState]:
        owner = new_owner()
        take = functools.partial(self._take_if_free, experiment_id, owner)
        row = self.queue(experiment_id, owner).wait(take, time.monotonic() + timeout, timeout, retry_interval)
        locked = locked_state(row, locked=True)
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
            self._give_back(experiment_id, owner, locked.state if saved else None, saved)

    def _take_if_free(self, experiment_id, owner: str):
        """The lock row, now ours, if nobody live holds it (a read, then a write only
        when it looks free); else None."""

        def take(conn: Connection):
            row, held = self._read(conn, experiment_id)
            if row is None:
                raise self.missing(experiment_id)
            if held:
                return None
            taken = update(algo_locks).where(this_lock(experiment_id))
            return conn.execute(
                taken.values(locked=True, owner=owner, heartbeat=self.database.dialect.now()).returning(algo_locks)
            ).first()

        if self.database.run(lambda conn: self._read(conn, experiment_id)[1], write=False):
            return None
        return self.database.run(take, write=True)

    def _give_back(self, experiment_id, owner: str, state, save: bool) -> None:
        """Free the lock, saving `state` if `save`; if saving fails, free it anyway with
        the stored state unchanged, then raise the failure."""
        mine = and_(this_lock(experiment_id), AlgoLockRow.owner == owner)
        try:
            values = self._freed(state) if save else self._freed()
            freed = self.database.run(
                lambda conn: conn.execute(update(algo_locks).where(mine).values(**values)).rowcount, write=True
            )
        except Exception:
            log.error(
                "saving the algorithm state of experiment %r failed; the lock is freed, the state unchanged",
                experiment_id,
            )
            self.database.run(
                lambda conn: conn.execute(update(algo_locks).where(mine).values(**self._freed())), write=True
            )
            raise
        if not freed:
            log.warning(
                "The algorithm lock of experiment %r was taken over (its holder seemed dead: no heartbeat "
                "for %ss); this holder's algorithm state was not saved.",
                experiment_id,
                self.expiry,
            )

    def beat(self, experiment_id, owner: str) -> None:
        """Tell waiters the holder is alive."""
        statement = (
            update(algo_locks)
            .where(this_lock(experiment_id), AlgoLockRow.owner == owner)
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
