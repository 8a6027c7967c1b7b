"""Heartbeats and the lost-trial threshold follow the database server's clock.

Workers on machines whose clocks disagree must not declare each other's trials
lost, so neither the heartbeats written by ``reserve_trial``, ``update_heartbeat``
and ``set_trial_status`` nor the threshold of ``fetch_lost_trials`` may come from
the client's clock. A skewed client cannot be faked in-process (``datetime.now``
is C code), so the proof has three parts:

- what is written equals the server's clock, read by SQL right after;
- on PostgreSQL, nothing the client sends carries a time (no datetime parameter,
  no timestamp literal), so a client clock cannot reach a heartbeat or a threshold;
- the threshold is the server's "now" minus five heartbeats: a heartbeat that is old
  by the server's clock is lost even if a client one hour behind would call it recent,
  and a recent one is not lost even if a client one hour ahead would call it old.

SQLite's "server" is the machine holding the file, which every worker shares; its
clock is read when a statement runs, not when it is built (statements are retried
and polled, as the SQLite algorithm lock's takeover does).
"""
from __future__ import annotations

import datetime
import re
import time

import orion.core
import pytest
from orion.core.worker.trial import Trial
from sqlalchemy import event, select, text

from orion_sql import fencing
from support.documents import experiment_of, new_experiment

SERVER_NOW = {
    "postgresql": text("SELECT timezone('UTC', clock_timestamp())::timestamp(6)::text"),
    "sqlite": text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"),
    # SYSDATE, not UTC_TIMESTAMP: the time the function runs (the session is in UTC).
    "mariadb": text("SELECT CAST(CONVERT_TZ(SYSDATE(6), @@session.time_zone, '+00:00') AS CHAR)"),
}
TIMESTAMP_LITERAL = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")


def server_now(storage) -> datetime.datetime:
    """The database server's clock, naive UTC, read with SQL of the test's own."""
    with storage.database.engine.connect() as conn:
        return datetime.datetime.fromisoformat(conn.execute(SERVER_NOW[storage.database.dialect.name]).scalar_one())


def register(storage, experiment, x: float, status="new") -> Trial:
    trial = Trial(experiment=experiment.id, status=status, params=[{"name": "x", "type": "real", "value": x}])
    return storage.register_trial(trial)


def assert_server_time(storage, written: datetime.datetime) -> None:
    """`written` is the server's clock of less than a second ago.

    SQLite's own clock has millisecond resolution, hence the little slack below zero.
    """
    lag = server_now(storage) - written
    assert -datetime.timedelta(milliseconds=2) <= lag < datetime.timedelta(seconds=1), f"written {written}, {lag} ago"


def test_heartbeats_written_are_the_servers_clock(storage):
    experiment = experiment_of(storage, new_experiment(storage, "clock"))
    register(storage, experiment, 0.5)
    register(storage, experiment, 1.5)

    reserved = storage.reserve_trial(experiment)
    assert_server_time(storage, reserved.heartbeat)
    assert_server_time(storage, reserved.start_time)

    time.sleep(0.2)
    assert storage.update_heartbeat(reserved) == 1
    beaten = storage.get_trial(reserved)
    assert beaten.heartbeat > reserved.heartbeat
    assert_server_time(storage, beaten.heartbeat)

    time.sleep(0.2)
    storage.set_trial_status(beaten, "interrupted")
    assert_server_time(storage, storage.get_trial(reserved).heartbeat)


def test_the_server_clock_is_read_when_a_statement_runs(storage):
    """One statement built once and run twice reads the clock twice."""
    statement = select(storage.database.dialect.now())
    with storage.database.engine.connect() as conn:
        first = conn.execute(statement).scalar_one()
        time.sleep(0.3)
        second = conn.execute(statement).scalar_one()
    assert second - first >= datetime.timedelta(seconds=0.3)
    assert_server_time(storage, second)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_client_sends_no_time(storage):
    experiment = experiment_of(storage, new_experiment(storage, "clock"))
    register(storage, experiment, 0.5)
    sent = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    event.listen(storage.database.engine, "before_cursor_execute", capture)
    try:
        trial = storage.reserve_trial(experiment)
        storage.update_heartbeat(trial)
        storage.fetch_lost_trials(experiment)
        storage.set_trial_status(trial, "interrupted")
    finally:
        event.remove(storage.database.engine, "before_cursor_execute", capture)

    # The reservation's UPDATE stands alone, or inside WITH (one statement, on PostgreSQL).
    writes = [(statement, parameters) for statement, parameters in sent if "UPDATE trials" in statement]
    assert len(writes) == 3 and all("heartbeat" in statement for statement, _ in writes)
    # The reservation token (the start time the server gave the reservation) is echoed
    # back for comparison only: no clock of the client's.
    assert any(isinstance(parameters, dict) and fencing.TOKEN in parameters for _, parameters in sent)
    for statement, parameters in sent:
        if isinstance(parameters, dict):
            values = [value for key, value in parameters.items() if key != fencing.TOKEN]
        else:
            values = parameters
        assert not [value for value in values if isinstance(value, (datetime.date, datetime.time))], statement
        assert not TIMESTAMP_LITERAL.search(statement), statement


def test_lost_trials_are_judged_by_the_servers_clock(storage):
    experiment = experiment_of(storage, new_experiment(storage, "clock"))
    threshold = datetime.timedelta(seconds=5 * orion.core.config.worker.heartbeat)
    margin = datetime.timedelta(seconds=30)
    now = server_now(storage)
    # Old by the server's clock; recent for a client one hour behind.
    silent = register(storage, experiment, 0.5, status="reserved")
    storage.set_trial_status(silent, "reserved", heartbeat=now - threshold - margin, was="reserved")
    # Recent by the server's clock; old for a client one hour ahead.
    alive = register(storage, experiment, 1.5, status="reserved")
    storage.set_trial_status(alive, "reserved", heartbeat=now - threshold + margin, was="reserved")

    assert [trial.id for trial in storage.fetch_lost_trials(experiment)] == [silent.id]
