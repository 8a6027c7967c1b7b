"""The `sql` storage: Oríon's storage protocol over SQLite or PostgreSQL.

Each protocol method is one short transaction. Return values and exceptions
follow Oríon's legacy storage (`orion/storage/legacy.py`); what differs is said
in the method's docstring.
"""
from __future__ import annotations

import datetime
import functools
import os
from typing import Any, Callable, Mapping, Optional, TypeVar

import orion.core
from orion.core.io.database.ephemeraldb import EphemeralDocument
from orion.core.worker.trial import Trial, validate_status
from orion.storage.base import (
    BaseStorageProtocol,
    FailedUpdate,
    get_trial_uid_and_exp,
    get_uid,
)
from sqlalchemy import Connection, Table, and_, delete, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import codec, statements
from orion_sql.algo_lock import algorithm_lock
from orion_sql.database import Database, MissingReference, process_name
from orion_sql.engine import redact, resolve_url
from orion_sql.models import (
    PENDING_STATUSES,
    AlgoLockRow,
    BenchmarkRow,
    ExperimentRow,
    ParamRow,
    ResultRow,
    TrialRow,
)
from orion_sql.query import Collection, Field, compile_filter
from orion_sql.schema import ensure_schema

T = TypeVar("T")
experiments: Table = ExperimentRow.__table__
trials: Table = TrialRow.__table__
algo_locks: Table = AlgoLockRow.__table__
benchmarks: Table = BenchmarkRow.__table__

LOCK_EXPIRY_ENV = "ORION_SQL_LOCK_EXPIRY"
DEFAULT_LOCK_EXPIRY_SECONDS = 60.0


def _lifted(column, kind, path: str) -> Field:
    """A document key copied into a column; the document says whether it exists."""
    keys = path.split(".")
    return Field(column, kind, present=lambda dialect: dialect.json_exists(ExperimentRow.document, keys))


