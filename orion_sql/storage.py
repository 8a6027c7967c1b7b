"""The `sql` storage: Oríon's storage protocol over SQLite or PostgreSQL.

Each protocol method is one short transaction. Return values and exceptions
follow Oríon's legacy storage (`orion/storage/legacy.py`); what differs is said
in the method's docstring. The trial methods live here; the experiment and benchmark
methods in :mod:`orion_sql.document_methods`, the algorithm lock's in
:mod:`orion_sql.lock_methods`.
"""
from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from typing import Any

import orion.core
from orion.core.worker.trial import Trial, validate_status
from orion.storage.base import (
    BaseStorageProtocol,
    FailedUpdate,
)
from sqlalchemy import and_, delete, func, select
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import arguments, fencing, mapping, recovery, rows, statements
from orion_sql.database import Database, MissingReference, process_name
from orion_sql.document_methods import DocumentMethods
from orion_sql.filters import TRIAL_FILTERS
from orion_sql.location import redact, resolve_url
from orion_sql.lock_methods import AlgorithmLockMethods, algorithm_lock
from orion_sql.models import PENDING_STATUSES, TRIAL_STATUSES, trials
from orion_sql.schema import ensure_schema, upgrade_for_orion_db_upgrade
from orion_sql.settings import ConnectionSettings
from orion_sql.trial_cache import TrialCache


