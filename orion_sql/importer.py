"""Import: legacy documents into an orion_sql database, in ONE transaction.

Any error leaves the database as it was (an empty one included: its schema is
created inside the same transaction; on MariaDB, whose DDL commits by itself, the
schema created for a failed import is removed again). The rules:

- Experiments are matched by (name, version), benchmarks by name. The unit is the
  experiment as a whole: its document, its trials and its algorithm (configuration
  and pickled state). One already present with identical content is skipped, so
  importing twice duplicates nothing. One present with different content is a
  conflict: nothing is imported and every conflict is named, unless `overwrite`,
  which replaces it in place, trials and algorithm included, keeping its id so that
  the EVC children already in the database stay attached.
- Rows get the database's ids; ``refers.parent_id``/``root_id`` and the trials'
  ``experiment`` are remapped to them. Trials keep their Oríon id (hash).
- The algorithm state is copied byte for byte; an imported lock is not held.
- A parent or root missing from the source (a partial dump) is dropped with a
  warning: the experiment becomes the root of what the source holds of its tree.
  Trials and algorithm documents of experiments absent from the source are skipped
  with a warning.
"""
from __future__ import annotations

import datetime
from collections import Counter, defaultdict
from collections.abc import Hashable
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from orion_sql import exact_json, mapping
from orion_sql.database import Database
from orion_sql.legacy_db import LegacyDocuments
from orion_sql.models import PARAM_TYPES, RESULT_TYPES, algo_locks, benchmarks, experiments, trials
from orion_sql.rows import VALUE_TABLES
from orion_sql.schema import SchemaState, initialise_if_empty, remove_schema
from orion_sql.transfer import NO_PROGRESS, Progress, Summary, TransferError, experiment_trials

# Trials inserted per round of statements: bounds memory and paces the progress bar.
TRIAL_PAGE = 2000
# Every trial column but the id, so that the rows of one executemany share their keys.
_TRIAL_DEFAULTS = {column: None for key, (column, _) in mapping.TRIAL_FIELDS.items() if key != "_id"}
# The trial keys compared between source and database (ids are remapped, so not compared).
_TRIAL_KEYS = [key for key in mapping.TRIAL_FIELDS if key not in ("_id", "experiment")]
_VALUE_TYPES = {"params": PARAM_TYPES, "results": RESULT_TYPES}


