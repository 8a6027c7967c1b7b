"""The storage's hot-path statements, built once per storage and bound per call.

Reading trials with their values, reserving a trial and completing one run many
times per trial; building their statements once keeps SQLAlchemy's per-call work
to binding. Where the database can write inside ``WITH`` (PostgreSQL), reserving
a trial (with its values) and completing one (with its results) are single
statements: one round trip each.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orion.core.worker.trial import Trial
from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    Text,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.sql import CompoundSelect, Update
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import fencing, mapping
from orion_sql.database import process_name
from orion_sql.dialects import Dialect
from orion_sql.models import PENDING_STATUSES, ParamRow, ResultRow, TrialRow, results, trials
from orion_sql.prepared import Prepared

# What push_trial_results writes besides results. The trial's `id` (hash of params,
# lie and parent) and experiment select the row, so those are already equal.
PUSHED_FIELDS = ("status", "worker", "exp_working_dir", "submit_time", "start_time", "end_time", "heartbeat")

# Aliases are evaluated at import, where X | None needs Python 3.10: hence Optional.
# Reservation: (connection, experiment id, worker name) -> the reserved trial's document, if any.
Reserve = Callable[[Connection, int, str], dict | None]
# Completion: (connection, the completed trial) -> the trial's row id, None if it was not reserved.
Complete = Callable[[Connection, Trial], int | None]


def values_of_trials(trial_ids, json_text: bool = False, ordered: bool = True) -> CompoundSelect:
    """Params and results of the trials whose ids `trial_ids` gives, in order (unless not
    `ordered`), in one statement; each value decoded, or (`json_text`) the JSON text the
    codec wrote."""

    def values_of(model, kind: str):
        value = cast(model.value, Text).label("value") if json_text else model.value
        columns = (literal(kind).label("kind"), model.trial_id, model.position, model.name, model.type, value)
        return select(*columns).where(model.trial_id.in_(trial_ids))

    values = union_all(values_of(ParamRow, "params"), values_of(ResultRow, "results"))
    return values.order_by("trial_id", "kind", "position") if ordered else values


def trial_documents(conn: Connection, clause, *order_by) -> list[dict]:
    """The trials matching `clause`, ordered by `order_by` then id, as the dictionaries
    ``Trial(**document)`` takes: two statements whatever their number, which must run
    in one snapshot. (One joined statement repeats each trial's columns for every
    value: measured slower on both databases.)"""
    rows = conn.execute(select(trials).where(clause).order_by(*order_by, TrialRow.id)).all()
    if not rows:
        return []
    values = conn.execute(values_of_trials(select(TrialRow.id).where(clause))).mappings()
    return trial_documents_of([row._mapping for row in rows], values)


def trial_documents_of(rows: Sequence[Mapping], values) -> list[dict]:
    """Trial documents from trial rows (mappings of their columns) and the rows of their
    values, in order (:func:`values_of_trials`)."""
    by_trial: dict[int, dict[str, list]] = {row["id"]: {"params": [], "results": []} for row in rows}
    for value in values:
        by_trial[value["trial_id"]][value["kind"]].append(mapping.value_document(value))
    return [mapping.trial_document(row, **by_trial[row["id"]]) for row in rows]


def completion(dialect: Dialect) -> Complete:
    """push_trial_results' work: write a reserved trial's PUSHED_FIELDS and replace its
    results; returns the trial's row id, or None when the trial is not reserved under
    the caller's reservation (see :mod:`orion_sql.fencing`)."""
    columns = [*(mapping.TRIAL_FIELDS[key][0] for key in PUSHED_FIELDS), "written_times"]
    set_trial = (
        update(trials)
        .where(
            TrialRow.hash == bindparam("trial_hash"),
            TrialRow.experiment_id == bindparam("experiment"),
            fencing.held(),
        )
        .values({column: bindparam(f"new_{column}") for column in columns})
    )
    if dialect.writes_in_with:
        return _completion_in_one_statement(set_trial.returning(TrialRow.id), dialect)
    if not dialect.update_returning:
        return _completion_through_last_insert_id(set_trial)
    clear_results = Prepared(delete(ResultRow).where(ResultRow.trial_id == bindparam("trial")))
    add_results = Prepared(insert(results))
    returning_id = Prepared(set_trial.returning(TrialRow.id))

    def update_then_replace(conn: Connection, trial: Trial) -> int | None:
        binds, new_results = _completion_binds(trial)
        trial_id = returning_id.execute(conn, binds).scalar()
        if trial_id is not None:
            clear_results.execute(conn, {"trial": trial_id})
            rows = mapping.value_rows(trial_id, new_results)
            if rows:
                add_results.execute(conn, rows)
        return trial_id

    return update_then_replace


