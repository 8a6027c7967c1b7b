"""Export: an orion_sql database as the documents of Oríon's legacy storage, and as a PickledDB file.

One read transaction gives one snapshot. The documents keep the database's ids
(trials' ``_id`` are the trial rows' ids), so they refer to each other as Oríon's
legacy storage expects.
"""
from __future__ import annotations

from sqlalchemy import func, select

from orion_sql import mapping
from orion_sql.database import Database
from orion_sql.legacy_db import LegacyDocuments, check_destination, write_pickleddb
from orion_sql.models import AlgoLockRow, BenchmarkRow, ExperimentRow, TrialRow, algo_locks, benchmarks, experiments
from orion_sql.transfer import NO_PROGRESS, Progress, Summary, experiment_trials


def export_documents(database: Database, progress: Progress = NO_PROGRESS) -> tuple[LegacyDocuments, Summary]:
    """Every experiment, trial, algorithm and benchmark, read in one snapshot, as legacy documents."""
    documents, summary = LegacyDocuments(), Summary()
    with database.transaction() as conn:
        rows = conn.execute(select(experiments).order_by(ExperimentRow.id)).all()
        trial_total = conn.execute(select(func.count()).select_from(TrialRow)).scalar_one()
        with progress(total=len(rows), desc="experiments", unit="exp") as experiments_bar, progress(
            total=trial_total, desc="trials", unit="trial"
        ) as trials_bar:
            for row in rows:
                documents.experiments.append(mapping.document_of(row))
                found = experiment_trials(conn, row.id)
                documents.trials.extend(found)
                trials_bar.update(len(found))
                experiments_bar.update(1)
        documents.algo = [
            # An exported lock is free, as an imported one is.
            {"experiment": lock.experiment_id, "configuration": lock.configuration, "locked": 0,
             "state": lock.state, "heartbeat": lock.heartbeat}
            for lock in conn.execute(select(algo_locks).order_by(AlgoLockRow.experiment_id))
        ]
        documents.benchmarks = [
            mapping.document_of(row) for row in conn.execute(select(benchmarks).order_by(BenchmarkRow.id))
        ]
    summary.experiments = len(documents.experiments)
    summary.trials = len(documents.trials)
    summary.benchmarks = len(documents.benchmarks)
    return documents, summary


def export_to_pickleddb(
    database: Database, path: str, force: bool = False, progress: Progress = NO_PROGRESS
) -> Summary:
    """Write the whole database as a PickledDB file at `path` (replaced only if `force`)."""
    check_destination(path, force)
    documents, summary = export_documents(database, progress)
    write_pickleddb(path, documents)
    return summary