class ConflictError(TransferError):
    """Experiments or benchmarks that exist with different content; nothing was imported."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        super().__init__(f"the database already holds {', '.join(labels)} with different content; nothing was imported")


def import_documents(
    database: Database, documents: LegacyDocuments, overwrite: bool = False, progress: Progress = NO_PROGRESS
) -> Summary:
    """Copy legacy `documents` into `database` in one transaction (see the module docstring)."""
    source = _Source(documents)
    created = False
    try:
        with database.transaction(write=True) as conn:
            # Created inside the import's transaction, a failed import leaves even an empty database as it was.
            status = initialise_if_empty(database, conn)
            status.check()
            created = status.state is SchemaState.EMPTY
            with progress(total=len(source.experiments), desc="experiments", unit="exp") as experiments_bar, progress(
                total=source.trial_count, desc="trials", unit="trial"
            ) as trials_bar:
                return _Import(conn, source, overwrite, experiments_bar, trials_bar).run()
    except BaseException:
        # MariaDB commits DDL by itself: the schema created for a failed import is removed.
        if created and not database.dialect.transactional_ddl:
            remove_schema(database)
        raise


class _Source:
    """The source documents, checked and grouped by experiment."""

    def __init__(self, documents: LegacyDocuments):
        self.experiments = documents.experiments
        self.benchmarks = documents.benchmarks
        self.warnings = [
            f"the source's collection {name!r} ({count} documents) is not one of Oríon's; it was not imported"
            for name, count in documents.unknown_collections.items()
        ]
        self.by_id: dict[Hashable, dict] = {}
        for document in self.experiments:
            if not isinstance(document.get("_id"), Hashable) or document.get("_id") is None:
                raise TransferError(f"{self.label(document)} has no usable _id in the source")
            if document["_id"] in self.by_id:
                raise TransferError(f"the source has two experiments with _id {document['_id']!r}")
            self.by_id[document["_id"]] = document
        repeated = _repeated((document.get("name"), document.get("version")) for document in self.experiments)
        if repeated:
            raise TransferError(f"the source has two experiments {repeated[0][0]!r} v{repeated[0][1]}")
        self.trials = self._group(documents.trials, "trial")
        self.trial_count = sum(len(group) for group in self.trials.values())
        algos = self._group(documents.algo, "algorithm document")
        for experiment_id, group in algos.items():
            if len(group) > 1:
                raise TransferError(
                    f"{self.label(self.by_id[experiment_id])} has {len(group)} algorithm documents in the source"
                )
        self.algo = {experiment_id: group[0] for experiment_id, group in algos.items()}
        repeated = _repeated(benchmark.get("name") for benchmark in self.benchmarks)
        if repeated:
            raise TransferError(f"the source has two benchmarks named {repeated[0]!r}")

    def _group(self, documents: list[dict], noun: str) -> dict[Hashable, list[dict]]:
        grouped, orphans = defaultdict(list), 0
        for document in documents:
            experiment_id = document.get("experiment")
            if isinstance(experiment_id, Hashable) and experiment_id in self.by_id:
                grouped[experiment_id].append(document)
            else:
                orphans += 1
        if orphans:
            self.warnings.append(
                f"{orphans} {noun}{'' if orphans == 1 else 's'} of experiments that are not in the source "
                f"{'was' if orphans == 1 else 'were'} not imported"
            )
        return grouped

    @staticmethod
    def label(document: dict) -> str:
        return f"experiment {document.get('name')!r} v{document.get('version')}"

    def root_of(self, document: dict) -> dict:
        """The topmost ancestor of `document` the source holds, following parent links."""
        seen = set()
        while True:
            parent = (document.get("refers") or {}).get("parent_id")
            if not isinstance(parent, Hashable) or parent not in self.by_id or parent in seen:
                return document
            seen.add(parent)
            document = self.by_id[parent]


class _Import:
    """One import inside one transaction: decide what each experiment needs, then write."""

    def __init__(self, conn: Connection, source: _Source, overwrite: bool, experiments_bar, trials_bar):
        self.conn = conn
        self.source = source
        self.overwrite = overwrite
        self.experiments_bar = experiments_bar
        self.trials_bar = trials_bar
        self.summary = Summary(warnings=source.warnings)
        self.ids: dict[Hashable, int] = {}  # source experiment _id -> database id

    def run(self) -> Summary:
        plan, conflicts = self._plan(self._assign_ids())
        benchmark_plan = self._plan_benchmarks(conflicts)
        if conflicts:
            raise ConflictError(conflicts)
        for document, remapped, action in plan:
            self._write_experiment(document, remapped, action)
            self.experiments_bar.update(1)
        self._write_benchmarks(benchmark_plan)
        return self.summary

    def _assign_ids(self) -> dict[Hashable, Any]:
        """Give every source experiment its database id: the one of the same (name, version)
        already there, else a new row (its EVC links are set once all ids are known).
        Returns the database rows the source matched, by source _id."""
        existing = {(row.name, row.version): row for row in self.conn.execute(select(experiments))}
        matches = {}
        for document in self.source.experiments:
            columns = self._columns(document, self._without_links(document))
            row = existing.get((columns["name"], columns["version"]))
            if row is None:
                self.ids[document["_id"]] = self.conn.execute(
                    insert(experiments).values(**columns).returning(experiments.c.id)
                ).scalar_one()
            else:
                matches[document["_id"]] = row
                self.ids[document["_id"]] = row.id
        return matches

    def _plan(self, matches: dict[Hashable, Any]) -> tuple[list[tuple[dict, dict, str]], list[str]]:
        """What each experiment needs (new, skip, replace), and the conflicts."""
        plan, conflicts = [], []
        for document in self.source.experiments:
            remapped = self._remapped(document)
            row = matches.get(document["_id"])
            if row is None:
                plan.append((document, remapped, "new"))
            elif self._same(document, remapped, row):
                plan.append((document, remapped, "skip"))
            elif self.overwrite:
                plan.append((document, remapped, "replace"))
            else:
                conflicts.append(self.source.label(document))
        return plan, conflicts

    # --- experiments ---

    def _columns(self, document: dict, content: dict) -> dict[str, Any]:
        try:
            return mapping.experiment_columns(content)
        except ValueError as error:
            raise TransferError(
                f"{self.source.label(document)} (source _id {document.get('_id')!r}): {error}"
            ) from None

    @staticmethod
    def _without_links(document: dict) -> dict:
        """The document without `_id` and with its EVC links blanked (until every id is known)."""
        content = {key: value for key, value in document.items() if key != "_id"}
        if isinstance(content.get("refers"), dict):
            content["refers"] = {**content["refers"], "parent_id": None, "root_id": None}
        return content

    def _remapped(self, document: dict) -> dict:
        """The document as stored: no `_id`, EVC links remapped to the database's ids."""
        content = {key: value for key, value in document.items() if key != "_id"}
        refers = content.get("refers")
        if not isinstance(refers, dict):
            return content
        refers = dict(refers)
        for key in ("parent_id", "root_id"):
            old = refers.get(key)
            if old is None:
                continue
            if isinstance(old, Hashable) and old in self.ids:
                refers[key] = self.ids[old]
                continue
            self.summary.warnings.append(
                f"{self.source.label(document)}: its {key.split('_')[0]} (source _id {old!r}) is not in the source; "
                f"the link was dropped"
            )
            refers[key] = None if key == "parent_id" else self.ids[self.source.root_of(document)["_id"]]
        content["refers"] = refers
        return content

    def _same(self, document: dict, remapped: dict, row) -> bool:
        """Whether the database's experiment `row` holds exactly what the source holds."""
        label = self.source.label(document)
        if _dumps(remapped, label) != _dumps(row.document, label):
            return False
        stored = self.conn.execute(
            select(algo_locks.c.configuration, algo_locks.c.state).where(algo_locks.c.experiment_id == row.id)
        ).first()
        algo = self.source.algo.get(document["_id"])
        if stored is None or algo is None:
            return stored is None and algo is None
        if (
            _dumps(algo.get("configuration"), label) != _dumps(stored.configuration, label)
            or algo.get("state") != stored.state
        ):
            return False
        source_trials = self.source.trials.get(document["_id"], [])
        return _trials_content(source_trials, label) == _trials_content(experiment_trials(self.conn, row.id), label)

    def _write_experiment(self, document: dict, remapped: dict, action: str) -> None:
        source_trials = self.source.trials.get(document["_id"], [])
        if action == "skip":
            self.summary.skipped += 1
            self.trials_bar.update(len(source_trials))
            return
        experiment_id = self.ids[document["_id"]]
        self.conn.execute(
            update(experiments).where(experiments.c.id == experiment_id).values(**self._columns(document, remapped))
        )
        if action == "replace":
            self.conn.execute(delete(trials).where(trials.c.experiment_id == experiment_id))
            self.conn.execute(delete(algo_locks).where(algo_locks.c.experiment_id == experiment_id))
            self.summary.replaced += 1
        self.summary.experiments += 1
        self._insert_algorithm(document, experiment_id)
        self._insert_trials(document, experiment_id, source_trials)

    def _insert_algorithm(self, document: dict, experiment_id: int) -> None:
        algo = self.source.algo.get(document["_id"])
        if algo is None:
            return
        state, heartbeat = algo.get("state"), algo.get("heartbeat")
        if state is not None and not isinstance(state, bytes):
            raise TransferError(
                f"{self.source.label(document)}: its algorithm state is a {type(state).__name__}, not pickled bytes"
            )
        if heartbeat is not None and not isinstance(heartbeat, datetime.datetime):
            raise TransferError(
                f"{self.source.label(document)}: its algorithm heartbeat {heartbeat!r} is not a datetime"
            )
        self.conn.execute(
            insert(algo_locks).values(
                experiment_id=experiment_id,
                configuration=algo.get("configuration"),
                state=state,
                locked=False,
                owner=None,
                heartbeat=mapping.naive_utc(heartbeat) if heartbeat else None,
            )
        )

    # --- trials ---

    def _insert_trials(self, document: dict, experiment_id: int, documents: list[dict]) -> None:
        """Bulk-insert the trials, then their params and results, a page at a time."""
        label = self.source.label(document)
        repeated = _repeated(trial.get("id") for trial in documents)
        if repeated:
            raise TransferError(f"{label} has two trials with id {repeated[0]!r} in the source")
        for start in range(0, len(documents), TRIAL_PAGE):
            page = [self._trial_rows(trial, experiment_id, label) for trial in documents[start : start + TRIAL_PAGE]]
            self.conn.execute(insert(trials), [row for row, _ in page])
            ids = dict(
                self.conn.execute(
                    select(trials.c.hash, trials.c.id).where(
                        trials.c.experiment_id == experiment_id, trials.c.hash.in_([row["hash"] for row, _ in page])
                    )
                ).all()
            )
            for key, table in VALUE_TABLES.items():
                rows = [{**value, "trial_id": ids[row["hash"]]} for row, values in page for value in values[key]]
                if rows:
                    self.conn.execute(insert(table), rows)
            self.summary.trials += len(page)
            self.trials_bar.update(len(page))

    @staticmethod
    def _trial_rows(trial: dict, experiment_id: int, label: str) -> tuple[dict[str, Any], dict[str, list[dict]]]:
        """The trials row of a source trial, and its params and results rows (trial_id to fill in).

        Checked as the storage checks what it registers, with the trial named in errors.
        """
        try:
            for key in ("id", "status"):
                if trial.get(key) is None:
                    raise ValueError(f"it has no {key!r}")
            values = {key: mapping.value_rows(0, trial.get(key) or []) for key in VALUE_TABLES}
            for key, allowed in _VALUE_TYPES.items():
                for value in values[key]:
                    if value["type"] is not None and value["type"] not in allowed:
                        raise ValueError(
                            f"{key[:-1]} {value['name']!r} has type {value['type']!r}, not one of {allowed}"
                        )
            fields = {key: value for key, value in trial.items() if key not in ("_id", "experiment")}
            return {**_TRIAL_DEFAULTS, **mapping.trial_columns(fields), "experiment_id": experiment_id}, values
        except (ValueError, TypeError, AttributeError) as error:
            raise TransferError(f"{label}, trial {trial.get('id')!r}: {error}") from None

    # --- benchmarks ---

    def _plan_benchmarks(self, conflicts: list[str]) -> list[tuple[dict, int | None]]:
        """The benchmarks to write, with the id of the one each replaces; adds conflicts."""
        existing = {row.name: row for row in self.conn.execute(select(benchmarks))}
        plan: list[tuple[dict, int | None]] = []
        for document in self.source.benchmarks:
            content = {key: value for key, value in document.items() if key != "_id"}
            label = f"benchmark {document.get('name')!r}"
            row = existing.get(document.get("name"))
            if row is None:
                plan.append((content, None))
            elif _dumps(content, label) == _dumps(row.document, label):
                self.summary.skipped += 1
            elif self.overwrite:
                plan.append((content, row.id))
            else:
                conflicts.append(label)
        return plan

    def _write_benchmarks(self, plan: list[tuple[dict, int | None]]) -> None:
        for content, replaced_id in plan:
            try:
                columns = mapping.benchmark_columns(content)
            except ValueError as error:
                raise TransferError(f"benchmark {content.get('name')!r}: {error}") from None
            if replaced_id is None:
                self.conn.execute(insert(benchmarks).values(**columns))
            else:
                self.conn.execute(update(benchmarks).where(benchmarks.c.id == replaced_id).values(**columns))
                self.summary.replaced += 1
            self.summary.benchmarks += 1


def _repeated(values) -> list:
    """The values that occur more than once."""
    return [value for value, count in Counter(values).items() if count > 1]


def _dumps(value: Any, label: str) -> str:
    """Canonical JSON text: equal documents give equal text (NaN included)."""
    try:
        return exact_json.dumps(value)
    except ValueError as error:
        raise TransferError(f"{label}: {error}") from None


def _trials_content(documents: list[dict], label: str) -> str:
    """The trials of one experiment as canonical text, by trial id; ids and missing keys aside."""

    def content(trial: dict) -> dict:
        values = {
            key: [{name: item.get(name) for name in ("name", "type", "value")} for item in trial.get(key) or []]
            for key in VALUE_TABLES
        }
        return {**{key: trial.get(key) for key in _TRIAL_KEYS}, **values}

    return _dumps(sorted((content(trial) for trial in documents), key=lambda trial: str(trial["id"])), label)