TRIAL_FILTERS = Collection(
    "trial",
    fields={key: Field(trials.c[column], kind) for key, (column, kind) in codec.TRIAL_FIELDS.items()},
    refused={key: "params and results live in their own tables" for key in codec.TRIAL_VALUE_LISTS},
)
EXPERIMENT_FILTERS = Collection(
    "experiment",
    fields={
        "_id": Field(ExperimentRow.id, int),
        "name": Field(ExperimentRow.name, str),
        "version": Field(ExperimentRow.version, int),
        "refers.parent_id": _lifted(ExperimentRow.parent_id, int, "refers.parent_id"),
        "refers.root_id": _lifted(ExperimentRow.root_id, int, "refers.root_id"),
        "metadata.user": _lifted(ExperimentRow.username, str, "metadata.user"),
        "metadata.datetime": _lifted(ExperimentRow.created_at, datetime.datetime, "metadata.datetime"),
    },
    document=ExperimentRow.document,
)
BENCHMARK_FILTERS = Collection(
    "benchmark",
    fields={"_id": Field(BenchmarkRow.id, int), "name": Field(BenchmarkRow.name, str)},
    document=BenchmarkRow.document,
)
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
        taken from a holder presumed dead. Default ``$ORION_SQL_LOCK_EXPIRY`` or 60.
    """

    def __init__(self, uri: Optional[str] = None, database: Optional[Mapping] = None, lock_expiry: Optional[float] = None):
        self._db = Database(resolve_url(uri, database))
        self._lock_expiry = float(lock_expiry or os.environ.get(LOCK_EXPIRY_ENV) or DEFAULT_LOCK_EXPIRY_SECONDS)
        if self._lock_expiry <= 0:
            raise ValueError(f"lock_expiry must be a positive number of seconds, got {self._lock_expiry}")
        ensure_schema(self._db)
        self._lock = algorithm_lock(self._db, self._lock_expiry)

    def __repr__(self) -> str:
        return f"SQL(uri={redact(self._db.url)!r})"

    def __getstate__(self) -> dict:
        return {"database": self._db, "lock_expiry": self._lock_expiry}

    def __setstate__(self, state: dict) -> None:
        self._db = state["database"]
        self._lock_expiry = state["lock_expiry"]
        self._lock = algorithm_lock(self._db, self._lock_expiry)

    # --- transactions ------------------------------------------------------------

    def _read(self, work: Callable[[Connection], T], atomic: bool = True) -> T:
        return self._db.run(work, write=False, repeatable=True, atomic=atomic)

    def _write(self, work: Callable[[Connection], T], repeatable: bool = False) -> T:
        return self._db.run(work, write=True, repeatable=repeatable)

    def _write_one(self, statement, repeatable: bool = False) -> int:
        """One write statement, committed by itself; the number of rows it matched."""
        return self._db.run(lambda conn: conn.execute(statement).rowcount, write=True, repeatable=repeatable, atomic=False)

    def _filter(self, query, collection: Collection) -> ColumnElement[bool]:
        return compile_filter(query, collection, self._db.dialect)

    def _insert(self, conn: Connection, table: Table, values: Mapping[str, Any]) -> int:
        """Insert one row, keeping an explicit `id` (Oríon's test helpers give them)."""
        explicit = values.get("id") is not None
        values = values if explicit else {key: value for key, value in values.items() if key != "id"}
        new_id = conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
        if explicit:
            self._db.dialect.sync_id_sequence(conn, table, new_id)
        return new_id

    def _fetch_documents(self, table: Table, collection: Collection, query, selection) -> list[dict]:
        statement = select(table.c.id, table.c.document).where(self._filter(query, collection)).order_by(table.c.id)
        rows = self._read(lambda conn: conn.execute(statement).all(), atomic=False)
        documents = [codec.document_of(row) for row in rows]
        if not selection:  # Oríon's flatten, which selections use, loses keys repeating a parent's
            return documents
        return [EphemeralDocument(document).select(selection) for document in documents]

    # --- benchmarks --------------------------------------------------------------

    def create_benchmark(self, config):
        """Insert a benchmark; sets ``config["_id"]``. DuplicateKeyError on a known name."""
        values = {**codec.benchmark_columns(config), "id": codec.explicit_id(config)}
        config["_id"] = self._write(lambda conn: self._insert(conn, benchmarks, values))
        return 1

    def fetch_benchmark(self, query, selection=None):
        return self._fetch_documents(benchmarks, BENCHMARK_FILTERS, query, selection)

    # --- experiments -------------------------------------------------------------

    def create_experiment(self, config):
        """Insert an experiment and its algorithm lock together; sets ``config["_id"]``.

        DuplicateKeyError when (name, version) exists. An explicit ``_id`` is kept.
        """
        values = {**codec.experiment_columns(config), "id": codec.explicit_id(config)}

        def create(conn):
            experiment_id = self._insert(conn, experiments, values)
            self._insert_algorithm_lock(conn, experiment_id, config.get("algorithm", {}))
            return experiment_id

        config["_id"] = self._write(create)
        return 1

    def delete_experiment(self, experiment=None, uid=None):
        """Delete an experiment; its trials and algorithm lock go with it (cascade)."""
        uid = get_uid(experiment, uid)
        return self._write_one(delete(experiments).where(ExperimentRow.id == uid))

    def update_experiment(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of an experiment document (dotted keys set nested fields).

        Returns the number of experiments matched. ``_id`` cannot be changed.
        """
        uid = get_uid(experiment, uid)
        clause = and_(ExperimentRow.id == uid, self._filter(where, EXPERIMENT_FILTERS))

        def update_documents(conn):
            rows = conn.execute(select(experiments).where(clause).with_for_update()).all()
            for row in rows:
                document = codec.apply_set(row.document, kwargs, row.id)
                columns = codec.experiment_columns(document)
                conn.execute(update(experiments).where(ExperimentRow.id == row.id).values(**columns))
            return len(rows)

        return self._write(update_documents)

    def fetch_experiments(self, query, selection=None):
        return self._fetch_documents(experiments, EXPERIMENT_FILTERS, query, selection)

    # --- trials ------------------------------------------------------------------

    def register_trial(self, trial):
        """Insert a trial with its params and results; sets ``trial.id_override``.

        DuplicateKeyError when the experiment already has a trial with this id.
        """
        document = trial.to_dict()
        columns = codec.trial_columns(document)

        def register(conn):
            trial_id = self._insert(conn, trials, columns)
            self._insert_values(conn, [trial_id], document)
            return trial_id

        try:
            trial.id_override = self._write(register)
        except MissingReference:
            raise ValueError(f"trial refers to experiment {trial.experiment!r}, which does not exist") from None
        return trial

    def delete_trials(self, experiment=None, uid=None, where=None):
        uid = get_uid(experiment, uid)
        clause = and_(TrialRow.experiment_id == uid, self._filter(where, TRIAL_FILTERS))
        return self._write_one(delete(trials).where(clause))

    def reserve_trial(self, experiment):
        """Reserve the oldest pending trial of the experiment, or return None.

        One UPDATE over locked sub-selects, with the trial's params and results (one
        statement on PostgreSQL, two on SQLite; see :func:`statements.reservation`).
        Concurrent callers skip each other's rows (PostgreSQL), or queue on the
        write lock (SQLite).
        """

        def reserve_one(conn):
            reserved = self._reservation(conn, experiment.id, process_name())
            return None if reserved is None else Trial(**statements.documents([reserved[0]], reserved[1])[0])

        # Not atomic: the reservation commits by itself, with no BEGIN or COMMIT round
        # trips; values read after it belong to this worker alone.
        return self._db.run(reserve_one, write=True, atomic=False)

    @functools.cached_property
    def _reservation(self):
        return statements.reservation(self._db.dialect)

    def fetch_trials(self, experiment=None, uid=None, where=None):
        uid = get_uid(experiment, uid)
        return self._select_trials(and_(TrialRow.experiment_id == uid, self._filter(where, TRIAL_FILTERS)))

    def update_trials(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of the matching trials; returns how many matched."""
        uid = get_uid(experiment, uid)
        clause = and_(TrialRow.experiment_id == uid, self._filter(where, TRIAL_FILTERS))
        return self._update_trials(clause, kwargs)

    def update_trial(self, trial=None, uid=None, experiment_uid=None, where=None, **kwargs):
        """Set fields of one trial (by its id and experiment); returns 1 or 0."""
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        return self._update_trials(self._trial_clause(trial_uid, experiment_uid, where), kwargs)

    def get_trial(self, trial=None, uid=None, experiment_uid=None):
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        found = self._select_trials(self._trial_clause(trial_uid, experiment_uid))
        return found[0] if found else None

    def fetch_lost_trials(self, experiment):
        """Reserved trials whose heartbeat is older than 5 heartbeats, by the server's clock."""
        silence = datetime.timedelta(seconds=orion.core.config.worker.heartbeat * 5)
        return self._select_trials(
            and_(
                TrialRow.experiment_id == experiment.id,
                TrialRow.status == "reserved",
                TrialRow.heartbeat <= self._db.dialect.now(minus=silence),
            )
        )

    def retrieve_result(self, trial, *args, **kwargs):
        """Return `trial` unchanged: its results arrive with it (as in legacy)."""
        return trial

    def push_trial_results(self, trial):
        """Write a reserved trial's status, times and results; FailedUpdate if not reserved."""
        document = trial.to_dict()
        columns = codec.trial_columns({key: document[key] for key in statements.PUSHED_FIELDS})
        binds = {"trial_hash": trial.id, "experiment": trial.experiment}
        binds.update((f"new_{column}", value) for column, value in columns.items())
        if self._write(lambda conn: self._completion(conn, binds, document["results"])) is None:
            raise FailedUpdate(f"trial {trial.id} of experiment {trial.experiment!r} is not reserved")
        return 1

    @functools.cached_property
    def _completion(self):
        return statements.completion(self._db.dialect)

    def set_trial_status(self, trial, status, heartbeat=None, was=None):
        """Move a trial from status `was` (default: trial.status) to `status`.

        The heartbeat is the server's clock unless a datetime is given. A number
        means the server's clock too: Oríon 0.2.7's ``ExperimentClient.reserve``
        passes its heartbeat interval (seconds) here. FailedUpdate when the stored
        status is not `was`.
        """
        was = was or trial.status
        validate_status(status)
        validate_status(was)
        if isinstance(heartbeat, (int, float)) and not isinstance(heartbeat, bool):
            heartbeat = None
        if heartbeat is not None:
            codec.trial_columns({"heartbeat": heartbeat})
        statement = (
            update(trials)
            .where(self._trial_clause(trial.id, trial.experiment), TrialRow.status == was)
            .values(status=status, heartbeat=heartbeat or self._db.dialect.now())
        )
        if not self._write_one(statement):
            raise FailedUpdate(f"trial {trial.id} of experiment {trial.experiment!r} is not {was!r}")
        trial.status = status

    def fetch_pending_trials(self, experiment):
        return self._trials_with_status(experiment, TrialRow.status.in_(PENDING_STATUSES))

    def fetch_noncompleted_trials(self, experiment):
        return self._trials_with_status(experiment, TrialRow.status != "completed")

    def fetch_trials_by_status(self, experiment, status):
        return self._trials_with_status(experiment, TrialRow.status == status)

    def count_completed_trials(self, experiment):
        return self._count_trials(experiment, "completed")

    def count_broken_trials(self, experiment):
        return self._count_trials(experiment, "broken")

    def update_heartbeat(self, trial):
        """Set a reserved trial's heartbeat to the server's clock; returns 1, or 0 if not reserved."""
        statement = (
            update(trials)
            .where(self._trial_clause(trial.id, trial.experiment, {"status": "reserved"}))
            .values(heartbeat=self._db.dialect.now())
        )
        return self._write_one(statement, repeatable=True)

    # --- algorithm lock ----------------------------------------------------------

    def initialize_algorithm_lock(self, experiment_id, algorithm_config):
        """Create the experiment's algorithm lock; DuplicateKeyError if it has one."""
        try:
            self._write(lambda conn: self._insert_algorithm_lock(conn, experiment_id, algorithm_config))
        except MissingReference:
            raise ValueError(f"experiment {experiment_id!r} does not exist") from None
        return 1

    def release_algorithm_lock(self, experiment=None, uid=None, new_state=None):
        """Free the lock from outside its holder (``orion db release``).

        Returns 1 when the lock is free afterwards; 0 when the experiment has no
        lock, or (PostgreSQL) a live worker holds it: a dead one's lock is
        released by the server with its connection.
        """
        return self._lock.release(get_uid(experiment, uid), new_state)

    def get_algorithm_lock_info(self, experiment=None, uid=None):
        """The stored algorithm state; ``locked`` is true while someone holds the lock."""
        return self._lock.info(get_uid(experiment, uid))

    def delete_algorithm_lock(self, experiment=None, uid=None):
        statement = delete(algo_locks).where(AlgoLockRow.experiment_id == get_uid(experiment, uid))
        return self._write_one(statement)

    def acquire_algorithm_lock(self, experiment=None, uid=None, timeout=60, retry_interval=1):
        """Hold the experiment's algorithm lock for a ``with`` block (see orion_sql.algo_lock).

        LockAcquisitionTimeout when not acquired within `timeout` seconds.
        """
        return self._lock.acquire(get_uid(experiment, uid), timeout, retry_interval)

    # --- helpers -----------------------------------------------------------------

    def _insert_algorithm_lock(self, conn: Connection, experiment_id, configuration) -> None:
        conn.execute(
            insert(algo_locks).values(
                experiment_id=experiment_id,
                configuration=configuration,
                state=None,
                locked=False,
                heartbeat=self._db.dialect.now(),
            )
        )

    def _trial_clause(self, trial_hash, experiment_id, where=None) -> ColumnElement[bool]:
        return and_(
            TrialRow.hash == trial_hash,
            TrialRow.experiment_id == experiment_id,
            self._filter(where, TRIAL_FILTERS),
        )

    def _trials_with_status(self, experiment, status_clause) -> list[Trial]:
        return self._select_trials(and_(TrialRow.experiment_id == experiment.id, status_clause))

    def _count_trials(self, experiment, status: str) -> int:
        statement = select(func.count()).where(TrialRow.experiment_id == experiment.id, TrialRow.status == status)
        return self._read(lambda conn: conn.execute(statement).scalar_one(), atomic=False)

    def _select_trials(self, clause: ColumnElement[bool]) -> list[Trial]:
        """Trials matching `clause`, by submit time, with their values (one snapshot)."""
        order = TrialRow.submit_time.asc().nulls_first()
        found = self._read(lambda conn: statements.trial_documents(conn, clause, order))
        return [Trial(**document) for document in found]

    def _insert_values(self, conn: Connection, trial_ids: list[int], document: Mapping, replace=False) -> None:
        """Insert (or `replace`) the params and/or results `document` gives, for these trials."""
        for key, model in (("params", ParamRow), ("results", ResultRow)):
            if key not in document:
                continue
            if replace:
                conn.execute(delete(model).where(model.trial_id.in_(trial_ids)))
            rows = [row for trial_id in trial_ids for row in codec.value_rows(trial_id, document[key] or [])]
            if rows:
                conn.execute(insert(model.__table__), rows)

    def _update_trials(self, clause: ColumnElement[bool], fields: Mapping[str, Any]) -> int:
        """Set `fields` (trial document keys) on the trials matching `clause`."""
        columns = codec.trial_columns(fields)
        expected_id = columns.pop("id", None)

        def update_rows(conn):
            if columns:
                ids = conn.execute(update(trials).where(clause).values(**columns).returning(TrialRow.id)).scalars().all()
            else:
                ids = conn.execute(select(TrialRow.id).where(clause).with_for_update()).scalars().all()
            if expected_id is not None and any(trial_id != expected_id for trial_id in ids):
                raise ValueError(f"a trial's _id cannot be changed (to {expected_id!r})")
            if ids:
                self._insert_values(conn, ids, fields, replace=True)
            return len(ids)

        return self._write(update_rows)
