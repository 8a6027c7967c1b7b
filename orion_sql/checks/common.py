"""The checks every database gets: URL, connection, schema, reading and writing, clock."""
from __future__ import annotations

import datetime
import random
import time
import types
import uuid

from orion.core.worker.trial import Trial
from sqlalchemy import select

from orion_sql.checks.base import Check, CheckFailed, DialectChecks, Probe, passed, warning
from orion_sql.database import Database
from orion_sql.location import EXAMPLE_URL, ConfigurationError, redact
from orion_sql.schema import UPGRADE_COMMAND, SchemaState, head_revision, read_status
from orion_sql.storage import SQL

# Beyond this, the server's clock and this machine's disagree enough to mislead a reader
# comparing times Oríon wrote (this machine's clock) with heartbeats (the server's).
CLOCK_SKEW_WARNING_SECONDS = 5.0
WHERE_THE_URL_GOES = (
    "give the database as --url, as storage.database.host in the -c file or Oríon's configuration "
    "file (`orion-sql setup` writes it), or as ORION_DB_ADDRESS"
)


def check_url(probe: Probe):
    try:
        probe.url = probe.configured()
    except ConfigurationError as error:
        raise CheckFailed(str(error), f"{WHERE_THE_URL_GOES}, e.g. {EXAMPLE_URL!r} or a SQLite file path") from None
    return passed(redact(probe.url))


def check_connection(probe: Probe):
    dialect = probe.dialect
    started = time.monotonic()
    try:
        note = dialect.open(probe)
        with probe.database.transaction() as conn:
            version = dialect.version(conn)
    except CheckFailed:
        raise
    except Exception as error:
        found = f"{redact(probe.url)}: {first_line(error, probe)}"
        raise CheckFailed(found, dialect.connect_advice(probe.url)) from None
    milliseconds = (time.monotonic() - started) * 1000
    return passed(f"{version} answered in {milliseconds:.0f} ms" + (f"; {note}" if note else ""))


def check_schema(probe: Probe):
    status = read_status(probe.database)
    if status.state is SchemaState.CURRENT:
        return passed(f"at this orion_sql's head, {head_revision()}")
    if status.state is SchemaState.EMPTY:
        where = "the file" if probe.scratch else "the database"
        return passed(f"no orion_sql schema yet: the storage creates it on first use in {where} "
                      "(the read-write check tries it)")
    advice = (
        f"stop every worker, back the database up, then run `{UPGRADE_COMMAND}`"
        if status.state is SchemaState.OUTDATED
        else "install the orion_sql that upgraded it (every worker needs it)"
    )
    raise CheckFailed(str(status.refusal()), advice)


def check_read_write(probe: Probe):
    """Create an experiment and a trial, reserve and complete it, take the algorithm lock,
    delete the experiment: the storage's own calls, in one transaction rolled back."""
    step = "opening a write transaction"
    try:
        with probe.database.rolled_back() as scratch:
            step = "creating the schema (as the storage would)"
            storage = SQL.on(scratch)
            for what, call in _storage_calls(storage):
                step = what
                call()
    except Exception as error:
        raise CheckFailed(f"{step}: {first_line(error, probe)}", probe.dialect.write_advice(probe.url)) from None
    return passed("created an experiment and a trial, reserved and completed it, took the algorithm lock, "
                  "deleted the experiment; rolled back, nothing kept")


