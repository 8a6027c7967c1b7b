"""The algorithm lock changes hands at once, in arrival order, whatever happens to its holder.

1. A holder SIGKILLed while seven processes wait loses the lock within 1 s (on
   SQLite by seeing its pid gone, not by the 60 s lease), and the waiters get it
   in the order they arrived.
2. A failure while saving the state on release (a real database error, raised by
   a trigger) still frees the lock, and the stored state stays as it was.
3. Oríon's stress scenario passes beside two processes burning the CPU.
4. A holder whose connection the server cut saves its state only if nobody changed
   the stored one meanwhile, and says so in the log.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
import test_concurrency as concurrency
from test_concurrency import kill, start

from orion_sql import SQL
from support.documents import new_experiment
from support.forkserver import CONTEXT

WAITERS = 7
HELD_SECONDS = 0.05
BURNERS = 2


def _hold_until_killed(url: str, experiment_id, held) -> None:
    storage = SQL(uri=url)
    with storage.acquire_algorithm_lock(uid=experiment_id, timeout=60):
        held.set()
        time.sleep(600)


def _wait_then_hold_briefly(url: str, experiment_id) -> float:
    storage = SQL(uri=url)
    with storage.acquire_algorithm_lock(uid=experiment_id, timeout=120, retry_interval=1):
        acquired = time.time()
        time.sleep(HELD_SECONDS)
    return acquired


def _queued_waiters(storage: SQL, experiment_id) -> int:
    """Processes queued for the lock: SQLite's queue table, PostgreSQL's lock waits."""
    if storage._db.dialect.name == "sqlite":
        statement = sa.text("SELECT count(*) FROM algo_lock_waiters WHERE experiment_id = :id")
        params = {"id": experiment_id}
    elif storage._db.dialect.name == "mariadb":
        # A waiter blocks in the optimizer's row read ("Statistics"), before InnoDB lists
        # its transaction as waiting: its statement is what shows it.
        statement = sa.text(
            "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() AND command = 'Query'"
            " AND info LIKE '%FROM algo_locks%FOR UPDATE%' AND id <> CONNECTION_ID()"
        )
        params = {}
    else:
        statement = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        params = {}
    with storage._db.engine.connect() as conn:
        return conn.execute(statement, params).scalar_one()


@pytest.mark.slow
def test_a_killed_holder_loses_the_lock_within_a_second_and_waiters_follow_in_order(database_url):
    storage = SQL(uri=database_url)
    experiment_id = new_experiment(storage, "handover")["_id"]
    held = CONTEXT.Event()
    holder, _ = start(_hold_until_killed, database_url, experiment_id, held)
    waiters = []
    try:
        assert held.wait(timeout=60), "the holder never got the lock"
        for index in range(WAITERS):
            waiters.append(start(_wait_then_hold_briefly, database_url, experiment_id))
            deadline = time.monotonic() + 60
            while _queued_waiters(storage, experiment_id) < index + 1:  # each queued before the next comes
                assert time.monotonic() < deadline, f"waiter {index} never queued"
                time.sleep(0.02)
    finally:
        killed_at = time.time()
        kill(holder)
    outcomes = [results.get(timeout=120) for _, results in waiters]
    assert all(ok for _, ok, _ in outcomes), [value for _, ok, value in outcomes if not ok]
    acquired = [value for _, _, value in outcomes]
    for process, _ in waiters:
        process.join(timeout=10)
    assert acquired[0] - killed_at < 1.0, f"the first waiter got the lock {acquired[0] - killed_at:.2f}s after the kill"
    if storage._db.dialect.name == "sqlite":  # PostgreSQL's own lock queue orders its waiters
        assert acquired == sorted(acquired), "waiters were not served in the order they arrived"


FAILING_SAVE = {
    "sqlite": [
        "CREATE TRIGGER no_space BEFORE UPDATE OF state ON algo_locks"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION no_space() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$",
        "CREATE TRIGGER no_space BEFORE UPDATE OF state ON algo_locks FOR EACH ROW EXECUTE FUNCTION no_space()",
    ],
    "mariadb": [
        "CREATE TRIGGER no_space BEFORE UPDATE ON algo_locks FOR EACH ROW"
        " IF NOT (NEW.state <=> OLD.state) THEN"
        " SIGNAL SQLSTATE 'HY000' SET MESSAGE_TEXT = 'No space left on device'; END IF"
    ],
}


def test_a_failure_while_saving_the_state_still_frees_the_lock_and_keeps_the_state(storage):
    experiment_id = new_experiment(storage, "disk-full")["_id"]
    with storage.acquire_algorithm_lock(uid=experiment_id) as locked:
        locked.set_state({"saved": "before"})
    with storage._db.engine.begin() as conn:
        for statement in FAILING_SAVE[storage._db.dialect.name]:
            conn.execute(sa.text(statement))

    with pytest.raises(sa.exc.DBAPIError, match="disk is full|No space left"):
        with storage.acquire_algorithm_lock(uid=experiment_id) as locked:
            locked.set_state({"saved": "never"})

    info = storage.get_algorithm_lock_info(uid=experiment_id)
    assert (info.locked, info.state) == (False, {"saved": "before"})
    with storage._db.engine.begin() as conn:
        conn.execute(
            sa.text("DROP TRIGGER no_space" + (" ON algo_locks" if storage._db.dialect.name == "postgresql" else ""))
        )
    started = time.monotonic()
    with storage.acquire_algorithm_lock(uid=experiment_id, timeout=5) as locked:
        assert locked.state == {"saved": "before"}
    assert time.monotonic() - started < 1.0


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


# MariaDB's algorithm lock is PostgreSQL's (a row lock held by the holder's transaction,
# orion_sql.algo_lock.RowLock): its stress scenario runs in test_concurrency, and beside
# burners it took 5.5 minutes on a loaded 2-core machine (the suite's budget is 15).
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_orion_stress_scenario_beside_cpu_burning_processes(database_url):
    stop = CONTEXT.Event()
    burners = [CONTEXT.Process(target=_burn, args=(stop,), daemon=True) for _ in range(BURNERS)]
    for burner in burners:
        burner.start()
    try:
        concurrency.test_orion_stress_scenario(database_url)
    finally:
        stop.set()
        for burner in burners:
            burner.join(timeout=10)


# The statement that cuts the one session holding a transaction open (the lock holder's)
# from the server's side, and how to find that session.
HOLDER_SESSIONS = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND state = 'idle in transaction'",
    "mariadb": "SELECT trx_mysql_thread_id FROM information_schema.innodb_trx JOIN information_schema.processlist"
    " ON id = trx_mysql_thread_id WHERE db = DATABASE() AND trx_lock_structs > 0 AND id <> CONNECTION_ID()",
}
CUT = {"postgresql": "SELECT pg_terminate_backend(:session)", "mariadb": "KILL CONNECTION {session}"}


def _cut_the_holders_connection(storage: SQL) -> None:
    """Terminate, on the server, the connection whose transaction holds the lock."""
    dialect = storage._db.dialect.name
    deadline = time.monotonic() + 10  # MariaDB refreshes innodb_trx every 0.1 s at most
    with storage._db.engine.connect() as conn:
        while not (sessions := conn.execute(sa.text(HOLDER_SESSIONS[dialect])).scalars().all()):
            assert time.monotonic() < deadline, "the lock holder's session was not found"
            time.sleep(0.05)
        assert len(sessions) == 1, sessions
        conn.execute(sa.text(CUT[dialect].format(session=int(sessions[0]))), {"session": sessions[0]})


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("meanwhile", [None, {"saved by": "another holder"}])
def test_a_holder_that_lost_its_connection_saves_only_a_state_nobody_changed(database_url, meanwhile, caplog):
    """The server frees a holder's lock with its connection. On release the holder takes
    the lock again and saves its state if the stored one is still what it read (as if
    it had come after whoever held the lock meanwhile); else it drops its state and logs
    an error, and never raises (Oríon's observe would crash)."""
    storage, other = SQL(uri=database_url), SQL(uri=database_url)
    experiment_id = new_experiment(storage, "cut-off")["_id"]
    with storage.acquire_algorithm_lock(uid=experiment_id) as locked:
        locked.set_state({"saved by": "the first holder"})

    with storage.acquire_algorithm_lock(uid=experiment_id, timeout=5) as locked:
        _cut_the_holders_connection(other)
        if meanwhile is not None:
            with other.acquire_algorithm_lock(uid=experiment_id, timeout=5) as taken:
                assert taken.state == {"saved by": "the first holder"}
                taken.set_state(meanwhile)
        locked.set_state({"saved by": "the cut-off holder"})

    info = storage.get_algorithm_lock_info(uid=experiment_id)
    assert info.locked is False
    lost = [record for record in caplog.records if "lost the connection holding the algorithm lock" in record.message]
    assert len(lost) == 1, caplog.text
    if meanwhile is None:
        assert info.state == {"saved by": "the cut-off holder"}
        assert lost[0].levelname == "WARNING" and "saved the state" in lost[0].message
    else:
        assert info.state == meanwhile
        assert lost[0].levelname == "ERROR" and "was not saved" in lost[0].message
