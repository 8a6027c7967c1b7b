"""Waiters for an algorithm lock, served in arrival order without pinning a connection.

Where waiters cannot block on the lock itself (SQLite has no row locks; behind a
pooler in transaction mode a blocked waiter would pin a server connection), each
one takes a ticket in ``algo_lock_waiters`` and polls. Only the next in line tries
to take the lock, every few milliseconds; those behind it read the queue less often
the further back they are, so that a hundred waiters cost the holder little. Waiters
are named ``host:pid:pid-namespace:nonce``: one whose process died on this host is
struck off the queue at once, one on another host once its heartbeat is older than
the expiry.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

from orion.storage.base import LockAcquisitionTimeout
from sqlalchemy import Connection, delete, insert, select, update

from orion_sql.database import Database, MissingReference, process_name
from orion_sql.models import AlgoLockWaiterRow, algo_lock_waiters

log = logging.getLogger(__name__)

# The waiter the lock goes to next tries to take it after 10 ms, then after each pause
# half as long again as the one before, up to 40 ms: a try costs it about a millisecond
# of CPU, and on a loaded machine (SQLite, 8 workers beside 2 CPU-burning processes) a
# next in line trying every 5-10 ms through a long hold took CPU the holder needed.
NEXT_IN_LINE_POLL_SECONDS = 0.01
NEXT_IN_LINE_SLOWEST_POLL_SECONDS = 0.04
NEXT_IN_LINE_POLL_GROWTH = 1.5
QUEUED_POLL_SECONDS = 0.05  # per waiter ahead: how often those behind read the queue
SLOWEST_POLL_SECONDS = 1.0

Taken = TypeVar("Taken")


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


def silent(database: Database, heartbeat_column, expiry: float):
    """True where a heartbeat is older than `expiry` seconds (on the database's clock)."""
    return heartbeat_column <= database.dialect.now(minus=datetime.timedelta(seconds=expiry))


class LockQueue(Generic[Taken]):
    """One acquisition waiting its turn: its ticket in the queue, polled until served."""

    def __init__(self, database: Database, experiment_id, owner: str, expiry: float, missing: Callable[[], Exception]):
        self.database = database
        self.experiment_id = experiment_id
        self.owner = owner
        self.expiry = expiry
        self.missing = missing
        self.ticket: int | None = None
        self.beaten_at = 0.0
        self._queue = (  # built once, read at every poll (its clock is read when it runs)
            select(
                AlgoLockWaiterRow.ticket,
                AlgoLockWaiterRow.owner,
                silent(database, AlgoLockWaiterRow.heartbeat, expiry).label("silent"),
            )
            .where(AlgoLockWaiterRow.experiment_id == experiment_id)
            .order_by(AlgoLockWaiterRow.ticket)
        )

    def wait(self, take: Callable[[], Taken | None], deadline: float, timeout: float, retry_interval: float) -> Taken:
        """Join the queue and poll until `take` (tried when next in line; None while the
        lock is held) succeeds, by the monotonic `deadline` (`timeout` seconds after the
        caller began): what `take` returned, or LockAcquisitionTimeout."""
        taken: Taken | None = None
        tries = 0  # in a row, as next in line
        try:
            self._write(self._join)
            while True:
                look = self.database.run(self._look, write=False)
                if look.dead_ahead or not look.queued:
                    self._write(functools.partial(self._strike_or_rejoin, look=look))
                elif look.live_ahead == 0:
                    taken = take()
                    if taken is not None:
                        return taken
                tries = tries + 1 if look.live_ahead == 0 else 0
                if time.monotonic() - self.beaten_at > self.expiry / 3:
                    self._beat()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockAcquisitionTimeout(
                        f"algorithm lock of experiment {self.experiment_id!r} still held after {timeout}s"
                    )
                time.sleep(min(look.pause(tries), retry_interval, remaining))
        finally:
            self._leave(holding=taken is not None)

    def _write(self, work: Callable[[Connection], None]) -> None:
        try:
            self.database.run(work, write=True)
        except MissingReference:  # the experiment's lock is gone
            raise self.missing() from None

    def _join(self, conn: Connection) -> None:
        values = {"experiment_id": self.experiment_id, "owner": self.owner, "heartbeat": self.database.dialect.now()}
        statement = insert(algo_lock_waiters).values(**values).returning(AlgoLockWaiterRow.ticket)
        self.ticket = conn.execute(statement).scalar_one()
        self.beaten_at = time.monotonic()

    def _leave(self, holding: bool) -> None:
        """Give up the ticket; once the lock is ours a failure here is only logged (the
        ticket goes when it falls silent), so that the lock is not lost with it."""
        statement = delete(algo_lock_waiters).where(AlgoLockWaiterRow.owner == self.owner)
        try:
            self.database.run(lambda conn: conn.execute(statement), write=True, idempotent=True)
        except Exception:
            if not holding:
                raise
            log.warning("could not leave the algorithm lock queue of experiment %r", self.experiment_id, exc_info=True)

    def _beat(self) -> None:
        statement = (
            update(algo_lock_waiters)
            .where(AlgoLockWaiterRow.owner == self.owner)
            .values(heartbeat=self.database.dialect.now())
        )
        self.database.run(lambda conn: conn.execute(statement), write=True, idempotent=True)
        self.beaten_at = time.monotonic()

    def _look(self, conn: Connection) -> _Look:
        return _Look.of(self.ticket, conn.execute(self._queue).all())

    def _strike_or_rejoin(self, conn: Connection, look: _Look) -> None:
        """Strike dead waiters ahead off the queue; rejoin it if struck off ourselves
        (paused longer than the expiry)."""
        if look.dead_ahead:
            conn.execute(delete(algo_lock_waiters).where(AlgoLockWaiterRow.ticket.in_(look.dead_ahead)))
        if not look.queued:
            self._join(conn)


class _Look:
    """What one read of the queue tells a waiter: its place, and the dead ahead of it."""

    def __init__(self, queued: bool, dead_ahead: list[int], live_ahead: int):
        self.queued = queued
        self.dead_ahead = dead_ahead
        self.live_ahead = live_ahead

    def pause(self, tries: int) -> float:
        """Seconds until the next read, after `tries` in a row as next in line."""
        if self.live_ahead:
            return min(QUEUED_POLL_SECONDS * self.live_ahead, SLOWEST_POLL_SECONDS)
        growth = NEXT_IN_LINE_POLL_GROWTH ** min(max(tries - 1, 0), 10)
        return min(NEXT_IN_LINE_POLL_SECONDS * growth, NEXT_IN_LINE_SLOWEST_POLL_SECONDS)

    @classmethod
    def of(cls, ticket: int | None, queue) -> _Look:
        ahead = [entry for entry in queue if ticket is not None and entry.ticket < ticket]
        dead = [entry.ticket for entry in ahead if entry.silent or process_is_gone(entry.owner)]
        return cls(
            queued=any(entry.ticket == ticket for entry in queue),
            dead_ahead=dead,
            live_ahead=len(ahead) - len(dead),
        )
