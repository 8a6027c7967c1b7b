"""Many workers and a server that restarts, on a PostgreSQL (and a MariaDB) of the test's own.

1. Four Oríon workers (``workon``) ride out two restarts of their server, one of
   them a crash (PostgreSQL's ``-m immediate``, MariaDB's SIGKILL): no worker fails,
   the experiment completes, and no trial is lost, run twice or left reserved.
2. 64 Oríon worker processes (one trial each, a trivial objective: 2 cores) complete
   an experiment against ``max_connections = 100``, directly and through a PgBouncer
   in transaction pooling with 20 server connections; the peak of server connections
   (pg_stat_activity) stays within both. The workers log in as a role that is not a
   superuser, which ``max_connections`` bounds.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from pathlib import Path

import pytest
from orion.client import create_experiment
from test_concurrency import collect_children, start_children

from orion_sql import SQL
from support.mariadb import OwnMariaDB
from support.servers import OwnPostgreSQL, PeakConnections, PgBouncer

RESTART_TRIALS = 60
FLEET_WORKERS = 64
FLEET_TRIALS = 64
BOUNCER_POOL = 20
WORKER_ROLE = "orion"
_numbers = itertools.count()


@pytest.fixture(scope="module")
def own_server():
    with OwnPostgreSQL(max_connections="100") as server:
        server.create_role(WORKER_ROLE)
        yield server


@pytest.fixture(scope="module")
def own_mariadb():
    with OwnMariaDB(max_connections=100) as server:
        yield server


def _new_database(server: OwnPostgreSQL | OwnMariaDB, **options: str) -> str:
    url = server.create_database(f"fleet_{os.getpid()}_{next(_numbers)}", **options)
    SQL(uri=url).close()  # the schema, before the workers race for it
    return url


@pytest.fixture
def own_database(own_server) -> str:
    """A database at head on the PostgreSQL, owned by the workers' role."""
    return _new_database(own_server, owner=WORKER_ROLE)


@pytest.fixture(params=["postgresql", "mariadb"])
def restartable(request) -> tuple[OwnPostgreSQL | OwnMariaDB, str]:
    """A server of the test's own, which it may restart, and a database at head on it."""
    server = request.getfixturevalue("own_server" if request.param == "postgresql" else "own_mariadb")
    return server, _new_database(server)


def _slow_objective(x):
    time.sleep(0.05)
    return [{"name": "objective", "type": "objective", "value": x}]


def _trivial_objective(x):
    return [{"name": "objective", "type": "objective", "value": x}]


def _orion_worker(
    storage: dict, name: str, trials: int, objective, working_dir: str, per_worker: int | None = None
) -> int:
    """One Oríon worker process: workon until the experiment is done, or it completed
    `per_worker` trials; the number it completed."""
    client = create_experiment(
        name,
        space={"x": "uniform(0, 1)"},
        algorithm={"random": {"seed": 1}},
        max_trials=trials,
        storage=storage,
        # One working folder for all: a trial suggested by another worker runs in the
        # folder of the experiment, which Oríon would otherwise make per worker and delete.
        working_dir=working_dir,
    )
    with client.tmp_executor("singleexecutor", n_workers=1):
        # pool_size: the first to hold the algorithm lock suggests every trial; the others
        # find them to reserve instead of queueing on the lock to suggest one each.
        return client.workon(
            objective, max_trials=trials, max_trials_per_worker=per_worker, pool_size=trials, idle_timeout=600
        )


def _assert_complete(url: str, name: str, trials: int, completed_per_worker: list[int]) -> None:
    storage = SQL(uri=url)
    (document,) = storage.fetch_experiments({"name": name})
    stored = storage.fetch_trials(uid=document["_id"])
    statuses = collections.Counter(trial.status for trial in stored)
    assert statuses["reserved"] == statuses["broken"] == statuses["interrupted"] == 0, statuses
    assert trials <= statuses["completed"] == sum(completed_per_worker), (statuses, completed_per_worker)
    assert len({trial.params["x"] for trial in stored}) == len(stored), "a trial was registered twice"
    storage.close()


@pytest.mark.slow
def test_four_workers_ride_out_two_restarts_of_their_server(restartable, tmp_path):
    own_server, own_database = restartable
    storage = {"type": "sql", "uri": own_database}
    name = "restarts"
    args = (storage, name, RESTART_TRIALS, _slow_objective, str(tmp_path))
    processes, results = start_children(_orion_worker, [args] * 4)
    watcher = SQL(uri=own_database)

    def completed() -> int:
        found = watcher.fetch_experiments({"name": name})
        return watcher.count_completed_trials(type("E", (), {"id": found[0]["_id"]})) if found else 0

    for mode, after in (("fast", 5), ("immediate", 25)):
        deadline = time.monotonic() + 300
        while completed() < after:
            assert time.monotonic() < deadline, f"only {completed()} trials completed before the {mode} restart"
            time.sleep(0.2)
        watcher.close()
        own_server.restart(mode)
    per_worker = collect_children(processes, results, timeout=600)
    assert completed() >= RESTART_TRIALS, "the experiment finished before the restarts"
    _assert_complete(own_database, name, RESTART_TRIALS, per_worker)


def _run_fleet(server: OwnPostgreSQL, url: str, storage: dict, working_dir: Path) -> int:
    """64 Oríon workers on one experiment; the peak of server connections."""
    name = "fleet"
    dbname = url.rsplit("/", 1)[1]
    with PeakConnections(server, dbname) as peak:
        args = (storage, name, FLEET_TRIALS, _trivial_objective, str(working_dir), FLEET_TRIALS // FLEET_WORKERS)
        processes, results = start_children(_orion_worker, [args] * FLEET_WORKERS)
        per_worker = collect_children(processes, results, timeout=1200)
    _assert_complete(url, name, FLEET_TRIALS, per_worker)
    return peak.peak


@pytest.mark.slow
def test_64_workers_complete_an_experiment_within_100_server_connections(own_server, own_database, tmp_path):
    peak = _run_fleet(own_server, own_database, {"type": "sql", "uri": own_database}, tmp_path)
    print(f"64 workers directly: peak {peak} server connections")
    assert peak <= 100


@pytest.mark.slow
def test_64_workers_complete_an_experiment_through_pgbouncer_in_transaction_pooling(
    own_server, own_database, tmp_path
):
    with PgBouncer(own_server.port, pool_size=BOUNCER_POOL, user=WORKER_ROLE) as bouncer:
        url = bouncer.url(own_database.rsplit("/", 1)[1])
        peak = _run_fleet(own_server, own_database, {"type": "sql", "uri": url, "pool_mode": "transaction"}, tmp_path)
    print(f"64 workers through PgBouncer: peak {peak} server connections")
    assert peak <= BOUNCER_POOL
