"""A per-process cache of each experiment's trials: reads fetch only what changed.

Oríon 0.2.7 reads every trial of the experiment on each suggest. This cache keeps,
per experiment, the trials last read, with three numbers from the database
(revision 0003, kept by triggers on every write, whoever writes):

- ``incarnation``, random per experiment row: a deleted experiment whose id is
  reused is a different one;
- ``trial_deletions``: a deleted trial makes the next read start over;
- ``run``: which run of the database server the marks were taken in (a restart
  makes the next read start over: after a crash, MariaDB's sequence hands out again
  values drawn after its last durable write, PostgreSQL its transaction ids);
- ``mark``: what the snapshot of the last read had seen of trial changes. A
  row's ``change_stamp`` is set by whichever transaction writes it; what stamps
  and marks are (a transaction id and a snapshot on PostgreSQL, a per-experiment
  counter on SQLite, a sequence's value drawn behind a barrier on MariaDB) is the
  dialect's (:meth:`Dialect.trial_change_mark`, :meth:`Dialect.unseen_trial_changes`,
  :meth:`Dialect.trial_change_barrier`).

A read asks one small statement whether anything changed (:func:`check_statement`);
if not, it returns copies of the cached trials. Otherwise it passes the dialect's
barrier, if it has one (MariaDB: wait for the experiment's writers under way), then
reads, in one snapshot, the trial rows that snapshot ``mark`` did not see, with
their values, and merges them. Returned trials are the caller's: :class:`SharedTrial` views of the
cached ones, which copy their params and results at the first touch and keep the
cached trial's hashes while those are still shared.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import copyreg
import dataclasses
import datetime
import gc
import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from orion.core.worker.trial import Trial
from sqlalchemy import CompoundSelect, Connection, Select, bindparam, exists, select
from sqlalchemy.exc import DBAPIError

from orion_sql import mapping
from orion_sql.database import Database
from orion_sql.dialects import Dialect, ErrorKind
from orion_sql.exact_json import loads_value
from orion_sql.models import ExperimentRow, TrialRow, experiments, trials
from orion_sql.statements import values_of_trials

# Experiments not read for this long are dropped at the next read of any other.
IDLE_SECONDS = 600.0
_EARLIEST = datetime.datetime.min


@dataclasses.dataclass
class _Experiment:
    """What the cache holds of one experiment."""

    incarnation: int
    deletions: int
    run: Any
    mark: Any
    by_id: dict[int, _Stored]
    order: list[int]  # ids by submit time (none first), then id: as the storage sorts
    read_at: float = 0.0
    # Ids by status, and each id's index in `order`: a status read touches only its trials.
    by_status: collections.defaultdict[str, set[int]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(set)
    )
    position: dict[int, int] = dataclasses.field(default_factory=dict)


class TrialCache:
    """Trials of the experiments this process read, at most `max_trials` of them
    (beyond, the experiments read longest ago are dropped; the one being read is
    always kept whole)."""

    def __init__(self, dialect: Dialect, max_trials: int):
        self.max_trials = max_trials
        self._check = check_statement(dialect)
        self._barrier = dialect.trial_change_barrier()
        self._changed_rows, self._changed_values = changed_trials_statements(dialect)
        self._experiments: collections.OrderedDict[int, _Experiment] = collections.OrderedDict()
        self._lock = threading.Lock()

    def trials(self, database: Database, experiment_id: int, statuses: Iterable[str] | None = None) -> list[Trial]:
        """Copies of the experiment's trials (those with one of `statuses`, if given), as
        the database holds them now."""
        with self._lock, paused_gc():
            cached = self._experiments.get(experiment_id)
            since = cached.mark if cached else None
            check = {"experiment": experiment_id, "since": since}
            found = database.run(lambda conn: conn.execute(self._check, check).first(), write=False, autocommit=True)
            if found is None:
                self._experiments.pop(experiment_id, None)
                return []
            if cached is not None and _same(cached, found) and not found.changed:
                cached.mark = found.mark  # a later snapshot that saw nothing more
            else:
                barrier = self._pass_barrier(database, experiment_id)
                cached = database.run(lambda conn: self._refresh(conn, experiment_id, cached, barrier), write=False)
                if cached is None:  # deleted since the check
                    self._experiments.pop(experiment_id, None)
                    return []
                self._experiments[experiment_id] = cached
            cached.read_at = time.monotonic()
            self._experiments.move_to_end(experiment_id)
            self._forget_beyond_bounds()
            ids: Iterable[int] = cached.order
            if statuses is not None:
                chosen = itertools.chain.from_iterable(cached.by_status.get(status, ()) for status in statuses)
                ids = sorted(chosen, key=cached.position.__getitem__)
            return [shared_view(trial) for trial in map(cached.by_id.__getitem__, ids)]

    @property
    def size(self) -> int:
        """How many trials are cached."""
        return sum(len(cached.by_id) for cached in self._experiments.values())

    def _pass_barrier(self, database: Database, experiment_id: int) -> Any:
        """The dialect's barrier passed: a row of the mark it gives a snapshot taken
        after it and the server's run, or None (no barrier, the experiment is gone, or
        a writer held on past the barrier's wait)."""
        barrier = self._barrier
        if barrier is None:
            return None
        binds = {"experiment": experiment_id}
        try:
            return database.run(lambda conn: conn.execute(barrier, binds).first(), write=False, autocommit=True)
        except DBAPIError as error:
            if database.dialect.classify(error) is ErrorKind.LOCK_NOT_AVAILABLE:
                return None
            raise

    def _refresh(
        self, conn: Connection, experiment_id: int, cached: _Experiment | None, barrier: Any
    ) -> _Experiment | None:
        """The experiment's cache entry brought up to this transaction's snapshot, marked
        with the `barrier`'s mark (if passed in this run of the server), else with the
        snapshot's own (where the dialect has no barrier), else with the mark it was read
        since (None: read whole next time)."""
        since = cached.mark if cached else None
        found = conn.execute(self._check, {"experiment": experiment_id, "since": since}).first()
        if found is None:
            return None
        if cached is None or not _same(cached, found):
            cached, since = _Experiment(found.incarnation, found.deletions, found.run, None, {}, []), None
        binds = {"experiment": experiment_id, "since": since}
        rows = conn.execute(self._changed_rows, binds).all()
        if rows:
            _merge(cached, build_trials(rows, conn.execute(self._changed_values, binds)))
        if barrier is not None and barrier.run == found.run:
            cached.mark = barrier.mark
        else:
            cached.mark = found.mark if self._barrier is None else since
        return cached

    def _forget_beyond_bounds(self) -> None:
        """Drop idle experiments, then the least recently read ones over `max_trials`."""
        now = time.monotonic()
        total = sum(len(cached.by_id) for cached in self._experiments.values())
        for experiment_id in list(self._experiments)[:-1]:  # oldest read first, never the last
            cached = self._experiments[experiment_id]
            if total > self.max_trials or now - cached.read_at > IDLE_SECONDS:
                total -= len(cached.by_id)
                del self._experiments[experiment_id]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No garbage collection while thousands of trials are built: none of them is
    garbage yet, and in a large process each collection pass costs more than the
    objects themselves (measured: 4 to 6 times slower with it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _same(cached: _Experiment, found) -> bool:
    return (cached.incarnation, cached.deletions, cached.run) == (found.incarnation, found.deletions, found.run)


def _sort_key(trial: Trial) -> tuple:
    submitted = trial.submit_time
    if isinstance(submitted, str):  # written as ISO-8601 text: ordered as the time it denotes
        submitted = mapping.parse_time(submitted, "submit_time")
    return (submitted is not None, submitted or _EARLIEST, trial.id_override)


def _merge(cached: _Experiment, changed: Iterable[_Stored]) -> None:
    """Put `changed` trials in the cache, keeping the order by (submit time, id) and
    the ids by status."""
    by_id, order, by_status, position = cached.by_id, cached.order, cached.by_status, cached.position
    resort = False
    for trial in changed:
        trial_id = trial.id_override
        before = by_id.get(trial_id)
        by_id[trial_id] = trial
        by_status[trial._status].add(trial_id)
        if before is None:
            if order and _sort_key(trial) < _sort_key(by_id[order[-1]]):
                resort = True
            position[trial_id] = len(order)
            order.append(trial_id)
        else:
            if before._status != trial._status:
                by_status[before._status].discard(trial_id)
            resort = resort or before.submit_time != trial.submit_time
    if resort:
        order.sort(key=lambda trial_id: _sort_key(by_id[trial_id]))
        position.clear()
        position.update((trial_id, index) for index, trial_id in enumerate(order))


# --- statements ---------------------------------------------------------------


def check_statement(dialect: Dialect) -> Select:
    """The experiment's incarnation and trial deletions, this snapshot's change mark,
    the server's run, and whether a trial changed unseen by the snapshot of mark ``since``: one row, or
    none when the experiment does not exist (binds ``experiment``, ``since``)."""
    unseen = dialect.unseen_trial_changes(trials.c.change_stamp)
    changed = exists().where(TrialRow.experiment_id == ExperimentRow.id, unseen)
    return select(
        ExperimentRow.incarnation,
        dialect.trial_deletions(experiments).label("deletions"),
        dialect.trial_change_mark(experiments).label("mark"),
        dialect.server_run().label("run"),
        changed.label("changed"),
    ).where(ExperimentRow.id == bindparam("experiment"))


def changed_trials_statements(dialect: Dialect) -> tuple[Select, CompoundSelect]:
    """The trial rows of an experiment the snapshot of mark ``since`` did not see, and
    their params and results (as :func:`statements.values_of_trials` gives them)."""
    clause = (TrialRow.experiment_id == bindparam("experiment")) & dialect.unseen_trial_changes(trials.c.change_stamp)
    return select(*_ROW_COLUMNS).where(clause), values_of_trials(select(TrialRow.id).where(clause), json_text=True)


# --- trials ---------------------------------------------------------------------

# The trial columns build_trials unpacks, in its order.
_ROW_COLUMNS = (
    TrialRow.id, TrialRow.experiment_id, TrialRow.status, TrialRow.worker, TrialRow.exp_working_dir,
    TrialRow.heartbeat, TrialRow.submit_time, TrialRow.start_time, TrialRow.end_time, TrialRow.parent_hash,
    TrialRow.written_times,
)
_new = object.__new__
_Param, _Result = Trial.Param, Trial.Result
# The slots shared_view, isolated_copy and build_trials fill; a test checks Oríon's Trial still has these.
TRIAL_SLOTS = (
    "experiment", "_id", "_status", "worker", "_exp_working_dir", "heartbeat", "submit_time",
    "start_time", "end_time", "_results", "_params", "parent", "id_override",
)
_MUTABLE = (list, dict)
# Trial's own slots, which SharedTrial reaches past its properties. A SharedTrial leaves
# them unset while its params, results and parent are still the stored trial's.
_PARAMS_SLOT, _RESULTS_SLOT, _PARENT_SLOT = (Trial.__dict__[name] for name in ("_params", "_results", "parent"))
_get_params, _set_params = _PARAMS_SLOT.__get__, _PARAMS_SLOT.__set__
_get_results, _set_results = _RESULTS_SLOT.__get__, _RESULTS_SLOT.__set__
_get_parent, _set_parent = _PARENT_SLOT.__get__, _PARENT_SLOT.__set__
_HASH_KEYS: dict[tuple, tuple] = {}


class _Stored(Trial):
    """A trial as the cache keeps it: never handed out, never changed once built (a
    changed trial is built anew); ``hashes``: the hashes Oríon asked of it, by
    (ignore_fidelity, ignore_lie, ignore_parent), each computed once."""

    __slots__ = ("hashes",)


def _own_params(trial: SharedTrial) -> list:
    try:
        return _get_params(trial)
    except AttributeError:  # still the stored trial's: copied at the first touch
        trial.__dict__.pop("_hashes", None)
        params = [_value(_Param, value.name, value._type, value.value) for value in trial._source._params]
        _set_params(trial, params)
        return params


def _own_results(trial: SharedTrial) -> list:
    try:
        return _get_results(trial)
    except AttributeError:
        trial.__dict__.pop("_hashes", None)
        results = [_value(_Result, value.name, value._type, value.value) for value in trial._source._results]
        _set_results(trial, results)
        return results


def _parent(trial: SharedTrial):
    try:
        return _get_parent(trial)
    except AttributeError:
        return trial._source.parent


def _setter(set_slot):
    def set_own(trial: SharedTrial, value) -> None:
        trial.__dict__.pop("_hashes", None)
        set_slot(trial, value)

    return set_own


class _StoredField:
    """A field of a SharedTrial that reads the stored trial's until the trial's own is
    set: a non-data descriptor, so a value set goes to the instance's dict, and is read
    from there before this descriptor is asked."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __get__(self, trial, owner=None):
        if trial is None:
            return self
        return getattr(trial._source, self.name)


# Fields Oríon's hot paths do not read on every trial: read from the stored trial until
# set, so that a view holds 3 references instead of 13 (cheaper to make, and for the
# garbage collector to walk). `_status` (read by is_done for every trial) is copied.
_STORED_FIELDS = ("experiment", "_id", "worker", "_exp_working_dir", "heartbeat", "submit_time", "start_time",
                  "end_time", "id_override")


class SharedTrial(Trial):
    """A trial as a cached read returns it: the caller's own, made in about a
    microsecond whatever it holds.

    Its fields (status, times, worker, ...) are its own: those not set yet read the
    stored trial's. Its params, results and parent are the stored trial's until first
    touched (its own slots left unset till then): reading or setting ``_params``,
    ``params``, ``_results``, ``results`` (or anything built on them, ``to_dict``
    included) first gives the trial its own copies, list values copied too. So
    nothing done to it reaches the cache, and a read that only looks at statuses
    (Oríon's ``is_done``) copies nothing.

    Until its params, results or parent are touched, its hashes are the stored
    trial's (``_hashes``), each computed once per stored trial instead of at every
    read: Oríon's EVC code hashes every trial of the experiment twice per
    ``is_done``. The first touch drops ``_hashes``: from then on it is hashed as any
    Trial is, so changing it changes its hash.

    ``copy.copy``, ``copy.deepcopy`` and ``pickle`` give a plain :class:`Trial` with
    its own values: Oríon's EVC adapters deep-copy trials before changing them, and
    a pickled algorithm state never names this class.
    """

    # No __slots__ of its own: Trial.to_dict lists ``self.__slots__``, which must stay
    # Trial's. ``_source`` (the stored trial) and ``_hashes`` live in the instance's dict.
    _source: _Stored
    _hashes: dict

    _params = property(_own_params, _setter(_set_params))
    _results = property(_own_results, _setter(_set_results))
    parent = property(_parent, _setter(_set_parent))

    @staticmethod
    def compute_trial_hash(
        trial: Trial,
        ignore_fidelity: bool = False,
        ignore_experiment: bool | None = None,
        ignore_lie: bool = False,
        ignore_parent: bool = False,
    ) -> str:
        """Oríon's trial hash: the stored trial's while the trial is untouched."""
        if ignore_experiment is None:  # (else: deprecated, and it counts the experiment)
            try:
                return trial._hashes[ignore_fidelity, ignore_lie, ignore_parent]
            except KeyError:  # the first time this hash of the stored trial is asked for
                found = Trial.compute_trial_hash(
                    trial._source,
                    ignore_fidelity=ignore_fidelity, ignore_lie=ignore_lie, ignore_parent=ignore_parent,
                )
                key = (ignore_fidelity, ignore_lie, ignore_parent)
                trial._hashes[_HASH_KEYS.setdefault(key, key)] = found  # one key tuple for all trials
                return found
            except AttributeError:  # touched, or not a SharedTrial: hashed as any trial
                pass
        return Trial.compute_trial_hash(trial, ignore_fidelity, ignore_experiment, ignore_lie, ignore_parent)

    def __reduce_ex__(self, protocol):
        # Reduced as a plain Trial with its own values, rebuilt by the standard library alone.
        return copyreg._reconstructor, (Trial, object, None), isolated_copy(self).__getstate__()


for _name in _STORED_FIELDS:
    setattr(SharedTrial, _name, _StoredField(_name))


def shared_view(source: _Stored) -> SharedTrial:
    """A :class:`SharedTrial` of a stored trial."""
    made = _new(SharedTrial)
    made._status = source._status
    made._source = source
    made._hashes = source.hashes
    return made


def _value(kind, name, type_, value):
    made = _new(kind)
    made.name = name
    made._type = type_
    made.value = copy.deepcopy(value) if isinstance(value, _MUTABLE) else value
    return made


def _values_of(trial: Trial) -> tuple[list, list]:
    """The trial's params and results, without copying a SharedTrial's."""
    if type(trial) is not SharedTrial:
        return trial._params, trial._results
    try:
        params = _get_params(trial)
    except AttributeError:
        params = trial._source._params
    try:
        results = _get_results(trial)
    except AttributeError:
        results = trial._source._results
    return params, results


def isolated_copy(trial: Trial) -> Trial:
    """A plain Trial copy of `trial` sharing nothing mutable with it (about 1 µs;
    ``Trial(**doc)`` takes about 9): its params and results are new objects, list
    values copied."""
    params, results = _values_of(trial)
    made = _new(Trial)
    made.experiment = trial.experiment
    made._id = trial._id
    made._status = trial._status
    made.worker = trial.worker
    made._exp_working_dir = trial._exp_working_dir
    made.heartbeat = trial.heartbeat
    made.submit_time = trial.submit_time
    made.start_time = trial.start_time
    made.end_time = trial.end_time
    made.parent = trial.parent
    made.id_override = trial.id_override
    made._params = [_value(_Param, value.name, value._type, value.value) for value in params]
    made._results = [_value(_Result, value.name, value._type, value.value) for value in results]
    return made


def build_trials(rows, values) -> list[_Stored]:
    """Stored trials from trial rows and the rows of their values (ordered by trial, kind,
    position; values as JSON text), built as ``Trial(**document)`` would build them, without its checks:
    what the database holds passed them when written, and its constraints hold."""
    built = {}
    for trial_id, experiment, status, worker, working_dir, heartbeat, submitted, started, ended, parent, texts in rows:
        trial = _new(_Stored)
        trial.experiment = experiment
        trial._id = None
        trial._status = status
        trial.worker = worker
        trial._exp_working_dir = working_dir
        trial.heartbeat = heartbeat
        trial.submit_time = submitted
        trial.start_time = started
        trial.end_time = ended
        trial.parent = parent
        trial.id_override = trial_id
        trial.hashes = {}
        for key, text in (texts or {}).items():  # times written as ISO-8601 text
            setattr(trial, key, mapping.time_as_written(getattr(trial, key), text, key))
        trial._params = []
        trial._results = []
        built[trial_id] = trial
    for kind, trial_id, _position, name, type_, value in values:
        trial = built[trial_id]
        if kind == "params":
            trial._params.append(_value(_Param, name, type_, loads_value(value)))
        else:
            trial._results.append(_value(_Result, name, type_, loads_value(value)))
    return list(built.values())
