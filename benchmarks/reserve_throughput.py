"""Reserve+complete pairs per second, by worker processes, per storage.

Every worker loops: reserve the oldest pending trial, then complete it with an
objective (what Oríon's ``observe`` writes), until the time is up or nothing is
pending. Measured for 1, 2, 4 and 8 worker processes on:

- sql-postgresql, sql-sqlite, sql-mariadb: the ``sql`` storage (``reserve_trial``,
  ``push_trial_results``);
- raw-psycopg: the ceiling, a minimal psycopg loop doing the same work on the same
  PostgreSQL tables (one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)
  RETURNING``, the params read, the completion and its result in one transaction);
- raw-pymysql: MariaDB's ceiling, a minimal PyMySQL loop on the same MariaDB tables
  (``SELECT ... FOR UPDATE SKIP LOCKED`` and the UPDATE in one transaction, as MariaDB
  has no UPDATE ... RETURNING; the params read; the completion and its result);
- pickleddb: Oríon's legacy storage on PickledDB, what users have today.

Each configuration starts from the same data: a fresh experiment of `--trials`
pending trials with two params each. Worker counts are the outer loop (every backend
at 1 worker, then every backend at 2, ...), so the two runs a ratio compares are
seconds apart on a shared machine whose load changes. Goal (issue 3): at 4 workers, the sql storage
on PostgreSQL does at least half of raw-psycopg's rate and 20 times PickledDB's;
(issue 14) on MariaDB at least half of raw-pymysql's.

    python benchmarks/reserve_throughput.py [--quick] [--runs 3] [--backends sql-mariadb,raw-pymysql]

With ``--runs N`` each configuration runs N times and the table shows median rates and
the median of the ratios within runs: on a shared machine one run's ratio at 4 workers
varied from 0.48 to 0.70 within an hour, for the same code.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import statistics
import sys
import time

import common
import psycopg
import pymysql
from orion.algo.space import Space
from orion.core.worker.experiment import Experiment
from orion.core.worker.trial import Trial
from orion.storage.legacy import Legacy
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from tabulate import tabulate

from orion_sql import SQL
from orion_sql.models import ParamRow, TrialRow

WORKERS = [1, 2, 4, 8]
BACKENDS = ["sql-postgresql", "sql-sqlite", "raw-psycopg", "pickleddb", "sql-mariadb", "raw-pymysql"]
SUBMITTED = datetime.datetime(2024, 1, 31, 12, 0, 0)

RAW_RESERVE = """
UPDATE trials SET status = 'reserved', start_time = timezone('UTC', now()), heartbeat = timezone('UTC', now())
WHERE id = (SELECT id FROM trials WHERE experiment_id = %s AND status = 'new'
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
RAW_PARAMS = "SELECT name, type, value FROM params WHERE trial_id = %s ORDER BY position"
RAW_COMPLETE = "UPDATE trials SET status = 'completed', end_time = timezone('UTC', now()) WHERE id = %s"
RAW_RESULT = (
    "INSERT INTO results (trial_id, position, name, type, value, numeric_value)"
    " VALUES (%s, 0, 'objective', 'objective', %s, %s)"
)


RAW_MARIADB_PICK = (
    "SELECT id FROM trials WHERE experiment_id = %s AND status = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
RAW_MARIADB_RESERVE = (
    "UPDATE trials SET status = 'reserved', start_time = UTC_TIMESTAMP(6), heartbeat = UTC_TIMESTAMP(6)"
    " WHERE id = %s"
)
RAW_MARIADB_COMPLETE = "UPDATE trials SET status = 'completed', end_time = UTC_TIMESTAMP(6) WHERE id = %s"


def pending_trials(experiment_id, count: int) -> list[Trial]:
    """The data every configuration starts from."""
    return [
        Trial(
            experiment=experiment_id,
            status="new",
            submit_time=SUBMITTED,
            params=[
                {"name": "/lr", "type": "real", "value": 0.001 + index * 1e-6},
                {"name": "/layers", "type": "integer", "value": index % 7},
            ],
        )
        for index in range(count)
    ]


def fill_sql(storage: SQL, name: str, count: int):
    """A new experiment of `count` pending trials, bulk inserted into the sql schema."""
    config = {"name": name, "version": 1, "space": {}, "algorithm": {"random": {"seed": 1}}}
    storage.create_experiment(config)
    made = pending_trials(config["_id"], count)
    with storage._db.transaction(write=True) as conn:
        conn.execute(
            insert(TrialRow.__table__),
            [{"experiment_id": config["_id"], "hash": t.id, "status": "new", "submit_time": SUBMITTED} for t in made],
        )
        ids = dict(
            conn.execute(select(TrialRow.hash, TrialRow.id).where(TrialRow.experiment_id == config["_id"])).all()
        )
        rows = [
            {"trial_id": ids[t.id], "position": position, "numeric_value": float(param["value"]), **param}
            for t in made
            for position, param in enumerate(t.to_dict()["params"])
        ]
        conn.execute(insert(ParamRow.__table__), rows)
    return config["_id"]


def fill_pickleddb(storage: Legacy, name: str, count: int):
    """The same trials in PickledDB, written in one go (registering them one by one is quadratic)."""
    config = {"name": name, "version": 1, "space": {}, "algorithm": {"random": {"seed": 1}}}
    storage.create_experiment(config)
    storage._db.write("trials", [trial.to_dict() for trial in pending_trials(config["_id"], count)])
    return config["_id"]


def open_storage(backend: str, location: str):
    if backend == "pickleddb":
        return Legacy(database={"type": "pickleddb", "host": location})
    return SQL(uri=location)


def protocol_worker(barrier, backend: str, location: str, experiment_id, seconds: float) -> int:
    """Reserve and complete through Oríon's storage protocol; returns pairs done."""
    storage = open_storage(backend, location)
    experiment = Experiment("bench", Space(), version=1, _id=experiment_id, storage=storage)
    barrier.wait()
    deadline, pairs = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline and (trial := storage.reserve_trial(experiment)) is not None:
        trial.status = "completed"
        trial.end_time = datetime.datetime.utcnow()
        trial.results = [Trial.Result(name="objective", type="objective", value=trial.params["/lr"])]
        storage.push_trial_results(trial)
        pairs += 1
    return pairs


def raw_worker(barrier, backend: str, location: str, experiment_id, seconds: float) -> int:
    """The same work in a minimal psycopg loop; returns pairs done."""
    conninfo = location.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        barrier.wait()
        deadline, pairs = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            row = conn.execute(RAW_RESERVE, (experiment_id,)).fetchone()
            if row is None:
                break
            params = {name: value for name, _, value in conn.execute(RAW_PARAMS, row).fetchall()}
            with conn.transaction():
                conn.execute(RAW_COMPLETE, row)
                objective = params["/lr"]
                conn.execute(RAW_RESULT, (row[0], psycopg.types.json.Json(objective), objective))
            pairs += 1
    return pairs


def raw_mariadb_worker(barrier, backend: str, location: str, experiment_id, seconds: float) -> int:
    """The same work in a minimal PyMySQL loop (READ COMMITTED, as the storage); returns pairs done."""
    url = make_url(location)
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                           database=url.database, autocommit=False)
    with conn, conn.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        barrier.wait()
        deadline, pairs = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            cursor.execute(RAW_MARIADB_PICK, (experiment_id,))
            row = cursor.fetchone()
            if row is None:
                conn.commit()
                break
            cursor.execute(RAW_MARIADB_RESERVE, row)
            cursor.execute(RAW_PARAMS, row)
            params = {name: json.loads(value) for name, _, value in cursor.fetchall()}
            conn.commit()
            objective = params["/lr"]
            cursor.execute(RAW_MARIADB_COMPLETE, row)
            cursor.execute(RAW_RESULT, (row[0], json.dumps(objective), objective))
            conn.commit()
            pairs += 1
    return pairs


RAW_WORKERS = {"raw-psycopg": raw_worker, "raw-pymysql": raw_mariadb_worker}


def measure(backend: str, location: str, count: int, trials: int, seconds: float, run: int = 0) -> float:
    """Pairs per second of `count` workers, on a fresh experiment (the `run`-th of this configuration)."""
    storage = open_storage("sql" if backend in RAW_WORKERS else backend, location)
    fill = fill_pickleddb if backend == "pickleddb" else fill_sql
    experiment_id = fill(storage, f"{backend}-{count}-{run}", trials)
    worker = RAW_WORKERS.get(backend, protocol_worker)
    done, elapsed = common.run_together(worker, [(backend, location, experiment_id, seconds)] * count)
    print(f"  {backend:15s} {count} workers: {sum(done):6d} pairs in {elapsed:5.2f}s", file=sys.stderr)
    return sum(done) / elapsed


# Ratios printed when both of their backends ran: (name, numerator, denominator, goal at 4 workers).
RATIOS = [
    ("sql-pg / raw", "sql-postgresql", "raw-psycopg", 0.5),
    ("sql-pg / pickleddb", "sql-postgresql", "pickleddb", 20),
    ("sql-sqlite / pickleddb", "sql-sqlite", "pickleddb", None),
    ("sql-mariadb / raw", "sql-mariadb", "raw-pymysql", 0.5),
]


def main() -> None:
    args = common.arguments(
        __doc__.splitlines()[0],
        ("--backends", {"default": ",".join(BACKENDS), "help": f"comma-separated, of {', '.join(BACKENDS)}"}),
        ("--runs", {"type": int, "default": 1, "help": "runs of each configuration; medians are shown (default 1)"}),
    )
    backends = [backend for backend in BACKENDS if backend in args.backends.split(",")]
    trials, seconds = (1500, 1.5) if args.quick else (4000, 4.0)
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(common.fresh_folder())
        locations = {"sql-sqlite": f"sqlite:///{folder}/bench.sqlite", "pickleddb": f"{folder}/bench.pkl"}
        if {"sql-postgresql", "raw-psycopg"} & set(backends):
            postgresql = stack.enter_context(common.fresh_postgresql())
            SQL(uri=postgresql)  # the schema, created once for both PostgreSQL loops
            locations.update({"sql-postgresql": postgresql, "raw-psycopg": postgresql})
        if {"sql-mariadb", "raw-pymysql"} & set(backends):
            mariadb = stack.enter_context(common.fresh_mariadb())
            SQL(uri=mariadb).close()  # likewise for MariaDB
            locations.update({"sql-mariadb": mariadb, "raw-pymysql": mariadb})
        # Every backend at 1 worker, then every one at 2...: the runs a ratio compares are
        # seconds apart, not a whole series apart, on a machine whose load changes. With
        # several runs, each run of a worker count goes through the backends in the
        # opposite order of the run before, so neither loop always runs first.
        runs = {backend: {count: [] for count in WORKERS} for backend in backends}
        for count in WORKERS:
            for run in range(args.runs):
                for backend in backends[::-1 if run % 2 else 1]:
                    runs[backend][count].append(measure(backend, locations[backend], count, trials, seconds, run))
    rates = {backend: {count: statistics.median(got) for count, got in by.items()} for backend, by in runs.items()}

    ratios = [(name, top, bottom, goal) for name, top, bottom, goal in RATIOS if top in rates and bottom in rates]

    def ratio_runs(top: str, bottom: str, count: int) -> list[float]:
        """The ratio within each run (its two loops seconds apart), not of the medians."""
        return [a / b for a, b in zip(runs[top][count], runs[bottom][count], strict=True)]

    rows = [
        [count, *(rates[backend][count] for backend in backends),
         *(statistics.median(ratio_runs(top, bottom, count)) for _, top, bottom, _ in ratios)]
        for count in WORKERS
    ]
    headers = ["workers", *backends, *(name for name, *_ in ratios)]
    medians = f", medians of {args.runs} runs" if args.runs > 1 else ""
    print(f"\nReserve+complete pairs per second ({trials} pending trials, {seconds}s per run{medians})")
    print(tabulate(rows, headers=headers, floatfmt=".1f"))
    for name, top, bottom, goal in ratios:
        if goal is not None:
            got = ratio_runs(top, bottom, 4)
            spread = f"; runs: {', '.join(f'{ratio:.2f}' for ratio in got)}" if len(got) > 1 else ""
            print(f"Goal at 4 workers: {name} >= {goal} (got {statistics.median(got):.2f}{spread})")
    note = common.machine_note()
    print(note)
    payload = {"trials": trials, "seconds": seconds, "rates": rates, "runs": runs, "note": note}
    print("saved", common.save(args.out, "reserve_throughput", payload))
    print(
        "saved",
        common.plot(
            args.out, "reserve_throughput", "Reserve+complete pairs/s", "pairs per second", rates, note, log=True
        ),
    )


if __name__ == "__main__":
    main()