class SQL(DocumentMethods, AlgorithmLockMethods, BaseStorageProtocol):
    """Oríon storage in a relational database: a SQLite file or a PostgreSQL server.

    Parameters
    ----------
    uri: str, optional
        SQLAlchemy URL (``postgresql+psycopg://user:pw@host/db``, ``sqlite:///path``)
        or a path to a SQLite file. Wins over `database`.
    database: dict, optional
        Oríon's storage.database section; its ``host`` is the URL or path
        (what ``ORION_DB_ADDRESS`` sets). Without either, the embedded SQLite
        file in Oríon's user data folder is used.
    lock_expiry: float, optional
        SQLite only: seconds without heartbeat after which an algorithm lock is
        taken from a holder on another host presumed dead. Default
        ``$ORION_SQL_LOCK_EXPIRY`` or 60.
    cache_trials: int, optional
        At most this many trials are kept in this process between reads, so that a
        read fetches only the trials that changed (see orion_sql.trial_cache); 0
        turns the cache off. Default ``$ORION_SQL_CACHE_TRIALS`` or 100,000.
    setup: bool, optional
        Only `orion db upgrade` passes ``setup=False``: the schema is brought to head
        (as ``orion-sql upgrade`` does) and the command ends there, with exit status 0.
        The rest of that command rewrites legacy documents through the legacy
        storage's own database API; documents stored by orion_sql need no rewrite.
    retry_time, pool_size, max_overflow, pool_mode: optional
        How this process uses the database server; default ``$ORION_SQL_<NAME>``,
        else see :class:`orion_sql.settings.ConnectionSettings` (60 s, 1, 1, session).
    """

    def __init__(
        self,
        uri: str | None = None,
        database: Mapping | None = None,
        lock_expiry: float | None = None,
        cache_trials: int | None = None,
        setup: bool = True,
        **connection: Any,
    ):
        db = Database(resolve_url(uri, database), ConnectionSettings.from_arguments(connection))
        lock_expiry = arguments.lock_expiry(lock_expiry)
        cache_trials = arguments.cache_size(cache_trials)
        with db.reachable():
            if not setup:
                print(upgrade_for_orion_db_upgrade(db))
                print("The sql storage's documents need no rewrite: the upgrade is complete.")
                raise SystemExit(0)
            self._open(db, lock_expiry, cache_trials)

    @classmethod
    def on(cls, database: Database, lock_expiry: float | None = None) -> SQL:
        """The storage on a :class:`Database` already built (e.g. one bound to a
        connection, whose transaction `orion-sql test` rolls back). No trial cache:
        on PostgreSQL a snapshot cannot tell its own transaction's later writes."""
        storage = cls.__new__(cls)
        storage._open(database, arguments.lock_expiry(lock_expiry), cache_trials=0)
        return storage

    def _open(self, database: Database, lock_expiry: float, cache_trials: int) -> None:
        self._db = database
        self._cache_trials = cache_trials
        self._lock_expiry = lock_expiry
        ensure_schema(self._db)
        self._start()

    def _start(self) -> None:
        """What a storage object builds for itself (not pickled)."""
        self._lock = algorithm_lock(self._db, self._lock_expiry)
        self._cache = TrialCache(self._db.dialect, self._cache_trials) if self._cache_trials else None

    def __repr__(self) -> str:
        return f"SQL(uri={redact(self._db.url)!r})"

    def __getstate__(self) -> dict:
        return {"database": self._db, "lock_expiry": self._lock_expiry, "cache_trials": self._cache_trials}

    def __setstate__(self, state: dict) -> None:
        self._db = state["database"]
        self._lock_expiry = state["lock_expiry"]
        self._cache_trials = state["cache_trials"]
        self._start()

    @property
    def database(self) -> Database:
        """The database this storage works on: its URL, dialect, engine and transactions."""
        return self._db

    def close(self) -> None:
        """Close this process's connections to the database; they reopen on next use."""
        self._db.dispose()

    # --- trials ------------------------------------------------------------------

    def register_trial(self, trial):
        """Insert a trial with its params and results; sets ``trial.id_override``.

        DuplicateKeyError when the experiment already has a trial with this id.
        """
        document = trial.to_dict()
        columns = mapping.whole_trial_columns(document)

        def register(conn):
            trial_id = rows.insert_keeping_id(conn, self._db.dialect, trials, columns)
            rows.write_values(conn, [trial_id], document)
            return trial_id

        def find_or_register(conn):  # after a lost connection: did the insert commit?
            mine = self._trial_clause(trial.id, trial.experiment)
            return conn.execute(select(trials.c.id).where(mine)).scalar() or register(conn)

        try:
            trial.id_override = self._db.run(register, write=True, after_lost=find_or_register)
        except MissingReference:
            raise ValueError(f"trial refers to experiment {trial.experiment!r}, which does not exist") from None
        return trial

    def delete_trials(self, experiment=None, uid=None, where=None):
        uid = arguments.experiment_id(experiment, uid)
        clause = and_(trials.c.experiment_id == uid, self._filter(where, TRIAL_FILTERS))
        return self._db.run(rows.rows_matched(delete(trials).where(clause)), write=True, autocommit=True)

    def reserve_trial(self, experiment):
        """Reserve the oldest pending trial of the experiment, or return None.

        One UPDATE over locked sub-selects, with the trial's params and results (one
        statement on PostgreSQL, two on SQLite; see :func:`statements.reservation`).
        Concurrent callers skip each other's rows (PostgreSQL), or queue on the
        write lock (SQLite).
        """

        # Autocommit: the reservation commits by itself, with no BEGIN or COMMIT round
        # trips; values read after it belong to this worker alone. After a lost
        # connection, the trial an unanswered attempt reserved is found again.
        url, worker = str(self._db.url), process_name()
        found_again = recovery.reservation(url, self._reservation)
        reserved = self._db.run(
            lambda conn: self._reservation(conn, experiment.id, worker),
            write=True,
            autocommit=True,
            after_lost=lambda conn: found_again(conn, experiment.id, worker),
        )
        return None if reserved is None else Trial(**recovery.handed_out(url, reserved))

    @functools.cached_property
    def _reservation(self):
        return statements.reservation(self._db.dialect)

    def fetch_trials(self, experiment=None, uid=None, where=None):
        """The experiment's trials (those matching `where`), by submit time then id.

        Without `where`, served by this process's trial cache: only the trials that
        changed since its last read are read again.
        """
        uid = arguments.experiment_id(experiment, uid)
        if where is None and self._cache is not None:
            return self._cache.trials(self._db, uid)
        return self._select_trials(and_(trials.c.experiment_id == uid, self._filter(where, TRIAL_FILTERS)))

    def update_trials(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of the matching trials; returns how many matched."""
        uid = arguments.experiment_id(experiment, uid)
        clause = and_(trials.c.experiment_id == uid, self._filter(where, TRIAL_FILTERS))
        return self._db.run(rows.set_trial_fields(clause, kwargs), write=True)

    def update_trial(self, trial=None, uid=None, experiment_uid=None, where=None, **kwargs):
        """Set fields of one trial (by its id and experiment); returns 1 or 0."""
        trial_uid, experiment_uid = arguments.trial_and_experiment_ids(trial, uid, experiment_uid)
        clause = self._trial_clause(trial_uid, experiment_uid, where)
        return self._db.run(rows.set_trial_fields(clause, kwargs), write=True)

    def get_trial(self, trial=None, uid=None, experiment_uid=None):
        trial_uid, experiment_uid = arguments.trial_and_experiment_ids(trial, uid, experiment_uid)
        found = self._select_trials(self._trial_clause(trial_uid, experiment_uid))
        return found[0] if found else None

    def fetch_lost_trials(self, experiment):
        """Reserved trials whose heartbeat is older than 5 heartbeats, by the server's clock."""
        silence = datetime.timedelta(seconds=orion.core.config.worker.heartbeat * 5)
        return self._select_trials(
            and_(
                trials.c.experiment_id == experiment.id,
                trials.c.status == "reserved",
                trials.c.heartbeat <= self._db.dialect.now(minus=silence),
            )
        )

    def retrieve_result(self, trial, *args, **kwargs):
        """Return `trial` unchanged: its results arrive with it (as in legacy)."""
        return trial

    def push_trial_results(self, trial):
        """Write a reserved trial's status, times and results.

        FailedUpdate if the trial is not reserved under this trial's reservation
        (it was lost and reserved again: see :mod:`orion_sql.fencing`).
        """
        complete = lambda conn: self._completion(conn, trial)  # noqa: E731
        outcome = recovery.trial_columns(trial, "status", "end_time")
        if self._db.run(complete, write=True, after_lost=recovery.outcome_or_redo(complete, trial, outcome)) is None:
            raise FailedUpdate(f"trial {trial.id} of experiment {trial.experiment!r}: not reserved by this reservation")
        return 1

    @functools.cached_property
    def _completion(self):
        return statements.completion(self._db.dialect)

    def set_trial_status(self, trial, status, heartbeat=None, was=None):
        """Move a trial from status `was` (default: trial.status) to `status`.

        The heartbeat is the server's clock unless a datetime (or ISO-8601 text) is given. A number
        means the server's clock too: Oríon 0.2.7's ``ExperimentClient.reserve``
        passes its heartbeat interval (seconds) here. FailedUpdate when the stored
        status is not `was`.
        """
        was = was or trial.status
        validate_status(status)
        validate_status(was)
        if isinstance(heartbeat, (int, float)) and not isinstance(heartbeat, bool):
            heartbeat = None
        clause = and_(self._trial_clause(trial.id, trial.experiment), trials.c.status == was)
        if heartbeat is not None:
            # An explicit heartbeat (Oríon's tests, `orion db` tools): written as given, unfenced.
            fields = {"status": status, "heartbeat": heartbeat}
            if not self._db.run(rows.set_trial_fields(clause, fields), write=True):
                raise FailedUpdate(f"trial {trial.id} of experiment {trial.experiment!r} is not {was!r}")
            trial.status = status
            return
        mine = self._trial_clause(trial.id, trial.experiment)
        statement = statements.status_change(self._db.dialect, mine, was, status)

        def move(conn):
            return statement(conn, fencing.token_of(trial))

        after_lost = recovery.outcome_or_redo(move, trial, {"status": status})
        moved = self._db.run(move, write=True, autocommit=True, after_lost=after_lost)
        if not moved:
            fenced = " by this reservation" if was == "reserved" else ""
            raise FailedUpdate(f"trial {trial.id} of experiment {trial.experiment!r}: not {was!r}{fenced}")
        trial.status = status
        if status == "reserved":
            trial.start_time = moved.start_time

    def fetch_pending_trials(self, experiment):
        return self._trials_with_status(experiment, PENDING_STATUSES)

    def fetch_noncompleted_trials(self, experiment):
        return self._trials_with_status(experiment, tuple(status for status in TRIAL_STATUSES if status != "completed"))

    def fetch_trials_by_status(self, experiment, status):
        return self._trials_with_status(experiment, (status,))

    def count_completed_trials(self, experiment):
        return self._count_trials(experiment, "completed")

    def count_broken_trials(self, experiment):
        return self._count_trials(experiment, "broken")

    def update_heartbeat(self, trial):
        """Set a reserved trial's heartbeat to the server's clock; returns 1, or 0 if the
        trial is not reserved under this trial's reservation, by this process
        (see :mod:`orion_sql.fencing`)."""
        statement = statements.heartbeat(self._db.dialect, self._trial_clause(trial.id, trial.experiment))
        token = fencing.token_of(trial)
        beat = lambda conn: conn.execute(statement, token).rowcount  # noqa: E731
        return self._db.run(beat, write=True, idempotent=True, autocommit=True)

    # --- helpers -----------------------------------------------------------------

    def _trial_clause(self, trial_hash, experiment_id, where=None) -> ColumnElement[bool]:
        return and_(
            trials.c.hash == trial_hash,
            trials.c.experiment_id == experiment_id,
            self._filter(where, TRIAL_FILTERS),
        )

    def _trials_with_status(self, experiment, statuses: tuple[str, ...]) -> list[Trial]:
        if self._cache is not None:
            return self._cache.trials(self._db, experiment.id, statuses)
        return self._select_trials(and_(trials.c.experiment_id == experiment.id, trials.c.status.in_(statuses)))

    def _count_trials(self, experiment, status: str) -> int:
        statement = select(func.count()).where(trials.c.experiment_id == experiment.id, trials.c.status == status)
        return self._db.run(lambda conn: conn.execute(statement).scalar_one(), write=False, autocommit=True)

    def _select_trials(self, clause: ColumnElement[bool]) -> list[Trial]:
        """Trials matching `clause`, by submit time, with their values (one snapshot)."""
        order = self._db.dialect.nulls_first(trials.c.submit_time)
        found = self._db.run(lambda conn: statements.trial_documents(conn, clause, order), write=False)
        return [Trial(**document) for document in found]
