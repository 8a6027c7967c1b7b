"""Per-call latency as an experiment grows: N completed trials, per storage.

The same experiment (random search, one real dimension ``x``) is built with N
completed trials in Oríon's PickledDB (its file written in one go, trials with
explicit ids: inserting them one at a time is quadratic there), then copied into a
fresh SQLite file, a fresh PostgreSQL database and a fresh MariaDB database by
``orion-sql import``. Then, per storage and N, in this one process, median
milliseconds per call of:

- ``fetch_trials`` cold (a new storage object, its connection already open) and
  warm (the same storage again, nothing changed in between);
- ``count_completed_trials``;
- register + reserve + push results of one new trial, through the storage API;
- Oríon's client ``suggest()`` + ``observe()`` (what a worker pays per trial);
- "4 hashes": Oríon's EVC hashing of a read's trials, 4 times (what one
  suggest + observe asks of each trial), on the trials this storage returns: the sql
  storage's trials answer from hashes computed once per cached trial.

"Trial(**doc)" is the time to construct the N ``Trial`` objects from their
dictionaries, the floor a cold read is compared with. "Oríon hashing" is what
Oríon 0.2.7 itself spends per suggest + observe hashing plain Trials: its EVC code
(``adapt_trials``) hashes every trial of the experiment twice per ``is_done``,
and ``suggest`` calls ``is_done`` twice: 4 N trial hashes. Goals (issue 11): at N =
10,000, suggest + observe at most 3 times its cost at N = 100 on each sql
database and at least 25 times faster than PickledDB; a warm fetch under 40 ms;
a cold fetch at most 1.5 times Trial(**doc). Ratios are within this one run.

    python benchmarks/experiment_size.py [--quick] [--large] [--backends pickleddb,sql-mariadb]

``--large`` adds N = 100,000 (sql databases only: PickledDB needs minutes per call).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
import statistics
import sys
import time
import types
from collections.abc import Callable

import common
from orion.client import create_experiment
from orion.core.io.database.pickleddb import PickledDB
from orion.core.worker.trial import Trial
from orion.storage.legacy import Legacy
from tabulate import tabulate

from orion_sql import SQL
from orion_sql.cli import main as orion_sql

NAME = "size"
SPACE = {"x": "uniform(0, 1)"}
ALGORITHM = {"random": {"seed": 1}}
MAX_TRIALS = 10**7  # never done: every suggest samples
START = datetime.datetime(2024, 1, 31, 12, 0, 0)
BACKENDS = ["pickleddb", "sql-sqlite", "sql-postgresql", "sql-mariadb"]
SERVERS = {"sql-postgresql": common.fresh_postgresql, "sql-mariadb": common.fresh_mariadb}
MEASURES = ["fetch cold", "fetch warm", "4 hashes", "count completed", "register+reserve+push", "suggest+observe"]


def client(storage: dict):
    return create_experiment(NAME, space=SPACE, algorithm=ALGORITHM, max_trials=MAX_TRIALS, storage=storage)


def trial_documents(experiment_id: int, count: int, first_id: int) -> list[dict]:
    """`count` completed trials of the experiment, as PickledDB stores them (explicit `_id`)."""
    rng = random.Random(count)
    documents = []
    for number in range(count):
        submitted = START + datetime.timedelta(seconds=number)
        trial = Trial(
            experiment=experiment_id,
            status="completed",
            worker="bench",
            exp_working_dir="/tmp/bench",
            submit_time=submitted,
            start_time=submitted,
            end_time=submitted + datetime.timedelta(seconds=1),
            heartbeat=submitted + datetime.timedelta(seconds=1),
            params=[{"name": "x", "type": "real", "value": rng.random()}],
            results=[{"name": "objective", "type": "objective", "value": rng.random()}],
        )
        documents.append({**trial.to_dict(), "_id": first_id + number})
    return documents


def build_pickleddb(path: str, count: int) -> list[dict]:
    """The experiment (made by Oríon's client) and its `count` trials in one PickledDB write."""
    storage = {"type": "legacy", "database": {"type": "pickleddb", "host": path}}
    experiment_id = client(storage).id
    documents = trial_documents(experiment_id, count, first_id=1)
    with PickledDB(host=path).locked_database() as database:
        database.write("trials", documents)
    return documents


def now() -> datetime.datetime:
    """Naive UTC, as Oríon writes times."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def new_trial(experiment_id: int, rng: random.Random) -> Trial:
    return Trial(experiment=experiment_id, status="new", submit_time=now(),
                 params=[{"name": "x", "type": "real", "value": rng.random()}])


def measure(make_storage: Callable[[], object], storage_config: dict, count: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each measure, on an experiment of `count` completed trials."""
    storage = make_storage()
    experiment_id = storage.fetch_experiments({"name": NAME})[0]["_id"]
    experiment = types.SimpleNamespace(id=experiment_id, _id=experiment_id)  # legacy reads _id
    assert storage.count_completed_trials(experiment) == count

    def cold_fetch() -> float:
        fresh = make_storage()
        fresh.count_completed_trials(experiment)  # connection open, nothing of the trials read
        start = time.perf_counter()
        assert len(fresh.fetch_trials(uid=experiment_id)) == count
        return time.perf_counter() - start

    figures = {"fetch cold": statistics.median(cold_fetch() for _ in range(3)) * 1000}
    storage.fetch_trials(uid=experiment_id)
    figures["fetch warm"] = median_ms(lambda: storage.fetch_trials(uid=experiment_id), repeats)
    read = storage.fetch_trials(uid=experiment_id)
    figures["4 hashes"] = median_ms(lambda: [{trial.compute_trial_hash(trial, ignore_lie=True) for trial in read}
                                             for _ in range(4)], repeats)
    read = []  # no longer held
    figures["count completed"] = median_ms(lambda: storage.count_completed_trials(experiment), repeats)
    rng = random.Random(0)

    def register_reserve_push():
        storage.register_trial(new_trial(experiment_id, rng))
        trial = storage.reserve_trial(experiment)
        trial.results = [Trial.Result(name="objective", type="objective", value=rng.random())]
        trial.status = "completed"
        trial.end_time = now()
        storage.push_trial_results(trial)

    figures["register+reserve+push"] = median_ms(register_reserve_push, repeats)
    worker = client(storage_config)

    def suggest_observe():
        trial = worker.suggest()
        worker.observe(trial, trial.params["x"])

    suggest_observe()  # the client's first read of the experiment
    # More repeats where a pair is cheap: a median of few is at the mercy of a shared machine's load.
    figures["suggest+observe"] = median_ms(suggest_observe, repeats if isinstance(storage, Legacy) else 3 * repeats)
    worker.close()
    return figures


def storage_of(backend: str, where: str) -> tuple[dict, Callable[[], object]]:
    """Oríon's storage configuration for `backend` at `where`, and a maker of new storage objects."""
    if backend == "pickleddb":
        database = {"type": "pickleddb", "host": where}
        return {"type": "legacy", "database": database}, lambda: Legacy(database=dict(database))  # it pops keys
    return {"type": "sql", "uri": where}, lambda: SQL(uri=where)


def construction_ms(documents: list[dict]) -> float:
    """Constructing the Trial objects alone, from their dictionaries."""
    return median_ms(lambda: [Trial(**document) for document in documents], 3)


def orion_hashing_ms(documents: list[dict]) -> float:
    """What Oríon's EVC code spends per suggest + observe hashing the experiment's trials."""
    trials = [Trial(**document) for document in documents]
    return 4 * median_ms(lambda: [trial.compute_trial_hash(trial, ignore_lie=True) for trial in trials], 3)


def ratio_rows(figures: dict, counts: list[int], backends: list[str]) -> list[list]:
    """Issue 11's ratios for each sql backend measured, with their goals."""
    small, big = counts[0], 10_000 if 10_000 in counts else counts[-1]
    rows = []
    for backend in (backend for backend in backends if backend != "pickleddb"):
        ours = figures[backend]
        rows += [
            [f"{backend}: suggest+observe N={big:,} / N={small:,}",
             ours[big]["suggest+observe"] / ours[small]["suggest+observe"], "<= 3"],
        ]
        if "pickleddb" in backends:
            rows.append([f"{backend}: PickledDB / {backend}, suggest+observe at N={big:,}",
                         figures["pickleddb"][big]["suggest+observe"] / ours[big]["suggest+observe"], ">= 25"])
        rows += [
            [f"{backend}: warm fetch at N={big:,}, ms", ours[big]["fetch warm"], "< 40"],
            [f"{backend}: cold fetch / Trial(**doc) at N={big:,}",
             ours[big]["fetch cold"] / figures["construction"][big], "<= 1.5"],
            [f"{backend}: suggest+observe, µs per trial of the experiment (N={small:,} to {big:,})",
             (ours[big]["suggest+observe"] - ours[small]["suggest+observe"]) * 1000 / (big - small), ""],
        ]
    return rows


def plot(out: str, figures: dict, backends: list[str], note: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 4), sharex=True)
    for axis, name in zip(axes, MEASURES, strict=True):
        for backend in backends:
            points = figures[backend]
            counts = sorted(points)
            axis.plot(counts, [points[count][name] for count in counts], marker="o", label=backend)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(name)
        axis.set_xlabel("completed trials in the experiment")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per call (median)")
    axes[0].legend()
    figure.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "experiment_size.png")
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def main() -> None:
    args = common.arguments(
        __doc__.splitlines()[0],
        ("--large", {"action": "store_true", "help": "add N = 100,000 (sql databases only)"}),
        ("--backends", {"default": ",".join(BACKENDS), "help": f"comma-separated, of {', '.join(BACKENDS)}"}),
    )
    backends = [backend for backend in BACKENDS if backend in args.backends.split(",")]
    logging.getLogger("orion").setLevel(logging.ERROR)
    counts = [100, 1_000] if args.quick else [100, 1_000, 10_000]
    repeats = 3 if args.quick else 5
    figures: dict = {backend: {} for backend in backends}
    figures["construction"], figures["hashing"] = {}, {}
    with common.fresh_folder() as folder:
        for count in counts + ([100_000] if args.large else []):
            pickled = os.path.join(folder, f"{count}.pkl")
            documents = build_pickleddb(pickled, count)
            figures["construction"][count] = construction_ms(documents)
            figures["hashing"][count] = orion_hashing_ms(documents)
            del documents
            with contextlib.ExitStack() as databases:
                runs = {}  # backend: where its copy of the experiment is
                for backend in backends:
                    if backend == "pickleddb":
                        if count < 100_000:
                            runs[backend] = pickled
                        continue
                    if backend == "sql-sqlite":
                        url = f"sqlite:///{folder}/{count}.sqlite"
                    else:
                        url = databases.enter_context(SERVERS[backend]())
                    with contextlib.redirect_stdout(sys.stderr):
                        code = orion_sql(["import", pickled, "--url", url])
                    if code != 0:
                        raise RuntimeError(f"orion-sql import into {url} failed")
                    runs[backend] = url
                for backend, where in runs.items():
                    config, make = storage_of(backend, where)
                    figures[backend][count] = measure(make, config, count, repeats)
                    print(f"  N={count:>7,} {backend:15s} " + "  ".join(
                        f"{name} {value:8.1f}" for name, value in figures[backend][count].items()), file=sys.stderr)
    table = [
        [f"{count:,}", backend] + [figures[backend][count][name] for name in MEASURES]
        + [figures["construction"][count], figures["hashing"][count]]
        for count in sorted(figures["construction"]) for backend in backends if count in figures[backend]
    ]
    note = common.machine_note()
    print("\nms per call, median (one run; the machine is shared, compare within the run)")
    print(tabulate(table, headers=["N", "storage", *MEASURES, "Trial(**doc)", "Oríon hashing"], floatfmt=".1f"))
    print()
    print(tabulate(ratio_rows(figures, counts, backends), headers=["ratio (goal)", "measured", "goal"], floatfmt=".2f"))
    print(note)
    common.save(args.out, "experiment_size", {"figures": figures, "note": note})
    print(plot(args.out, figures, backends, note))


if __name__ == "__main__":
    sys.exit(main())
