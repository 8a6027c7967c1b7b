"""Oríon's own ``workon`` loop: completed trials per second, by worker processes, per storage.

Each worker process builds the same experiment (random search, seed 1, one real
parameter, ``max_trials``), waits for the others, then runs
``ExperimentClient.workon`` with a trivial objective in-process (Oríon's single
executor), as ``orion hunt`` workers on one machine would. The clock runs until
the last worker leaves, every worker having seen the experiment done. Measured
with 1, 2 and 4 workers on the ``sql`` storage (PostgreSQL, SQLite) and on
Oríon's legacy PickledDB.

For reference, ``ephemeraldb`` (Oríon's in-memory storage, one process only) shows
what Oríon itself costs with next to no storage at all: no storage can make a
single worker faster than that.

Goal (issue 3): at least 1.5 times PickledDB at 1 worker, 2.5 times at 4 workers.

    python benchmarks/workon_throughput.py [--quick]
"""
from __future__ import annotations

import logging
import os
import sys

import common
from orion.client import create_experiment
from orion.executor.single_backend import SingleExecutor
from tabulate import tabulate

from orion_sql import SQL

WORKERS = [1, 2, 4]
BACKENDS = ["sql-postgresql", "sql-sqlite", "pickleddb"]
REFERENCE = "ephemeraldb"
# Seconds a worker may wait for others' trials before Oríon gives up on it, and for the
# algorithm lock (Oríon's default 60 for both, the lock's not configurable in observe):
# 64 workers on 2 cores queue longer than that, each holder copying the algorithm state.
IDLE_TIMEOUT = LOCK_TIMEOUT = 600


def objective(x: float) -> list[dict]:
    return [{"name": "objective", "type": "objective", "value": x}]


def worker(barrier, name: str, storage: dict, max_trials: int, working_dir: str, per_worker: int | None = None) -> int:
    """One `orion hunt`-like worker; returns the trials it completed.

    All workers of a run share `working_dir`: Oríon would otherwise give each its own
    temporary folder, where a trial suggested by another worker has no folder (and
    removing it races). Oríon's observe waits at most 60 s for the algorithm lock, here
    `LOCK_TIMEOUT`. With `per_worker`, the worker stops after its share. Trials are
    suggested one at a time (Oríon's default pool_size): with pool_size = max_trials each
    worker that found nothing to reserve suggested a whole pool again (16 workers
    registered 1,024 trials for 64), and every lock holder copies them all.
    """
    logging.getLogger("orion").setLevel(logging.ERROR)
    client = create_experiment(
        name,
        space={"x": "uniform(0, 1)"},
        algorithm={"random": {"seed": 1}},
        max_trials=max_trials,
        storage=storage,
        executor=SingleExecutor(),
        working_dir=working_dir,
    )
    producer = client._producer  # Oríon's observe, as it is, but for the lock's timeout

    def observe(trial) -> None:
        with producer.experiment.acquire_algorithm_lock(timeout=LOCK_TIMEOUT) as algorithm:
            algorithm.observe([trial])

    producer.observe = observe
    barrier.wait()
    return client.workon(
        objective,
        n_workers=1,
        max_trials=max_trials,
        max_trials_per_worker=per_worker or max_trials,
        idle_timeout=IDLE_TIMEOUT,
    )


def storage_config(backend: str, postgresql: str, folder: str, run: str) -> dict:
    if backend == "sql-postgresql":
        return {"type": "sql", "uri": postgresql}
    if backend == "sql-sqlite":
        return {"type": "sql", "uri": f"sqlite:///{folder}/{run}.sqlite"}
    if backend == "pickleddb":
        return {"type": "legacy", "database": {"type": "pickleddb", "host": f"{folder}/{run}.pkl"}}
    return {"type": "legacy", "database": {"type": "ephemeraldb"}}


def measure(backend: str, counts: list[int], postgresql: str, folder: str, max_trials: int) -> dict[int, float]:
    rates = {}
    for count in counts:
        run = f"{backend}-{count}"
        storage = storage_config(backend, postgresql, folder, run)
        working_dir = os.path.join(folder, f"{run}-work")
        done, elapsed = common.run_together(worker, [(run, storage, max_trials, working_dir)] * count)
        rates[count] = sum(done) / elapsed
        print(f"  {backend:15s} {count} workers: {sum(done):4d} trials in {elapsed:6.2f}s", file=sys.stderr)
    return rates


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    max_trials = 40 if args.quick else 100
    rates = {}
    with common.fresh_postgresql() as postgresql, common.fresh_folder() as folder:
        SQL(uri=postgresql)  # the schema, before workers race to create the experiment
        for backend in BACKENDS:
            rates[backend] = measure(backend, WORKERS, postgresql, folder, max_trials)
        rates[REFERENCE] = measure(REFERENCE, [1], postgresql, folder, max_trials)

    rows = []
    for count in WORKERS:
        pickled = rates["pickleddb"][count]
        rows.append(
            [count, *(rates[backend][count] for backend in BACKENDS), rates[REFERENCE].get(count),
             rates["sql-postgresql"][count] / pickled, rates["sql-sqlite"][count] / pickled]
        )
    headers = ["workers", *BACKENDS, f"{REFERENCE} (Oríon alone)", "sql-pg / pickleddb", "sql-sqlite / pickleddb"]
    print(f"\nOríon workon, random search, {max_trials} trials: completed trials per second")
    print(tabulate(rows, headers=headers, floatfmt=".2f", missingval="-"))
    one, four = rows[0], rows[WORKERS.index(4)]
    print(
        f"\nGoal: sql / pickleddb >= 1.5 at 1 worker (pg {one[-2]:.2f}, sqlite {one[-1]:.2f}),"
        f" >= 2.5 at 4 workers (pg {four[-2]:.2f}, sqlite {four[-1]:.2f})"
    )
    note = common.machine_note()
    print(note)
    payload = {"max_trials": max_trials, "rates": rates, "note": note}
    print("saved", common.save(args.out, "workon_throughput", payload))
    series = {**{backend: rates[backend] for backend in BACKENDS}, f"{REFERENCE} (Oríon alone)": rates[REFERENCE]}
    title = f"Oríon workon, random search, {max_trials} trials"
    print("saved", common.plot(args.out, "workon_throughput", title, "completed trials per second", series, note))


if __name__ == "__main__":
    main()
