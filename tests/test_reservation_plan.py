"""The reservation query stays cheap as completed trials pile up.

On an experiment of 100,000 trials of which 99,000 are completed (the oldest), beside
two other experiments of 50,000 trials each, the statement ``reserve_trial`` really
sends (captured from the engine) must find the oldest pending trial through the
(experiment_id, status, id) index, reading at most one row per pending status, and
never walk the primary key filtering completed trials out: measured on PostgreSQL 15
with a raw SKIP LOCKED loop at 100,000 trials, that walk took it from ~600 to ~45
reservations/s, where the (experiment_id, status, id) index kept ~700-1200/s. Plans
are read from the database's own EXPLAIN, after ANALYZE, as the planner sees a real table.
"""
from __future__ import annotations

import json

import pytest
from orion.algo.space import Space
from orion.core.worker.experiment import Experiment
from sqlalchemy import event, text

from orion_sql import SQL
from orion_sql.models import PENDING_STATUSES

INDEX = "ix_trials_experiment_id_status_id"
TRIALS, COMPLETED, OTHERS = 100_000, 99_000, 50_000

PG_FILL = text(
    "INSERT INTO trials (experiment_id, hash, status, submit_time)"
    " SELECT :experiment, md5(:experiment || '-' || g), CASE WHEN g <= :completed THEN 'completed' ELSE 'new' END,"
    "        timezone('UTC', now())"
    " FROM generate_series(1, :count) AS g"
)
SQLITE_FILL = text(
    "INSERT INTO trials (experiment_id, hash, status, submit_time) VALUES (:experiment, :hash, :status, :submitted)"
)


def fill(storage: SQL, experiment_id, count: int, completed: int) -> None:
    """`count` trials without params, the first `completed` of them completed: set-based, fast."""
    with storage.database.transaction(write=True) as conn:
        if storage.database.dialect.name == "postgresql":
            conn.execute(PG_FILL, {"experiment": experiment_id, "completed": completed, "count": count})
        else:
            rows = [
                {
                    "experiment": experiment_id,
                    "hash": f"{experiment_id}-{index}",
                    "status": "completed" if index <= completed else "new",
                    "submitted": "2024-01-31 12:00:00.000000",
                }
                for index in range(1, count + 1)
            ]
            conn.execute(SQLITE_FILL, rows)


@pytest.fixture
def crowded(database_url):
    """The storage, and the experiment of 100k trials (99k completed) among others."""
    storage = SQL(uri=database_url)
    ids = {}
    for name, count, completed in (("crowded", TRIALS, COMPLETED), ("pending", OTHERS, 0), ("done", OTHERS, OTHERS)):
        config = {"name": name, "version": 1, "space": {}, "algorithm": {"random": {"seed": 1}}}
        storage.create_experiment(config)
        ids[name] = config["_id"]
        fill(storage, config["_id"], count, completed)
    with storage.database.engine.connect() as conn:
        conn.execute(text("ANALYZE TABLE trials" if storage.database.dialect.name == "mariadb" else "ANALYZE"))
        conn.commit()
    yield storage, Experiment("crowded", Space(), version=1, _id=ids["crowded"], storage=storage)
    storage.close()


def reservation_statement(storage: SQL, experiment) -> tuple[str, object]:
    """The statement that reserve_trial sends, with its parameters (it really reserves one)."""
    sent = []

    mariadb = storage.database.dialect.name == "mariadb"

    def capture(conn, cursor, statement, parameters, context, executemany):
        # Alone, or inside WITH on PostgreSQL; MariaDB picks the row first, then updates it.
        if ("SKIP LOCKED" in statement) if mariadb else ("UPDATE trials" in statement):
            sent.append((statement, parameters))

    event.listen(storage.database.engine, "before_cursor_execute", capture)
    try:
        trial = storage.reserve_trial(experiment)
    finally:
        event.remove(storage.database.engine, "before_cursor_execute", capture)
    assert trial is not None and trial.status == "reserved"
    (found,) = sent
    return found


def nodes(plan: dict):
    """Every node of a PostgreSQL JSON plan, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_reserves_through_the_index_reading_one_row_per_status(crowded):
    storage, experiment = crowded
    statement, parameters = reservation_statement(storage, experiment)
    with storage.database.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        # ANALYZE runs the UPDATE: in a transaction rolled back, to count the rows it reads.
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        (plan,) = cursor.fetchone()[0]
        conn.connection.dbapi_connection.rollback()

    # Every scan of trials: the composite index finding the oldest pending trial, and
    # the UPDATE's own lookup of that trial by primary key.
    scans = [
        node for node in nodes(plan["Plan"]) if node.get("Relation Name") == "trials" and "Scan" in node["Node Type"]
    ]
    described = json.dumps(plan, indent=1)
    assert {(node["Node Type"], node.get("Index Name")) for node in scans} <= {
        ("Index Scan", INDEX),
        ("Index Only Scan", INDEX),
        ("Index Scan", "pk_trials"),
    }, described
    finding = [node for node in scans if node.get("Index Name") == INDEX]
    assert finding, described
    # At most one row read per pending status: nothing proportional to the trials.
    assert sum(node["Actual Rows"] for node in finding) <= len(PENDING_STATUSES), described
    assert all(node["Actual Rows"] <= 1 for node in scans if node.get("Index Name") == "pk_trials"), described
    assert sum(node.get("Rows Removed by Filter", 0) for node in scans) == 0, described


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_reserves_through_the_index(crowded):
    storage, experiment = crowded
    statement, parameters = reservation_statement(storage, experiment)
    with storage.database.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        plan = cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()

    details = {node_id: (parent, detail) for node_id, parent, _, detail in plan}

    def inside_subquery(node_id) -> bool:
        while node_id in details:
            parent, detail = details[node_id]
            if "SUBQUERY" in detail:
                return True
            node_id = parent
        return False

    subquery = [detail for node_id, (_, detail) in details.items() if inside_subquery(node_id) and "trials" in detail]
    assert subquery and all(f"INDEX {INDEX}" in detail for detail in subquery), plan
    assert not [detail for _, detail in details.values() if detail.startswith("SCAN trials")], plan


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_mariadb_reserves_through_the_index_reading_one_row_per_status(crowded):
    """MariaDB picks the row (one locked probe per pending status) before its UPDATE:
    ANALYZE runs that pick and reports the rows each probe read."""
    storage, experiment = crowded
    statement, parameters = reservation_statement(storage, experiment)
    with storage.database.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("ANALYZE " + statement, parameters)
        columns = [column[0] for column in cursor.description]
        plan = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        conn.connection.dbapi_connection.rollback()
    probes = [row for row in plan if row["table"] == "trials"]
    assert len(probes) == len(PENDING_STATUSES), plan
    for probe in probes:
        assert (probe["type"], probe["key"]) == ("ref", INDEX), plan
        assert "filesort" not in (probe["Extra"] or ""), plan
        assert float(probe["r_rows"] or 0) <= 1, plan  # the oldest of its status, or none
