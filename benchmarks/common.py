"""What the benchmark scripts share: fresh databases, workers started together, output.

Every measurement runs on databases created for it and removed after: a PostgreSQL
database named ``orion_sql_bench_<pid>_<n>`` on the server of
``$ORION_SQL_BENCH_SERVER`` (default: the local one), SQLite and PickledDB files
in a temporary folder. No other database is touched.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

SERVER = os.environ.get("ORION_SQL_BENCH_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_SERVER = os.environ.get("ORION_SQL_BENCH_MARIADB", "mariadb+pymysql://root@127.0.0.1:3306/")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Children are forked from a clean server process that imported the script and Oríon
# once: each child builds its own storage, and starts in milliseconds.
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["__main__", "orion.client", "orion_sql"])
_databases = itertools.count()


def arguments(description: str, *extra: tuple[str, dict]) -> argparse.Namespace:
    """The options every benchmark takes, plus `extra` ones: (flag, add_argument keywords)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test (noisier figures)")
    parser.add_argument("--out", default=RESULTS, help=f"folder for the plot and raw figures (default {RESULTS})")
    for flag, options in extra:
        parser.add_argument(flag, **options)
    return parser.parse_args()


@contextlib.contextmanager
def fresh_postgresql() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    server = make_url(SERVER)
    name = f"orion_sql_bench_{os.getpid()}_{next(_databases)}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_mariadb() -> Iterator[str]:
    """The URL of a new, empty MariaDB database, dropped afterwards."""
    import pymysql

    server = make_url(MARIADB_SERVER)
    name = f"orion_sql_bench_{os.getpid()}_{next(_databases)}"
    admin = {"host": server.host, "port": server.port or 3306, "user": server.username,
             "password": server.password or ""}
    with pymysql.connect(autocommit=True, **admin) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with pymysql.connect(autocommit=True, **admin) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@contextlib.contextmanager
def fresh_folder() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="orion_sql_bench_") as folder:
        yield folder


def _child(results, barrier, index: int, target: Callable, args: tuple) -> None:
    try:
        results.put((index, True, target(barrier, *args)))
    except BaseException:
        barrier.abort()
        results.put((index, False, traceback.format_exc()))


def run_together(target: Callable, args_list: list[tuple], timeout: float = 900) -> tuple[list, float]:
    """Run ``target(barrier, *args)`` in one process per args; (their results, seconds).

    Each child prepares, then waits on `barrier`; the clock runs from the moment all
    are ready to the moment the last one is done, so start-up is not measured.
    """
    results = CONTEXT.Queue()
    barrier = CONTEXT.Barrier(len(args_list) + 1)
    processes = [
        CONTEXT.Process(target=_child, args=(results, barrier, index, target, args), daemon=True)
        for index, args in enumerate(args_list)
    ]
    for process in processes:
        process.start()
    collected, failures = {}, []
    try:
        try:
            barrier.wait(timeout=timeout)
        except Exception:  # a child failed while preparing: report it below
            pass
        start = time.perf_counter()
        while len(collected) + len(failures) < len(processes):
            try:
                index, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"workers did not finish within {timeout}s") from None
            if ok:
                collected[index] = value
            else:
                failures.append(value)
        elapsed = time.perf_counter() - start
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    if failures:
        raise RuntimeError("a worker failed:\n" + "\n".join(failures))
    return [collected[index] for index in range(len(processes))], elapsed


def save(out: str, name: str, payload: Any) -> str:
    """Write the raw figures as JSON beside the plot; returns the path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.json")
    with open(path, "w") as stream:
        json.dump(payload, stream, indent=1)
    return path


def plot(
    out: str, name: str, title: str, ylabel: str, series: dict[str, dict[int, float]], note: str, log: bool = False
) -> str:
    """A line per series (x: worker processes), saved as PNG; returns the path.

    `log` scales the y axis logarithmically, for series orders of magnitude apart.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        workers = sorted(points)
        axis.plot(workers, [points[count] for count in workers], marker="o", label=label)
    axis.set_xlabel("worker processes")
    axis.set_ylabel(ylabel)
    if log:
        axis.set_yscale("log")
    else:
        axis.set_ylim(bottom=0)
    axis.set_xticks(sorted({count for points in series.values() for count in points}))
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.png")
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def machine_note() -> str:
    """Where and under what load the figures were measured."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load} at the end of the run; {time.strftime('%Y-%m-%d %H:%M')}"
