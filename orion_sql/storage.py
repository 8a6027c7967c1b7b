"""The `sql` storage: Oríon's storage protocol over SQLite or PostgreSQL.

Each protocol method is one short transaction. Return values and exceptions
follow Oríon's legacy storage (`orion/storage/legacy.py`); what differs is said
in the method's docstring.
"""
from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Mapping
from typing import Any

import orion.core
from orion.core.io.database.ephemeraldb import EphemeralDocument
from orion.core.worker.trial import Trial, validate_status
from orion.storage.base import (
    BaseStorageProtocol,
    FailedUpdate,
    LockAcquisitionTimeout,
    get_uid,
)
from sqlalchemy import Connection, Table, and_, delete, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import arguments, fencing, mapping, recovery, rows, statements
from orion_sql.algo_lock import algorithm_lock
from orion_sql.database import Database, MissingReference, process_name
from orion_sql.filters import BENCHMARK_FILTERS, EXPERIMENT_FILTERS, TRIAL_FILTERS
from orion_sql.location import redact, resolve_url
from orion_sql.models import PENDING_STATUSES, TRIAL_STATUSES, algo_locks, benchmarks, experiments, trials
from orion_sql.query import Collection, compile_filter
from orion_sql.schema import ensure_schema, upgrade_for_orion_db_upgrade
from orion_sql.settings import ConnectionSettings
from orion_sql.trial_cache import TrialCache


class SQL(BaseStorageProtocol):
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

    # --- shared steps ------------------------------------------------------------

    def _filter(self, query, collection: Collection) -> ColumnElement[bool]:
        return compile_filter(query, collection, self._db.dialect)

    def _fetch_documents(self, table: Table, collection: Collection, query, selection) -> list[dict]:
        statement = select(table.c.id, table.c.document).where(self._filter(query, collection)).order_by(table.c.id)
        found = self._db.run(lambda conn: conn.execute(statement).all(), write=False, autocommit=True)
        stored = [mapping.document_of(row) for row in found]
        if not selection:  # Oríon's flatten, which selections use, loses keys repeating a parent's
            return stored
        return [EphemeralDocument(document).select(selection) for document in stored]

    # --- benchmarks --------------------------------------------------------------

    def create_benchmark(self, config):
        """Insert a benchmark; sets ``config["_id"]``. DuplicateKeyError on a known name."""
        values = {**mapping.benchmark_columns(config), "id": mapping.explicit_id(config)}
        config["_id"] = self._db.run(
            lambda conn: rows.insert_keeping_id(conn, self._db.dialect, benchmarks, values), write=True
        )
        return 1

    def fetch_benchmark(self, query, selection=None):
        return self._fetch_documents(benchmarks, BENCHMARK_FILTERS, query, selection)

    def delete_benchmark(self, query):
        """Oríon 0.2.8: delete the benchmarks matching `query`; returns how many."""
        statement = delete(benchmarks).where(self._filter(query, BENCHMARK_FILTERS))
        return self._db.run(rows.rows_matched(statement), write=True, autocommit=True)

    # --- experiments -------------------------------------------------------------

    def create_experiment(self, config, algo_locked=0, algo_state=None, algo_heartbeat=None):
        """Insert an experiment and its algorithm lock together; sets ``config["_id"]``.

        The lock is free with no state (Oríon 0.2.7), or as the `algo_*` arguments
        say (Oríon 0.2.8, see :meth:`write_algorithm_lock`). DuplicateKeyError when
        (name, version) exists. An explicit ``_id`` is kept.
        """
        values = {**mapping.experiment_columns(config), "id": mapping.explicit_id(config)}
        lock = rows.algorithm_lock_row(
            self._db.dialect, None, config.get("algorithm", {}), algo_locked, algo_state, algo_heartbeat
        )

        def create(conn):
            experiment_id = rows.insert_keeping_id(conn, self._db.dialect, experiments, values)
            conn.execute(insert(algo_locks).values({**lock, "experiment_id": experiment_id}))
            return experiment_id

        config["_id"] = self._db.run(create, write=True)
        return 1

    def delete_experiment(self, experiment=None, uid=None):
        """Delete an experiment; its trials and algorithm lock go with it (cascade)."""
        uid = arguments.experiment_id(experiment, uid)
        statement = delete(experiments).where(experiments.c.id == uid)
        return self._db.run(rows.rows_matched(statement), write=True, autocommit=True)

    def update_experiment(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of an experiment document (dotted keys set nested fields).

        Returns the number of experiments matched. ``_id`` cannot be changed.
        """
        uid = arguments.experiment_id(experiment, uid)
        clause = and_(experiments.c.id == uid, self._filter(where, EXPERIMENT_FILTERS))

        def update_documents(conn):
            found = conn.execute(select(experiments).where(clause).with_for_update()).all()
            for row in found:
                document = mapping.apply_set(row.document, kwargs, row.id)
                columns = mapping.experiment_columns(document)
                conn.execute(update(experiments).where(experiments.c.id == row.id).values(**columns))
            return len(found)

        return self._db.run(update_documents, write=True)

    def fetch_experiments(self, query, selection=None):
        return self._fetch_documents(experiments, EXPERIMENT_FILTERS, query, selection)

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
            return conn.execute(statement, fencing.token_of(trial)).first()

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

    # --- algorithm lock ----------------------------------------------------------

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

    # --- helpers -----------------------------------------------------------------

    def _trial_clause(self, trial_hash, experiment_id, where=None) -> ColumnElement[bool]:
        return and_(
            trials.c.hash == trial_hash,
            trials.c.experiment_id == experiment_id,
            self._filter(where, TRIAL_FILTERS),
        )

    def _trials_with_status(self, experiment, statuses: tuple[str, ...]) -> list[Trial]:
        if self._cache is not None:
            return self._cache.trials(self._db, experiment.id, keep=lambda trial: trial.status in statuses)
        return self._select_trials(and_(trials.c.experiment_id == experiment.id, trials.c.status.in_(statuses)))

    def _count_trials(self, experiment, status: str) -> int:
        statement = select(func.count()).where(trials.c.experiment_id == experiment.id, trials.c.status == status)
        return self._db.run(lambda conn: conn.execute(statement).scalar_one(), write=False, autocommit=True)

    def _select_trials(self, clause: ColumnElement[bool]) -> list[Trial]:
        """Trials matching `clause`, by submit time, with their values (one snapshot)."""
        order = trials.c.submit_time.asc().nulls_first()
        found = self._db.run(lambda conn: statements.trial_documents(conn, clause, order), write=False)
        return [Trial(**document) for document in found]
