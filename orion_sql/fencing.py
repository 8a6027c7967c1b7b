"""Fenced writes: a worker writes to a reserved trial only while its reservation stands.

The reservation's token is its start time: set from the database's clock each time
a trial is reserved, returned on the Trial that ``reserve_trial`` hands to Oríon,
and carried by Oríon, unchanged, into ``push_trial_results``, ``update_heartbeat``
and ``set_trial_status``. Once a trial is lost and reserved again, the token a
stale worker holds no longer matches: its writes match no row, fail with
FailedUpdate (or count 0 heartbeats), and change nothing. Heartbeats are also
fenced by the reserving process (the trial's ``worker``): Oríon's pacemaker reads
the trial afresh before each heartbeat, token included. Every dialect's write
statements take the fence from here.
"""

from __future__ import annotations

from orion.core.worker.trial import Trial
from sqlalchemy import and_, bindparam, or_
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import mapping
from orion_sql.models import TrialRow, UtcDateTime

# The bind parameter of prebuilt statements that carries the token.
TOKEN = "reservation_token"


def held(by_worker: str | None = None) -> ColumnElement[bool]:
    """True where a trial is still reserved under the token bound as ``TOKEN`` (a trial
    reserved without a start time has token None), and by the process `by_worker` if
    given (a trial registered as reserved names no worker)."""
    token = bindparam(TOKEN, type_=UtcDateTime)
    clause = and_(TrialRow.status == "reserved", TrialRow.start_time.is_not_distinct_from(token))
    if by_worker is None:
        return clause
    return and_(clause, or_(TrialRow.worker == by_worker, TrialRow.worker.is_(None)))  # None: registered reserved


def token_of(trial: Trial) -> dict:
    """The binds presenting `trial`'s reservation token."""
    return {TOKEN: mapping.trial_columns({"start_time": trial.start_time})["start_time"]}