def _completion_through_last_insert_id(set_trial: Update) -> Complete:
    """Completion where UPDATE returns nothing (MariaDB). The UPDATE leaves the row's
    id, and whether the trial had results, in LAST_INSERT_ID (:func:`_reported_id`);
    the results' INSERT (an upsert by position) takes the id from there and hands it
    back in its reply, and only a trial that had results then gets a DELETE of those
    beyond the new ones: a freshly reserved trial's completion is two statements.
    (The UPDATE's own reply cannot hand the id back: a trigger on trials, revision
    0006, clears it from the reply of the statement that fires it.)"""
    has_results = exists().where(ResultRow.trial_id == TrialRow.id)
    reporting = Prepared(set_trial.values(id=_reported_id(has_results)))
    reported = select(literal_column("LAST_INSERT_ID()", BigInteger))
    beyond = Prepared(
        delete(ResultRow).where(ResultRow.trial_id == bindparam("trial"), ResultRow.position >= bindparam("count"))
    )

    def update_then_replace(conn: Connection, trial: Trial) -> int | None:
        binds, new_results = _completion_binds(trial)
        if not reporting.execute(conn, binds).rowcount:
            return None
        rows = mapping.value_rows(None, new_results)
        if rows:  # (Oríon's completions have results)
            numbered = {f"{key}_{index}": value for index, row in enumerate(rows) for key, value in row.items()}
            trial_id, had_results = _decoded(_results_upsert(len(rows)).execute(conn, numbered).lastrowid)
        else:
            trial_id, had_results = _decoded(conn.execute(reported).scalar_one())
        if had_results:
            beyond.execute(conn, {"trial": trial_id, "count": len(rows)})
        return trial_id

    return update_then_replace


def _completion_in_one_statement(set_trial: Update, dialect: Dialect) -> Complete:
    """Completion as one statement: the UPDATE in ``WITH``, the results beyond the new
    ones deleted, the new ones upserted by (trial_id, position). The delete and the
    upsert touch different rows, so the order PostgreSQL runs them in is immaterial."""
    updated = set_trial.cte("updated")
    stale = (
        delete(ResultRow)
        .where(ResultRow.trial_id == updated.c.id, ResultRow.position >= bindparam("count"))
        .cte("stale")
    )
    statement = select(updated.c.id).add_cte(stale, dialect.upsert_values(results, updated.c.id, "new_values"))

    def update_and_replace(conn: Connection, trial: Trial) -> int | None:
        binds, new_results = _completion_binds(trial)
        rows = mapping.value_rows(None, new_results)
        payload = {"count": len(rows), "new_values": dialect.values_payload(rows)}
        return conn.execute(statement, {**binds, **payload}).scalar()

    return update_and_replace


def _completion_binds(trial: Trial) -> tuple[dict[str, Any], list]:
    """The binds of a completion's UPDATE (``trial_hash``, ``experiment``, ``new_<column>``),
    and the trial's new results. Read from the trial's attributes, as ``Trial.to_dict``
    reads them, without what it adds: a copy of every param and the trial's hash
    computed twice more."""
    pushed = {key: getattr(trial, key) for key in PUSHED_FIELDS}
    columns = mapping.whole_trial_columns(pushed)
    binds = {"trial_hash": trial.id, "experiment": trial.experiment, **fencing.token_of(trial)}
    binds.update((f"new_{column}", value) for column, value in columns.items())
    return binds, [result.to_dict() for result in trial.results]


