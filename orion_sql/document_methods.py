"""The experiment and benchmark half of Oríon's storage protocol.

Both collections keep Oríon's document whole, with the keys queries need lifted
into columns (see :mod:`orion_sql.mapping`); an experiment is created together with
its algorithm lock. Kept apart from :mod:`orion_sql.storage`, which holds the trials.
"""
from __future__ import annotations

from orion.core.io.database.ephemeraldb import EphemeralDocument
from sqlalchemy import Table, and_, delete, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import arguments, mapping, rows
from orion_sql.database import Database
from orion_sql.filters import BENCHMARK_FILTERS, EXPERIMENT_FILTERS
from orion_sql.models import algo_locks, benchmarks, experiments
from orion_sql.query import Collection, compile_filter


class DocumentMethods:
    """The storage's experiment and benchmark methods, and the filter they share with trials."""

    _db: Database

    # --- shared steps ------------------------------------------------------------

    def _filter(self, query, collection: Collection) -> ColumnElement[bool]:
        return compile_filter(query, collection, self._db.dialect)

    def _fetch_documents(self, table: Table, collection: Collection, query, selection) -> list[dict]:
        statement = select(table.c.id, table.c.document).where(self._filter(query, collection)).order_by(table.c.id)
        found = self._db.run(lambda conn: conn.execute(statement).all(), write=False, autocommit=True)
        stored = [mapping.document_of(row) for row in found]
        if not selection:  # Oríon's flatten, which selections use, loses keys repeating a parent's
            return stored
        return [EphemeralDocument(document).select(selection) for document in stored]

    # --- benchmarks --------------------------------------------------------------

    def create_benchmark(self, config):
        """Insert a benchmark; sets ``config["_id"]``. DuplicateKeyError on a known name."""
        values = {**mapping.benchmark_columns(config), "id": mapping.explicit_id(config)}
        config["_id"] = self._db.run(
            lambda conn: rows.insert_keeping_id(conn, self._db.dialect, benchmarks, values), write=True
        )
        return 1

    def fetch_benchmark(self, query, selection=None):
        return self._fetch_documents(benchmarks, BENCHMARK_FILTERS, query, selection)

    def delete_benchmark(self, query):
        """Oríon 0.2.8: delete the benchmarks matching `query`; returns how many."""
        statement = delete(benchmarks).where(self._filter(query, BENCHMARK_FILTERS))
        return self._db.run(rows.rows_matched(statement), write=True, autocommit=True)

    # --- experiments -------------------------------------------------------------

    def create_experiment(self, config, algo_locked=0, algo_state=None, algo_heartbeat=None):
        """Insert an experiment and its algorithm lock together; sets ``config["_id"]``.

        The lock is free with no state (Oríon 0.2.7), or as the `algo_*` arguments
        say (Oríon 0.2.8, see :meth:`write_algorithm_lock`). DuplicateKeyError when
        (name, version) exists. An explicit ``_id`` is kept.
        """
        values = {**mapping.experiment_columns(config), "id": mapping.explicit_id(config)}
        lock = rows.algorithm_lock_row(
            self._db.dialect, None, config.get("algorithm", {}), algo_locked, algo_state, algo_heartbeat
        )

        def create(conn):
            experiment_id = rows.insert_keeping_id(conn, self._db.dialect, experiments, values)
            conn.execute(insert(algo_locks).values({**lock, "experiment_id": experiment_id}))
            return experiment_id

        config["_id"] = self._db.run(create, write=True)
        return 1

    def delete_experiment(self, experiment=None, uid=None):
        """Delete an experiment; its trials and algorithm lock go with it (cascade)."""
        uid = arguments.experiment_id(experiment, uid)
        statement = delete(experiments).where(experiments.c.id == uid)
        return self._db.run(rows.rows_matched(statement), write=True, autocommit=True)

    def update_experiment(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of an experiment document (dotted keys set nested fields).

        Returns the number of experiments matched. ``_id`` cannot be changed.
        """
        uid = arguments.experiment_id(experiment, uid)
        clause = and_(experiments.c.id == uid, self._filter(where, EXPERIMENT_FILTERS))

        def update_documents(conn):
            found = conn.execute(select(experiments).where(clause).with_for_update()).all()
            for row in found:
                document = mapping.apply_set(row.document, kwargs, row.id)
                columns = mapping.experiment_columns(document)
                conn.execute(update(experiments).where(experiments.c.id == row.id).values(**columns))
            return len(found)

        return self._db.run(update_documents, write=True)

    def fetch_experiments(self, query, selection=None):
        return self._fetch_documents(experiments, EXPERIMENT_FILTERS, query, selection)
