"""`orion-sql import` of a 50,000-trial PickledDB file, and `orion-sql export` back, per database.

The file is written with Oríon's own PickledDB/EphemeralDB API: 5 versions of one
experiment (an EVC chain) x 10,000 completed trials, 3 params (real, integer,
categorical) and 2 results (objective, statistic) each, and an algorithm state per
experiment. It is then imported by the `orion-sql` command (in this process, so
Python's start-up is not counted) into a fresh SQLite file and a fresh PostgreSQL
database, checked, and exported back to a PickledDB file. Goal (issue 6): minutes,
not hours.

    python benchmarks/import_pickleddb.py [--quick]
"""
from __future__ import annotations

import datetime
import os
import pickle
import random
import sys
import time

import common
from orion.core.io.database.pickleddb import PickledDB
from orion.core.worker.trial import Trial
from orion.storage.legacy import Legacy
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from tabulate import tabulate

from orion_sql.cli import main
from orion_sql.database import Database
from orion_sql.legacy_db import read_source
from orion_sql.models import ParamRow, ResultRow, TrialRow

EXPERIMENTS = 5
TRIALS_PER_EXPERIMENT = 10_000
START = datetime.datetime(2024, 1, 31, 12, 0, 0)


def experiment_document(version: int) -> dict:
    """Version `version` of the experiment, the child of the one before (ids are versions)."""
    return {
        "_id": version,
        "name": "bench",
        "version": version,
        "space": {"lr": "loguniform(1e-05, 1.0)", "layers": "uniform(1, 8, discrete=True)",
                  "optimizer": "choices(['adam', 'sgd', 'rmsprop'])"},
        "algorithm": {"random": {"seed": version}},
        "max_trials": TRIALS_PER_EXPERIMENT,
        "max_broken": 3,
        "working_dir": "",
        "knowledge_base": None,
        "metadata": {"user": "bench", "datetime": START, "orion_version": "0.2.7"},
        "refers": {"parent_id": version - 1 if version > 1 else None, "root_id": 1, "adapter": []},
    }


def trial_document(rng: random.Random, experiment_id: int, number: int, trial_id: int) -> dict:
    submitted = START + datetime.timedelta(seconds=number)
    trial = Trial(
        experiment=experiment_id,
        status="completed",
        worker=f"node-{number % 4}",
        exp_working_dir="/tmp/bench",
        submit_time=submitted,
        start_time=submitted + datetime.timedelta(milliseconds=5),
        end_time=submitted + datetime.timedelta(seconds=1),
        heartbeat=submitted + datetime.timedelta(seconds=1),
        params=[
            {"name": "lr", "type": "real", "value": 10 ** rng.uniform(-5, 0)},
            {"name": "layers", "type": "integer", "value": rng.randint(1, 8)},
            {"name": "optimizer", "type": "categorical", "value": rng.choice(["adam", "sgd", "rmsprop"])},
        ],
        results=[
            {"name": "loss", "type": "objective", "value": rng.random()},
            {"name": "accuracy", "type": "statistic", "value": rng.random()},
        ],
    )
    return {**trial.to_dict(), "_id": trial_id}


def generate(path: str, experiments: int, trials_per_experiment: int) -> None:
    """The PickledDB file, written in one load and one dump of PickledDB's own database."""
    Legacy(database={"type": "pickleddb", "host": path})  # the legacy storage's indexes
    rng = random.Random(6)
    with PickledDB(host=path).locked_database() as database:
        for version in range(1, experiments + 1):
            database.write("experiments", experiment_document(version))
            database.write(
                "algo",
                {
                    "_id": version,
                    "experiment": version,
                    "configuration": {"random": {"seed": version}},
                    "locked": 0,
                    "state": pickle.dumps({"rng_state": rng.getstate()}),
                    "heartbeat": START,
                },
            )
            first = (version - 1) * trials_per_experiment
            database.write("trials", [trial_document(rng, version, number, first + number + 1)
                                      for number in range(trials_per_experiment)])


def timed(*args: str) -> float:
    start = time.perf_counter()
    code = main(list(args))
    if code != 0:
        raise RuntimeError(f"orion-sql {' '.join(args[:2])} exited with {code}")
    return time.perf_counter() - start


def counts(url: str) -> tuple[int, int, int]:
    database = Database(make_url(url))
    try:
        with database.transaction() as conn:
            return tuple(conn.execute(select(func.count()).select_from(model)).scalar_one()
                         for model in (TrialRow, ParamRow, ResultRow))
    finally:
        database.dispose()


def measure(source: str, url: str, folder: str, label: str, total: int) -> dict:
    seconds = timed("import", source, "--url", url)
    assert counts(url) == (total, 3 * total, 2 * total), counts(url)
    again = timed("import", source, "--url", url)  # everything present: compared, skipped
    exported = os.path.join(folder, f"exported-{label}.pkl")
    export_seconds = timed("export", exported, "--url", url)
    return {"database": label, "import": seconds, "import again (all skipped)": again, "export": export_seconds}


def run() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    experiments, per_experiment = (EXPERIMENTS, 1_000) if args.quick else (EXPERIMENTS, TRIALS_PER_EXPERIMENT)
    total = experiments * per_experiment
    with common.fresh_folder() as folder:
        source = os.path.join(folder, "orion_db.pkl")
        start = time.perf_counter()
        generate(source, experiments, per_experiment)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        read_source(source)
        read = time.perf_counter() - start
        size = os.path.getsize(source) / 2**20
        rows = [measure(source, str(make_url(f"sqlite:///{folder}/bench.sqlite")), folder, "sqlite", total)]
        with common.fresh_postgresql() as url:
            rows.append(measure(source, url, folder, "postgresql", total))
    print(f"\n{total:,} trials ({experiments} experiments x {per_experiment:,}; 3 params and 2 results each), "
          f"PickledDB file {size:.1f} MiB")
    print(
        f"generating it with Oríon's PickledDB API: {generated:.1f} s; "
        f"reading it back (unpickle + documents): {read:.1f} s"
    )
    print(tabulate([{key: (f"{value:.1f} s" if isinstance(value, float) else value) for key, value in row.items()}
                    for row in rows], headers="keys"))
    print(common.machine_note())
    common.save(args.out, "import_pickleddb", {"trials": total, "experiments": experiments, "file_mib": size,
                                                "generate_seconds": generated, "read_seconds": read, "runs": rows})


if __name__ == "__main__":
    sys.exit(run())
