#!/usr/bin/env python
"""The main job on the embedded default: `orion hunt` stored in SQLite, then shown.

Runs Oríon's own command line with `storage: type: sql` and no database address,
so the experiment lands in the SQLite file beside where PickledDB keeps its
pickle. Each run adds trials to the same experiment: run it again to resume.
"""
import os
import sqlite3
import subprocess
import sys
import tempfile

from orion_sql.location import DEFAULT_SQLITE_PATH

EXPERIMENT = "orion-sql-demo"
TRIALS_PER_RUN = 24
WORKERS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

BEST_TRIALS = """
SELECT t.id                                                  AS trial,
       round(r.numeric_value, 4)                             AS objective,
       round(max(CASE WHEN p.name = '/x' THEN p.numeric_value END), 4) AS x,
       round(max(CASE WHEN p.name = '/y' THEN p.numeric_value END), 4) AS y,
       round((julianday(t.end_time) - julianday(t.start_time)) * 86400, 2) AS seconds
FROM trials t
JOIN experiments e ON e.id = t.experiment_id
JOIN results r     ON r.trial_id = t.id AND r.type = 'objective'
JOIN params p      ON p.trial_id = t.id
WHERE e.name = ? AND t.status = 'completed'
GROUP BY t.id
ORDER BY r.numeric_value
LIMIT 5
"""
COMPLETED = """
SELECT count(*) FROM trials t JOIN experiments e ON e.id = t.experiment_id
WHERE e.name = ? AND t.status = 'completed'
"""


def sql(query: str) -> list[tuple]:
    if not os.path.exists(DEFAULT_SQLITE_PATH):
        return []
    with sqlite3.connect(DEFAULT_SQLITE_PATH) as connection:
        return connection.execute(query, (EXPERIMENT,)).fetchall()


def orion(*args: str) -> None:
    """Run Oríon's CLI on the sql storage's embedded default (no address configured)."""
    environment = {
        **os.environ,
        "ORION_STORAGE_TYPE": "sql",
        "ORION_DB_ADDRESS": "",
        # Oríon warns at import about optional extras (profet) the demo does not use.
        "PYTHONWARNINGS": "ignore::RuntimeWarning",
    }
    # Oríon creates its temporary trial folders in the current directory: not the checkout.
    subprocess.run([os.path.join(BIN, "orion"), *args], env=environment, check=True, cwd=tempfile.gettempdir())


def main() -> None:
    done = sql(COMPLETED)[0][0] if sql(COMPLETED) else 0
    target = done + TRIALS_PER_RUN
    print(f"== orion hunt: {EXPERIMENT}, {WORKERS} workers, {done} -> {target} completed trials")
    orion(
        "hunt", "-n", EXPERIMENT, "--exp-max-trials", str(target), "--n-workers", str(WORKERS),
        sys.executable, os.path.join(HERE, "blackbox.py"), "-x~uniform(-2, 2)", "-y~uniform(-1, 3)",
    )
    print("\n== orion status")
    orion("status", "-n", EXPERIMENT)
    print(f"\n== the five best trials, by one SQL query on {DEFAULT_SQLITE_PATH}")
    print(f"{'trial':>6} {'objective':>12} {'x':>9} {'y':>9} {'seconds':>8}")
    for row in sql(BEST_TRIALS):
        print("{:>6} {:>12} {:>9} {:>9} {:>8}".format(*row))
    print(f"\nThe experiment lives in {DEFAULT_SQLITE_PATH}; open it with: sqlite3 {DEFAULT_SQLITE_PATH}")
    print("Run `make demo` again to add trials to the same experiment.")


if __name__ == "__main__":
    main()