def reservation(dialect: Dialect) -> Reserve:
    """reserve_trial's work: reserve the oldest pending trial of an experiment for a
    worker (recorded as the trial's ``worker``) and return the trial's document
    (what ``Trial(**document)`` takes), or None when none is pending.

    The UPDATE takes the oldest pending trial through one locked sub-select per
    pending status, each reading the first unlocked row of the (experiment_id,
    status, id) index: with ``status IN (...)``, planners walk the primary key
    through every completed trial instead.
    """

    def first_unlocked(status: str):
        return (
            select(TrialRow.id)
            .where(TrialRow.experiment_id == bindparam("experiment"), TrialRow.status == status)
            .order_by(TrialRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )

    if not dialect.update_returning:
        return _reservation_in_three_statements(dialect)
    candidates = union_all(*(select(first_unlocked(status).label("id")) for status in PENDING_STATUSES)).subquery()
    now = dialect.now()
    reserve = (
        update(trials)
        .where(TrialRow.id == select(func.min(candidates.c.id)).scalar_subquery())
        .values(status="reserved", start_time=now, heartbeat=now, worker=bindparam("reserving_worker"))
        .returning(trials)
    )
    if dialect.writes_in_with:
        return _reservation_in_one_statement(reserve)
    values = values_of_trials([bindparam("trial")])

    def reserve_then_read(conn: Connection, experiment_id: int, worker: str) -> dict | None:
        row = conn.execute(reserve, {"experiment": experiment_id, "reserving_worker": worker}).first()
        if row is None:
            return None
        return trial_documents_of([row._mapping], conn.execute(values, {"trial": row.id}).mappings())[0]

    return reserve_then_read


# The trial columns a document needs (see mapping.trial_document) that a reservation
# neither sets nor is given: what MariaDB's reservation reads of the row.
_NOT_SET_BY_RESERVATION = ("id", "hash", "exp_working_dir", "parent_hash", "submit_time", "end_time", "written_times")
# The (experiment_id, status, id) index: the oldest trial of a status is its first entry.
_PENDING_KEY = ("experiment_id", "status", "id")
_PENDING_INDEX = next(
    str(index.name) for index in trials.indexes if [column.name for column in index.columns] == [*_PENDING_KEY]
)


def _reservation_in_three_statements(dialect: Dialect) -> Reserve:
    """Reservation where UPDATE returns nothing (MariaDB), in one transaction: the oldest
    pending trial's row, locked (the first unlocked row of each pending status, read
    from the (experiment_id, status, id) index, the oldest of those kept) with the
    server's clock; the UPDATE of that row; its values. The row is read without the
    columns the reservation sets or the caller knows: each column costs PyMySQL a field
    description to parse. The unions have no ORDER BY (MariaDB sorts a union's result in
    a temporary table: measured 0.15-0.2 ms each); their few rows are ordered here."""
    unknown = [trials.c[column] for column in _NOT_SET_BY_RESERVATION]

    def first_unlocked(status: str):
        oldest = (
            select(*unknown, dialect.now().label("reserved_at"))
            .where(TrialRow.experiment_id == bindparam("experiment"), TrialRow.status == status)
            .order_by(TrialRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        return dialect.through_index(oldest, trials, _PENDING_INDEX)

    candidates = Prepared(union_all(*(first_unlocked(status) for status in PENDING_STATUSES)))
    reserve = Prepared(
        update(trials)
        .where(TrialRow.id == bindparam("trial"))
        .values(
            status="reserved",
            start_time=bindparam("now"),
            heartbeat=bindparam("now"),
            worker=bindparam("reserving_worker"),
        )
    )
    values = Prepared(values_of_trials([bindparam("trial")], ordered=False))

    def pick_reserve_read(conn: Connection, experiment_id: int, worker: str) -> dict | None:
        rows = candidates.mappings(conn, {"experiment": experiment_id})
        if not rows:
            return None
        row = min(rows, key=lambda candidate: candidate["id"])
        now = row["reserved_at"]
        reserve.execute(conn, {"trial": row["id"], "now": now, "reserving_worker": worker})
        reserved = {
            **row,
            "experiment_id": experiment_id,
            "status": "reserved",
            "start_time": now,
            "heartbeat": now,
            "worker": worker,
        }
        found = values.mappings(conn, {"trial": row["id"]})
        in_order = sorted(found, key=lambda value: (value["kind"], value["position"]))
        return trial_documents_of([reserved], in_order)[0]

    return pick_reserve_read


def _reservation_in_one_statement(reserve: Update) -> Reserve:
    """Reservation as ``WITH picked AS (UPDATE ... RETURNING *) SELECT picked, values``:
    one row per param and result of the reserved trial (one row if it has none)."""
    picked = reserve.cte("picked")
    values = values_of_trials(select(picked.c.id)).subquery("trial_values")
    statement = (
        select(
            picked, values.c.kind, values.c.trial_id, values.c.position, values.c.name, values.c.type, values.c.value
        )
        .select_from(picked.outerjoin(values, values.c.trial_id == picked.c.id))
        .order_by(values.c.kind, values.c.position)
    )

    def reserve_and_read(conn: Connection, experiment_id: int, worker: str) -> dict | None:
        rows = conn.execute(statement, {"experiment": experiment_id, "reserving_worker": worker}).all()
        if not rows:
            return None
        return trial_documents_of([rows[0]._mapping], [row._mapping for row in rows if row.kind is not None])[0]

    return reserve_and_read


# LAST_INSERT_ID is unsigned: ids (32-bit, negative ones included) travel shifted by 2**31.
_ID_SHIFT = 2**31


def _reported_id(flag: ColumnElement[bool] | None = None):
    """Where UPDATE returns nothing (MariaDB): the value to set ``id`` to (itself) so
    that the UPDATE leaves the row's id in LAST_INSERT_ID, with `flag` (a condition on
    the row, false if not given) as its lowest bit (see :func:`_decoded`)."""
    bit = cast(flag, Integer) if flag is not None else literal(0)
    reported = cast(func.last_insert_id((TrialRow.id + _ID_SHIFT) * 2 + bit), BigInteger)
    return reported.op("DIV")(2) - _ID_SHIFT


def _last_insert_id(again: bool = False) -> ColumnElement[int]:
    """The row id :func:`_reported_id` left in LAST_INSERT_ID, its flag dropped. With
    `again`, read as LAST_INSERT_ID(LAST_INSERT_ID()): the same value, and the reply of
    the statement (one that fires no trigger) then carries it. (Signed arithmetic:
    LAST_INSERT_ID is unsigned, and ids may be negative.)"""
    reported = literal_column("LAST_INSERT_ID(LAST_INSERT_ID())" if again else "LAST_INSERT_ID()", BigInteger)
    return cast(reported, BigInteger).op("DIV")(2) - _ID_SHIFT


def _decoded(reported: int) -> tuple[int, bool]:
    """The id and flag :func:`_reported_id` left in LAST_INSERT_ID."""
    return (reported >> 1) - _ID_SHIFT, bool(reported & 1)


@functools.cache
def _results_upsert(count: int) -> Prepared:
    """MariaDB: `count` results (binds ``<column>_<index>``) of the trial whose id
    :func:`_reported_id` left in LAST_INSERT_ID, replacing those at the same positions;
    the statement's reply carries LAST_INSERT_ID (see :func:`_completion_through_last_insert_id`)."""
    trial_id = _last_insert_id(again=True)
    columns = [column for column in results.c if column.name != "trial_id"]
    rows = [
        {"trial_id": trial_id, **{column.name: bindparam(f"{column.name}_{index}", type_=column.type)
                                  for column in columns}}
        for index in range(count)
    ]
    upsert = mysql.insert(results).values(rows)
    return Prepared(upsert.on_duplicate_key_update({column.name: upsert.inserted[column.name] for column in columns}))


# A status change: (connection, binds) -> the trial's new start time in a row, None if
# the trial was not in the expected status.
StatusChange = Callable[[Connection, dict], Any | None]


def status_change(dialect: Dialect, trial_clause, was: str, status: str, heartbeat=None) -> StatusChange:
    """set_trial_status' UPDATE of the trial `trial_clause` selects, from `was` to
    `status` (fenced when `was` is reserved; a new reservation gets a new token and
    this process as its worker), returning the start time (a row with ``start_time``)."""
    now = dialect.now()
    current = fencing.held() if was == "reserved" else TrialRow.status == was
    values: dict[str, Any] = {"status": status, "heartbeat": heartbeat or now}
    if status == "reserved":
        values.update(start_time=now, worker=process_name())
    change = update(trials).where(trial_clause, current).values(**values)
    if dialect.update_returning:
        returning = change.returning(TrialRow.start_time)
        return lambda conn, binds: conn.execute(returning, binds).first()
    # MariaDB: the UPDATE leaves the row's id in LAST_INSERT_ID, where the read of its
    # start time finds it.
    change = change.values(id=_reported_id())
    start_time = select(TrialRow.start_time).where(TrialRow.id == _last_insert_id())

    def change_then_read(conn: Connection, binds: dict):
        if not conn.execute(change, binds).rowcount:
            return None
        return conn.execute(start_time).first()

    return change_then_read


def heartbeat(dialect: Dialect, trial_clause) -> Update:
    """update_heartbeat's UPDATE of the trial `trial_clause` selects, fenced by the
    reservation token and by this process as its worker."""
    return update(trials).where(trial_clause, fencing.held(by_worker=process_name())).values(heartbeat=dialect.now())
