"""A fleet of workers on PostgreSQL, directly and through PgBouncer: rates and connections.

On a PostgreSQL server of its own (``max_connections = 100``) and a PgBouncer in
transaction pooling with 20 server connections in front of it (both started here
and removed after: tests/support/servers.py), for 1, 4, 16 and 64 worker processes:

- reserve+complete pairs per second (``reserve_trial`` then ``push_trial_results``,
  as in reserve_throughput.py);
- Oríon ``workon`` trials per second (random search, a trivial objective, one
  trial suggested at a time, the same share of trials for each worker, one working
  folder per run);
- the peak of server connections to the database (pg_stat_activity, sampled every
  100 ms on a superuser connection opened beforehand).

The workers log in as ``orion``, not a superuser, so ``max_connections`` less
``superuser_reserved_connections`` (3) bounds them; behind PgBouncer their storage
says ``pool_mode=transaction``. Goals (issue 12): 64 workers run within
``max_connections = 100``; through PgBouncer at least 0.7 times the direct rate at
16 workers.

    python benchmarks/fleet.py [--quick] [--workers 16,64]
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator

import common
import reserve_throughput
import workon_throughput
from tabulate import tabulate

from orion_sql import SQL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support.servers import PG_VERSION, OwnPostgreSQL, PeakConnections, PgBouncer  # noqa: E402

WORKERS = [1, 4, 16, 64]
ROUTES = ["direct", "pgbouncer"]
BOUNCER_POOL = 20
ROLE = "orion"
_numbers = itertools.count()


@contextlib.contextmanager
def fresh(server: OwnPostgreSQL) -> Iterator[tuple[str, str]]:
    """A new database at head on `server`, owned by the workers' role: its name and direct
    URL; dropped after, with PgBouncer's idle server connections to it, which would
    otherwise take slots from the next runs."""
    name = f"fleet_{next(_numbers)}"
    url = server.create_database(name, owner=ROLE)
    SQL(uri=url).close()
    try:
        yield name, url
    finally:
        server.drop_database(name)


def storage_config(url: str, route: str) -> dict:
    """The workers' storage: behind PgBouncer in transaction pooling, said so (orion_sql
    would also see it at connect)."""
    return {"type": "sql", "uri": url} | ({"pool_mode": "transaction"} if route == "pgbouncer" else {})


def pairs_per_second(server, bouncer, route: str, workers: int, trials: int, seconds: float) -> tuple[float, int]:
    with fresh(server) as (dbname, direct):
        url = direct if route == "direct" else bouncer.url(dbname)
        filler = SQL(uri=direct)
        experiment_id = reserve_throughput.fill_sql(filler, f"pairs-{workers}", trials)
        filler.close()
        with PeakConnections(server, dbname) as peak:
            done, elapsed = common.run_together(
                reserve_throughput.protocol_worker, [("sql", url, experiment_id, seconds)] * workers
            )
    return sum(done) / elapsed, peak.peak


def workon_per_second(server, bouncer, folder: str, route: str, workers: int, trials: int) -> tuple[float, int]:
    """Oríon workers sharing `trials` (at least one each): trials/s, peak connections."""
    per_worker = -(-trials // workers)
    trials = per_worker * workers
    with fresh(server) as (dbname, direct), PeakConnections(server, dbname) as peak:
        url = direct if route == "direct" else bouncer.url(dbname)
        args = (f"workon-{workers}", storage_config(url, route), trials, os.path.join(folder, dbname), per_worker)
        done, elapsed = common.run_together(workon_throughput.worker, [args] * workers)
    return sum(done) / elapsed, peak.peak


def main() -> None:
    args = common.arguments(
        __doc__.splitlines()[0],
        ("--workers", {"default": ",".join(map(str, WORKERS)), "help": "comma-separated worker counts"}),
    )
    counts = sorted(int(count) for count in args.workers.split(","))
    trials, seconds, workon_trials = (2000, 1.5, 32) if args.quick else (6000, 4.0, 64)
    pairs: dict[str, dict[int, float]] = {route: {} for route in ROUTES}
    workon: dict[str, dict[int, float]] = {route: {} for route in ROUTES}
    peaks: dict[str, dict[int, tuple[int, int]]] = {route: {} for route in ROUTES}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(OwnPostgreSQL(max_connections="100"))
        server.create_role(ROLE)
        bouncer = stack.enter_context(PgBouncer(server.port, pool_size=BOUNCER_POOL, user=ROLE))
        folder = stack.enter_context(common.fresh_folder())
        for count, route in itertools.product(counts, ROUTES):
            pairs[route][count], pair_peak = pairs_per_second(server, bouncer, route, count, trials, seconds)
            workon[route][count], workon_peak = workon_per_second(server, bouncer, folder, route, count, workon_trials)
            peaks[route][count] = (pair_peak, workon_peak)
            print(
                f"  {route:9s} {count:2d} workers: {pairs[route][count]:7.1f} pairs/s (peak {pair_peak} connections), "
                f"{workon[route][count]:5.1f} workon trials/s (peak {workon_peak}); load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
            )

    rows = [
        [
            count,
            pairs["direct"][count],
            pairs["pgbouncer"][count],
            pairs["pgbouncer"][count] / pairs["direct"][count],
            workon["direct"][count],
            workon["pgbouncer"][count],
            workon["pgbouncer"][count] / workon["direct"][count],
            "{} / {}".format(*peaks["direct"][count]),
            "{} / {}".format(*peaks["pgbouncer"][count]),
        ]
        for count in counts
    ]
    headers = [
        "workers",
        "pairs/s direct",
        "pairs/s pgbouncer",
        "ratio",
        "workon/s direct",
        "workon/s pgbouncer",
        "ratio",
        "peak conns direct (pairs / workon)",
        "peak conns pgbouncer",
    ]
    print(
        f"\nPostgreSQL {PG_VERSION}, max_connections=100, workers as a non-superuser role; "
        f"PgBouncer transaction pooling, pool {BOUNCER_POOL}; workon: {workon_trials} trials or one per worker"
    )
    print(tabulate(rows, headers=headers, floatfmt=".2f"))
    goals = []
    if 64 in counts:
        goals.append(f"64 workers within max_connections=100 (peaks {rows[-1][-2]}, through PgBouncer {rows[-1][-1]})")
    if 16 in counts:
        at16 = rows[counts.index(16)]
        goals.append(f"pgbouncer/direct at 16 workers >= 0.7 (pairs {at16[3]:.2f}, workon {at16[6]:.2f})")
    if goals:
        print("\nGoals: " + "; ".join(goals))
    note = common.machine_note()
    print(note)
    payload = {
        "pairs": pairs,
        "workon": workon,
        "peaks": peaks,
        "trials": trials,
        "seconds": seconds,
        "workon_trials": workon_trials,
        "note": note,
    }
    print("saved", common.save(args.out, "fleet", payload))
    series = {f"pairs/s {route}": pairs[route] for route in ROUTES} | {
        f"workon/s {route}": workon[route] for route in ROUTES
    }
    print(
        "saved",
        common.plot(args.out, "fleet", "A fleet on PostgreSQL and PgBouncer", "per second", series, note, log=True),
    )


if __name__ == "__main__":
    main()
