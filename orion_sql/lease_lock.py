"""The algorithm lock where the database has no row locks (SQLite): a lease with a queue.

The lock row carries a flag, its holder and a heartbeat the holder refreshes from
a background thread. Holders and waiters are named ``host:pid:pid-namespace:nonce``,
so a process that died on this host is seen dead at once (its pid is gone) and its
lock or its place in the queue taken over; one on another host is presumed dead
only once its heartbeat is older than ``expiry``. Waiters queue by ticket in
``algo_lock_waiters`` and take the lock in arrival order, so none starves. A
waiter polls with a cheap read (the next in line every few milliseconds, the
others less often) and writes only to take the lock or strike off the dead.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState
from sqlalchemy import Connection, and_, delete, insert, select, update

from orion_sql.algo_lock import AlgorithmLock, locked_state, this_lock
from orion_sql.database import Database, MissingReference, process_name
from orion_sql.models import AlgoLockRow, AlgoLockWaiterRow, algo_lock_waiters, algo_locks

log = logging.getLogger(__name__)

NEXT_IN_LINE_POLL_SECONDS = 0.005  # the waiter the lock goes to next
QUEUED_POLL_SECONDS = 0.05  # waiters behind it only watch for dead ones ahead


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def new_owner() -> str:
    """A name for one acquisition by this process: ``host:pid:pid-namespace:nonce``."""
    return f"{process_name()}:{_pid_namespace()}:{uuid.uuid4().hex[:8]}"


def process_is_gone(owner: str | None) -> bool:
    """Whether `owner` (see :func:`new_owner`) names a process of this host, and of this
    pid namespace, that no longer runs. Unknown for other hosts: False."""
    try:
        host_and_pid, namespace, _ = (owner or "").rsplit(":", 2)
        host, pid_text = host_and_pid.rsplit(":", 1)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or namespace != _pid_namespace():
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie runs no more
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseLock(AlgorithmLock):
    """A flag with an owner and a heartbeat, handed over in arrival order (SQLite)."""

    def __init__(self, database: Database, expiry: float):
        super().__init__(database)
        self.expiry = expiry

    def _silent(self, heartbeat_column):
        """True where a heartbeat is older than the expiry."""
        return heartbeat_column <= self.database.dialect.now(minus=datetime.timedelta(seconds=self.expiry))

    def _gone(self, owner: str | None, silent: bool) -> bool:
        return silent or process_is_gone(owner)

    def info(self, experiment_id):
        def read(conn: Connection):
            row = conn.execute(
                select(algo_locks, self._silent(AlgoLockRow.heartbeat).label("silent")).where(this_lock(experiment_id))
            ).first()
            if row is None:
                return None
            return locked_state(row, locked=bool(row.locked) and not self._gone(row.owner, bool(row.silent)))

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
        row = _Waiter(self, experiment_id, owner).wait(timeout, retry_interval)
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


class _Waiter:
    """One acquisition waiting its turn: its ticket in the queue, polled until served."""

    def __init__(self, lock: LeaseLock, experiment_id, owner: str):
        self.lock = lock
        self.database = lock.database
        self.experiment_id = experiment_id
        self.owner = owner
        self.ticket: int | None = None
        self.beaten_at = 0.0

    def wait(self, timeout: float, retry_interval: float):
        """Join the queue and poll until served; the lock row, or LockAcquisitionTimeout."""
        deadline = time.monotonic() + timeout
        try:
            self._join()
            while True:
                look = self.database.run(self._look, write=False)
                if look.may_write:
                    row = self.database.run(self._take_or_strike, write=True)
                    if row is not None:
                        return row
                elif time.monotonic() - self.beaten_at > self.lock.expiry / 3:
                    self._beat()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockAcquisitionTimeout(
                        f"algorithm lock of experiment {self.experiment_id!r} still held after {timeout}s"
                    )
                pause = NEXT_IN_LINE_POLL_SECONDS if look.next_in_line else QUEUED_POLL_SECONDS
                time.sleep(min(pause, retry_interval, remaining))
        finally:
            self._leave()

    def _join(self) -> None:
        values = {"experiment_id": self.experiment_id, "owner": self.owner, "heartbeat": self.database.dialect.now()}
        statement = insert(algo_lock_waiters).values(**values).returning(AlgoLockWaiterRow.ticket)
        try:
            self.ticket = self.database.run(lambda conn: conn.execute(statement).scalar_one(), write=True)
        except MissingReference:
            raise self.lock.missing(self.experiment_id) from None
        self.beaten_at = time.monotonic()

    def _leave(self) -> None:
        statement = delete(algo_lock_waiters).where(AlgoLockWaiterRow.owner == self.owner)
        self.database.run(lambda conn: conn.execute(statement), write=True, idempotent=True)

    def _beat(self) -> None:
        statement = (
            update(algo_lock_waiters)
            .where(AlgoLockWaiterRow.owner == self.owner)
            .values(heartbeat=self.database.dialect.now())
        )
        self.database.run(lambda conn: conn.execute(statement), write=True, idempotent=True)
        self.beaten_at = time.monotonic()

    def _read(self, conn: Connection):
        lock_row = conn.execute(
            select(algo_locks, self.lock._silent(AlgoLockRow.heartbeat).label("silent")).where(
                this_lock(self.experiment_id)
            )
        ).first()
        if lock_row is None:
            raise self.lock.missing(self.experiment_id)
        queue = conn.execute(
            select(
                AlgoLockWaiterRow.ticket,
                AlgoLockWaiterRow.owner,
                self.lock._silent(AlgoLockWaiterRow.heartbeat).label("silent"),
            )
            .where(AlgoLockWaiterRow.experiment_id == self.experiment_id)
            .order_by(AlgoLockWaiterRow.ticket)
        ).all()
        return lock_row, queue

    def _look(self, conn: Connection) -> _Look:
        lock_row, queue = self._read(conn)
        return _Look.of(self, lock_row, queue)

    def _take_or_strike(self, conn: Connection):
        """In one write transaction: strike dead waiters ahead off the queue, rejoin it if
        struck off ourselves (paused too long), and take the lock if it is our turn."""
        lock_row, queue = self._read(conn)
        look = _Look.of(self, lock_row, queue)
        if look.dead_ahead:
            conn.execute(delete(algo_lock_waiters).where(AlgoLockWaiterRow.ticket.in_(look.dead_ahead)))
        if not look.queued:
            values = {
                "experiment_id": self.experiment_id,
                "owner": self.owner,
                "heartbeat": self.database.dialect.now(),
            }
            self.ticket = conn.execute(
                insert(algo_lock_waiters).values(**values).returning(AlgoLockWaiterRow.ticket)
            ).scalar_one()
            return None
        if not look.can_take:
            return None
        conn.execute(delete(algo_lock_waiters).where(AlgoLockWaiterRow.ticket == self.ticket))
        taken = update(algo_locks).where(this_lock(self.experiment_id))
        return conn.execute(
            taken.values(locked=True, owner=self.owner, heartbeat=self.database.dialect.now()).returning(algo_locks)
        ).first()


class _Look:
    """What one read of the lock and its queue tells a waiter."""

    def __init__(self, queued: bool, dead_ahead: list, live_ahead: int, lock_free: bool):
        self.queued = queued
        self.dead_ahead = dead_ahead
        self.next_in_line = queued and live_ahead == 0
        self.can_take = self.next_in_line and lock_free
        self.may_write = self.can_take or bool(dead_ahead) or not queued

    @classmethod
    def of(cls, waiter: _Waiter, lock_row, queue) -> _Look:
        ahead = [entry for entry in queue if entry.ticket < waiter.ticket]
        dead = [entry.ticket for entry in ahead if waiter.lock._gone(entry.owner, bool(entry.silent))]
        holder_gone = waiter.lock._gone(lock_row.owner, bool(lock_row.silent))
        return cls(
            queued=any(entry.ticket == waiter.ticket for entry in queue),
            dead_ahead=dead,
            live_ahead=len(ahead) - len(dead),
            lock_free=not lock_row.locked or holder_gone,
        )


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
