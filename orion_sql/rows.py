"""Row writes the storage's methods are made of, each a function of a connection.

Documents become rows through :mod:`orion_sql.mapping`; these functions only
add what several protocol methods share: explicit ids, params and results, the
algorithm lock row, setting trial fields.
"""
from __future__ import annotations

import datetime
import pickle
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import mapping
from orion_sql.dialects import Dialect
from orion_sql.exact_json import to_json_safe
from orion_sql.models import TrialRow, params, results, trials

# The tables of a trial's value lists, by document key.
VALUE_TABLES = {"params": params, "results": results}


def rows_matched(statement) -> Callable[[Connection], int]:
    """Work running one write statement: the number of rows it matched."""
    return lambda conn: conn.execute(statement).rowcount


def insert_keeping_id(conn: Connection, dialect: Dialect, table: Table, values: Mapping[str, Any]) -> int:
    """Insert one row, keeping an explicit `id` (Oríon's test helpers give them); its id."""
    explicit = values.get("id") is not None
    values = values if explicit else {key: value for key, value in values.items() if key != "id"}
    new_id = conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
    if explicit:
        dialect.sync_id_sequence(conn, table, new_id)
    return new_id


def algorithm_lock_row(
    dialect: Dialect, experiment_id: int | None, configuration, locked=0, state=None, heartbeat=None
) -> dict[str, Any]:
    """The algo_locks row Oríon 0.2.8's ``write_algorithm_lock`` describes; its defaults
    are 0.2.7's new lock: free, no state, heartbeat now (the server's clock).

    A row written `locked` has no live holder: SQLite treats it as held until
    `lock_expiry` after its heartbeat (or ``orion db release``); PostgreSQL, where
    only a live holder's row lock holds it, as free, as it treats a dead holder's lock.
    """
    if heartbeat is not None and not isinstance(heartbeat, datetime.datetime):
        raise ValueError(f"algorithm lock heartbeat must be None or a datetime, got {heartbeat!r}")
    to_json_safe(configuration, "algorithm configuration")
    return {
        "experiment_id": experiment_id,
        "configuration": configuration,
        "state": None if state is None else pickle.dumps(state),
        "locked": bool(locked),
        "heartbeat": dialect.now() if heartbeat is None else mapping.naive_utc(heartbeat),
    }


def write_values(conn: Connection, trial_ids: list[int], document: Mapping, replace: bool = False) -> None:
    """Insert (or `replace`) the params and/or results `document` gives, for these trials."""
    for key, table in VALUE_TABLES.items():
        if key not in document:
            continue
        if replace:
            conn.execute(delete(table).where(table.c.trial_id.in_(trial_ids)))
        rows = [row for trial_id in trial_ids for row in mapping.value_rows(trial_id, document[key] or [])]
        if rows:
            conn.execute(insert(table), rows)


def set_trial_fields(clause: ColumnElement[bool], fields: Mapping[str, Any]) -> Callable[[Connection], int]:
    """Work setting `fields` (trial document keys) on the trials matching `clause`:
    the number of trials matched."""
    columns = mapping.trial_columns(fields)
    expected_id = columns.pop("id", None)
    written = mapping.written_times(fields)

    # With params or results alone, the row is still updated (to itself), so that
    # its change stamp (revision 0003's trigger) tells trial caches to read it again.
    changes = columns or {"status": TrialRow.status}

    def set_fields(conn: Connection) -> int:
        ids = updated_trial_ids(conn, clause, changes)
        if expected_id is not None and any(trial_id != expected_id for trial_id in ids):
            raise ValueError(f"a trial's _id cannot be changed (to {expected_id!r})")
        if ids:
            write_values(conn, list(ids), fields, replace=True)
        if ids and written:
            _merge_written_times(conn, list(ids), written)
        return len(ids)

    return set_fields


def updated_trial_ids(conn: Connection, clause: ColumnElement[bool], changes: Mapping[str, Any]) -> list[int]:
    """Update the trials matching `clause`; their ids. Where UPDATE returns nothing
    (MariaDB), the rows are locked and read first, then updated by id."""
    if conn.dialect.update_returning:
        return list(conn.execute(update(trials).where(clause).values(**changes).returning(TrialRow.id)).scalars())
    ids = list(conn.execute(select(TrialRow.id).where(clause).with_for_update()).scalars())
    if ids:
        conn.execute(update(trials).where(TrialRow.id.in_(ids)).values(**changes))
    return ids


def _merge_written_times(conn: Connection, trial_ids: list[int], written: Mapping[str, str | None]) -> None:
    """Record the times these trials were just given as text, forget those given otherwise."""
    found = conn.execute(select(TrialRow.id, TrialRow.written_times).where(TrialRow.id.in_(trial_ids))).all()
    merged = [
        {"trial": row.id, "texts": mapping.kept_written_times({**(row.written_times or {}), **written})}
        for row in found
    ]
    statement = update(trials).where(TrialRow.id == bindparam("trial")).values(written_times=bindparam("texts"))
    conn.execute(statement, merged)