def _storage_calls(storage):
    """(what, call) pairs exercising every kind of write a worker does.

    Negative ids, which Oríon never gives, keep PostgreSQL's id sequences (which a
    rollback does not rewind) where they were.
    """
    experiment_id = -random.randint(2, 2**30)
    experiment = types.SimpleNamespace(id=experiment_id)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    config = {
        "_id": experiment_id,
        "name": f"orion-sql-test-{uuid.uuid4().hex}",
        "version": 1,
        "space": {"x": "uniform(0, 1)"},
        "algorithm": {"random": {"seed": 1}},
        "metadata": {"user": "orion-sql test", "datetime": now},
        "refers": {"parent_id": None, "root_id": None, "adapter": []},
    }
    trial = Trial(experiment=experiment_id, status="new", params=[{"name": "x", "type": "real", "value": 0.5}],
                  submit_time=now, _id=experiment_id)
    reserved = []

    def reserve():
        reserved.append(_expect(storage.reserve_trial(experiment), "no trial to reserve"))
        _expect(reserved[0].status == "reserved", f"the reserved trial is {reserved[0].status!r}")

    def complete():
        done = reserved[0]
        done.status = "completed"
        done.end_time = now
        done.results = [Trial.Result(name="objective", type="objective", value=0.25)]
        storage.push_trial_results(done)
        stored = storage.get_trial(uid=done.id, experiment_uid=experiment_id)
        _expect(stored.status == "completed" and stored.objective.value == 0.25,
                "the completed trial reads back differently")

    def lock():
        with storage.acquire_algorithm_lock(uid=experiment_id, timeout=10) as locked:
            locked.set_state({"checked": True})
        saved = storage.get_algorithm_lock_info(uid=experiment_id).state
        _expect(saved == {"checked": True}, "the algorithm state was not saved")

    def delete():
        _expect(storage.delete_experiment(uid=experiment_id) == 1, "the experiment was not deleted")
        _expect(storage.fetch_experiments({"_id": experiment_id}) == [], "the deleted experiment is still there")

    return [
        ("creating an experiment", lambda: storage.create_experiment(config)),
        ("reading it back", lambda: _expect(len(storage.fetch_experiments({"_id": experiment_id})) == 1, "not there")),
        ("registering a trial", lambda: storage.register_trial(trial)),
        ("reserving the trial", reserve),
        ("completing the trial", complete),
        ("taking the algorithm lock and saving its state", lock),
        ("deleting the experiment", delete),
    ]


def _expect(condition, problem: str):
    if not condition:
        raise AssertionError(problem)
    return condition


def check_clock(probe: Probe):
    database: Database = probe.database
    before = time.time()
    with database.transaction() as conn:
        server = conn.execute(select(database.dialect.now())).scalar_one()
    after = time.time()
    here = datetime.datetime.fromtimestamp((before + after) / 2, datetime.timezone.utc).replace(tzinfo=None)
    skew = (server - here).total_seconds()
    if probe.url.get_backend_name() == "sqlite":
        return passed("SQLite keeps this machine's time: nothing to compare")
    ahead = f"{abs(skew):.1f} s {'ahead of' if skew >= 0 else 'behind'} this machine's"
    if abs(skew) > CLOCK_SKEW_WARNING_SECONDS + (after - before):
        return warning(
            f"the server's clock is {ahead}",
            "heartbeats and lost trials use the server's clock, so workers are not confused; "
            "but times Oríon writes come from each machine's clock: synchronise the clocks (NTP)",
        )
    return passed(f"the server's clock is {ahead}")


def open_database(probe: Probe) -> None:
    """The database as the storage opens it."""
    probe.database = Database(probe.url)
    probe.cleanups.append(probe.database.dispose)


def server_version(conn) -> str:
    """The server's name and version, as SQLAlchemy read them on connecting."""
    return f"{conn.dialect.name} {'.'.join(str(part) for part in conn.dialect.server_version_info or ())}".strip()


def first_line(error: BaseException, probe: Probe) -> str:
    """An error's first meaningful line, the password never in it (a driver may echo it)."""
    if hasattr(error, "orig") and error.orig is not None:
        error = error.orig
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(error).__name__
    password = probe.url.password if probe.knows("url") else None
    return line.replace(str(password), "***") if password else line


COMMON_CHECKS = [
    Check("url", "the URL names a supported database", check_url),
    Check("connection", "the server answers", check_connection, needs=("url",)),
    Check("schema", "the schema is at this orion_sql's head", check_schema, needs=("connection",)),
    Check("read-write", "the user can read and write", check_read_write, needs=("schema",)),
    Check("clock", "the server's clock agrees with this machine's", check_clock, needs=("connection",)),
]
# For a database that has no checks of its own yet: the common checks, generic advice.
GENERIC = DialectChecks(
    checks=[],
    open=open_database,
    version=server_version,
    connect_advice=lambda url: "check that the server runs and accepts connections from this machine, "
    "and that the database and user in the URL exist",
    write_advice=lambda url: "grant the user SELECT, INSERT, UPDATE and DELETE on orion_sql's tables",
)
