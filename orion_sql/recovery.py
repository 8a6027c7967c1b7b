"""Writes that are not idempotent, made safe to repeat after a lost connection.

When the connection drops during a write, its commit may or may not have reached
the server. Each function here builds the work :meth:`Database.run` runs instead
(``after_lost``): it finds the earlier attempt's outcome, or does the write anew.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from orion.core.worker.trial import Trial
from sqlalchemy import Connection, and_, select

from orion_sql import fencing, mapping, statements
from orion_sql.models import TrialRow

# Trials this process's reservations returned, as (database URL, trial row id): a
# reserved trial of this worker outside it was reserved by an attempt whose answer
# the lost connection swallowed. Per process: a forked child starts empty.
_handed_out: dict[int, set[tuple[str, int]]] = {}


def handed_out(url: str, reserved: dict) -> dict:
    """Remember that this process's reservation returned the trial document `reserved`."""
    _handed_out.setdefault(os.getpid(), set()).add((url, reserved["_id"]))
    return reserved


def reservation(url: str, reserve: statements.Reserve) -> Callable[[Connection, int, str], dict | None]:
    """Reservation after a lost connection: the trial an unanswered attempt reserved
    for this worker, if there is one, else a new reservation."""
    mine = _handed_out.setdefault(os.getpid(), set())

    def find_or_reserve(conn: Connection, experiment_id: int, worker: str) -> dict | None:
        clause = and_(TrialRow.experiment_id == experiment_id, TrialRow.status == "reserved", TrialRow.worker == worker)
        for document in statements.trial_documents(conn, clause):
            if (url, document["_id"]) not in mine:
                return document
        return reserve(conn, experiment_id, worker)

    return find_or_reserve


def outcome_or_redo(
    redo: Callable[[Connection], Any], trial: Trial, expected: dict[str, Any]
) -> Callable[[Connection], Any]:
    """A write to `trial` after a lost connection: redo it; if it matches nothing, it
    succeeded already when the stored trial shows the `expected` trial columns under
    the same reservation token (the write's own outcome, not another worker's)."""

    def check(conn: Connection) -> Any:
        done = redo(conn)
        if done:
            return done
        token = fencing.token_of(trial)[fencing.TOKEN]
        stored = conn.execute(
            select(TrialRow).where(
                TrialRow.hash == trial.id,
                TrialRow.experiment_id == trial.experiment,
                TrialRow.start_time.is_not_distinct_from(token),
            )
        ).scalar_one_or_none()
        if stored is not None and all(getattr(stored, column) == value for column, value in expected.items()):
            return stored.id
        return done

    return check


def trial_columns(trial: Trial, *keys: str) -> dict[str, Any]:
    """Columns of `trial` by document key (an attribute of the same name), as stored.
    Not through ``Trial.to_dict``: that computes the trial's hash twice and copies its
    params and results, on every write this guards."""
    return mapping.trial_columns({key: getattr(trial, key) for key in keys})
