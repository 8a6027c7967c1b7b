"""docs/analytics.md, executed: the views and every example query, on SQLite and PostgreSQL.

Each query is read from the document (not copied here), run on a database filled by
real Oríon runs (tests/support/orion_fill.py), and its answer checked against what Oríon's own
API says. A query without a check fails. The schema table of the document must match
the database; the 0002_analytics_views revision keeps data and adds only views.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from orion.client import get_experiment
from orion.core.worker.trial import Trial
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from orion_sql import SQL
from orion_sql.database import Database
from orion_sql.location import sqlite_url
from orion_sql.schema import VERSION_TABLE, alembic_config, current_revision, downgrade, head_revision, upgrade
from support import DIALECTS, orion_fill

DOC = Path(__file__).resolve().parents[1] / "docs" / "analytics.md"
BEFORE_VIEWS = "0001_initial"
VIEWS_REVISION = "0002_analytics_views"
VIEWS_OF_0002 = [
    "best_trial_per_experiment", "experiment_dimensions", "experiment_overview", "trial_overview",
    "trial_parameters", "trial_results", "version_changes", "worker_summary",
]
approx = functools.partial(pytest.approx, rel=1e-9, abs=1e-9)


# --- The document --------------------------------------------------------------

_SQL_BLOCK = re.compile(r"^```sql(?P<tag>[^\n]*)\n(?P<body>.*?)^```", re.S | re.M)
_NAME_LINE = re.compile(r"-- name: (\w+)\s*$")


def parse_queries(markdown: str) -> dict[str, dict[str | None, str]]:
    """Every ```sql block of the document: name -> {dialect or None (portable): SQL}.

    Raises ValueError for a block without a `-- name:` first line, an unknown dialect
    tag, a name given twice, or a name with variants for some dialects only.
    """
    queries: dict[str, dict[str | None, str]] = {}
    for block in _SQL_BLOCK.finditer(markdown):
        line = markdown.count("\n", 0, block.start()) + 1
        tag = block["tag"].strip() or None
        if tag is not None and tag not in DIALECTS:
            raise ValueError(f"line {line}: unknown dialect {tag!r} (```sql, ```sql sqlite or ```sql postgresql)")
        first = block["body"].splitlines()[0] if block["body"].strip() else ""
        named = _NAME_LINE.fullmatch(first)
        if not named:
            raise ValueError(f"line {line}: a sql block must start with '-- name: <name>', not {first!r}")
        variants = queries.setdefault(named[1], {})
        if tag in variants:
            raise ValueError(f"line {line}: query {named[1]!r} is given twice for {tag or 'all databases'}")
        variants[tag] = block["body"]
    for name, variants in queries.items():
        if set(variants) not in ({None}, set(DIALECTS)):
            raise ValueError(f"query {name!r}: give one portable block or one per database {DIALECTS}")
    return queries


def parse_schema_table(markdown: str) -> dict[str, tuple[str, list[str]]]:
    """The document's schema table: name -> (kind, columns); a kind may name the one
    database that has it: ``table (MariaDB)``."""
    rows = re.findall(r"^\| `(\w+)` \| ((?:table|view)(?: \(\w+\))?) \| [^|]+ \| (.+) \|$", markdown, re.M)
    return {name: (kind, re.findall(r"`(\w+)`", columns)) for name, kind, columns in rows}


def on(kind: str, dialect: str) -> bool:
    """Whether a schema table's `kind` is there on `dialect`."""
    only = re.search(r"\((\w+)\)", kind)
    return only is None or only.group(1).lower() == dialect


MARKDOWN = DOC.read_text(encoding="utf-8")
QUERIES = parse_queries(MARKDOWN)
SCHEMA = parse_schema_table(MARKDOWN)
DOCUMENTED_VIEWS = sorted(name for name, (kind, _) in SCHEMA.items() if kind == "view")


def test_parser_rejects_malformed_blocks():
    with pytest.raises(ValueError, match="must start with '-- name"):
        parse_queries("```sql\nSELECT 1\n```\n")
    with pytest.raises(ValueError, match="one per database"):
        parse_queries("```sql sqlite\n-- name: q\nSELECT 1\n```\n")
    with pytest.raises(ValueError, match="unknown dialect 'oracle'"):
        parse_queries("```sql oracle\n-- name: q\nSELECT 1\n```\n")
    with pytest.raises(ValueError, match="given twice"):
        parse_queries("```sql\n-- name: q\nSELECT 1\n```\n```sql\n-- name: q\nSELECT 2\n```\n")


def test_document_has_the_promised_content():
    assert len(QUERIES) >= 8
    assert any(None not in variants for variants in QUERIES.values()), "a per-database pair is exercised"
    assert {"trial_overview", "trial_parameters", "trial_results"} <= set(DOCUMENTED_VIEWS)


# --- A database filled by real Oríon runs, once per module and dialect ----------------


class Orion:
    """What Oríon's own API says about a database."""

    def __init__(self, url: str):
        self.storage = SQL(uri=url)

    def experiments(self) -> list[tuple[str, int]]:
        return sorted((doc["name"], doc["version"]) for doc in self.storage.fetch_experiments({}))

    @functools.cache  # noqa: B019 (one Orion per module and dialect: the cache lives as long as it)
    def client(self, name: str, version: int):
        return get_experiment(name, version, storage=self.storage)

    def trials(self, name: str, version: int, status: str | None = None) -> list[Trial]:
        client = self.client(name, version)
        return client.fetch_trials_by_status(status) if status else client.fetch_trials()

    def close(self) -> None:
        self.storage.close()


@dataclass
class Filled:
    dialect: str
    engine: Engine
    orion: Orion


@contextlib.contextmanager
def fresh_database(request, dialect: str, tmp_path_factory):
    """The URL of a new, empty database (Oríon's storage creates the schema)."""
    if dialect == "sqlite":
        yield str(sqlite_url(str(tmp_path_factory.mktemp("analytics") / "orion.sqlite")))
        return
    server = request.getfixturevalue(dialect)  # skips when no MariaDB answers
    name = f"orion_sql_analytics_{os.getpid()}"
    server.create(name)
    yield server.url(name)
    server.drop(name)


@pytest.fixture(scope="module", params=DIALECTS)
def filled(request, tmp_path_factory):
    with fresh_database(request, request.param, tmp_path_factory) as url:
        orion_fill.fill(url)
        engine, orion = create_engine(url), Orion(url)
        yield Filled(request.param, engine, orion)
        engine.dispose()
        orion.close()


# --- Checks: what each query must answer, from Oríon's API --------------------------

CHECKS: dict[str, tuple[dict, Callable]] = {}


def check(name: str, **binds):
    """Register the check of query `name`, run with these bind parameters."""

    def register(verify):
        CHECKS[name] = (binds, verify)
        return verify

    return register


def _time(value):
    """A timestamp as Python has it (SQLite returns the stored text)."""
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


def _json(value):
    """A JSON value as Python has it (SQLite returns the JSON text)."""
    return json.loads(value) if isinstance(value, str) else value


def _by_objective(trial: Trial):
    return trial.objective.value, trial.id_override


def _params(trial: Trial) -> list[dict]:
    return trial.to_dict()["params"]


def _seconds(trial: Trial) -> float | None:
    if trial.start_time and trial.end_time:
        return (trial.end_time - trial.start_time).total_seconds()
    return None


def _mean(values):
    return statistics.fmean(values) if values else None


def _broken_rate(statuses: list[str]) -> float | None:
    finished = [status for status in statuses if status in ("completed", "broken")]
    return finished.count("broken") / len(finished) if finished else None


def _ntile(items: list, buckets: int) -> list[list]:
    """SQL's NTILE: `buckets` groups in order, the first ones one larger when uneven."""
    size, larger = divmod(len(items), buckets)
    groups, start = [], 0
    for index in range(buckets):
        end = start + size + (1 if index < larger else 0)
        if end > start:
            groups.append(items[start:end])
        start = end
    return groups


@check("status_counts")
def check_status_counts(rows, orion):
    expected = {}
    for name, version in orion.experiments():
        for status in Trial.allowed_stati:
            count = len(orion.trials(name, version, status))
            if count:
                expected[(name, version, status)] = count
    assert {(r["experiment_name"], r["version"], r["status"]): r["trials"] for r in rows} == expected


@check("top_trials", experiment="mlp", version=1)
def check_top_trials(rows, orion, experiment, version):
    completed = sorted(orion.trials(experiment, version, "completed"), key=_by_objective)
    assert len(completed) > 10, "the run must give LIMIT 10 something to cut"
    best = completed[:10]
    assert [r["trial_hash"] for r in rows] == [trial.id for trial in best]
    for row, trial in zip(rows, best, strict=True):
        assert row["objective"] == trial.objective.value
        assert row["lr"] == trial.params["lr"]
        assert row["layers"] == trial.params["layers"]
        assert row["optimizer"] == trial.params["optimizer"]
        assert _time(row["end_time"]) == trial.end_time


@check("best_per_experiment")
def check_best_per_experiment(rows, orion):
    expected = {}
    for name, version in orion.experiments():
        completed = orion.trials(name, version, "completed")
        if completed:
            best = min(completed, key=_by_objective)
            user = orion.client(name, version).metadata["user"]
            expected[(name, version)] = (user, best.id, best.objective.value, best.end_time)
    got = {
        (r["experiment_name"], r["version"]): (r["username"], r["trial_hash"], r["objective"], _time(r["end_time"]))
        for r in rows
    }
    assert got == expected
    assert len(expected) == 4


@check("objective_over_time", experiment="mlp", version=1)
def check_objective_over_time(rows, orion, experiment, version):
    completed = sorted(orion.trials(experiment, version, "completed"), key=lambda t: (t.end_time, t.id_override))
    best_so_far = itertools.accumulate((trial.objective.value for trial in completed), min)
    expected = [(t.id, t.end_time, t.objective.value, best) for t, best in zip(completed, best_so_far, strict=True)]
    got = [(r["trial_hash"], _time(r["end_time"]), r["objective"], r["best_so_far"]) for r in rows]
    assert got == expected
    assert expected[-1][3] < expected[0][3], "the best so far improves during the run"


@check("objective_by_choice", experiment="mlp", version=1)
def check_objective_by_choice(rows, orion, experiment, version):
    groups = defaultdict(list)
    for trial in orion.trials(experiment, version, "completed"):
        for param in _params(trial):
            if param["type"] in ("categorical", "integer"):
                value = param["value"]
                key = (param["name"], value, None) if isinstance(value, str) else (param["name"], None, value)
                groups[key].append(trial.objective.value)
    expected = {key: (len(objs), approx(statistics.fmean(objs)), min(objs)) for key, objs in groups.items()}
    got = {
        (r["parameter_name"], r["text_value"], r["numeric_value"]): (
            r["trials"],
            r["mean_objective"],
            r["best_objective"],
        )
        for r in rows
    }
    assert got == expected
    assert {key[0] for key in expected} == {"layers", "optimizer"}
    order = [(r["parameter_name"], r["mean_objective"]) for r in rows]
    assert order == sorted(order)


@check("objective_by_quartile", experiment="mlp", version=1)
def check_objective_by_quartile(rows, orion, experiment, version):
    values = defaultdict(list)
    for trial in orion.trials(experiment, version, "completed"):
        for param in _params(trial):
            if param["type"] == "real":
                values[param["name"]].append((param["value"], trial.id_override, trial.objective.value))
    expected = []
    for name in sorted(values):
        for quartile, chunk in enumerate(_ntile(sorted(values[name]), 4), start=1):
            xs, objectives = [x for x, _, _ in chunk], [y for _, _, y in chunk]
            expected.append((name, quartile, min(xs), max(xs), len(chunk), approx(statistics.fmean(objectives))))
    got = [(r["parameter_name"], r["quartile"], r["low"], r["high"], r["trials"], r["mean_objective"]) for r in rows]
    assert got == expected
    assert [e[1] for e in expected] == [1, 2, 3, 4]


@check("parameter_correlation", experiment="mlp", version=1)
def check_parameter_correlation(rows, orion, experiment, version):
    pairs = defaultdict(list)
    for trial in orion.trials(experiment, version, "completed"):
        for param in _params(trial):
            if isinstance(param["value"], (int, float)):
                pairs[param["name"]].append((param["value"], trial.objective.value))
    expected = {name: (len(xy), approx(statistics.correlation(*zip(*xy, strict=True)))) for name, xy in pairs.items()}
    assert {r["parameter_name"]: (r["trials"], r["correlation"]) for r in rows} == expected
    assert set(expected) == {"lr", "layers"}


@check("worker_failure_rate")
def check_worker_failure_rate(rows, orion):
    trials = defaultdict(list)
    for name, version in orion.experiments():
        for trial in orion.trials(name, version):
            trials[trial.worker or "(not recorded)"].append(((name, version), trial.status))
    expected = {
        worker: (
            len({experiment for experiment, _ in items}),
            len(items),
            [status for _, status in items].count("completed"),
            [status for _, status in items].count("broken"),
            _broken_rate([status for _, status in items]),
        )
        for worker, items in trials.items()
    }
    got = {r["worker"]: (r["experiments"], r["trials"], r["completed"], r["broken"], r["broken_rate"]) for r in rows}
    assert got == {
        worker: (*counts, approx(rate) if rate is not None else None) for worker, (*counts, rate) in expected.items()
    }
    # Named by prepare_trial hooks, and by the storage (host:pid) where no hook named them.
    assert {"node-a", "node-b", "node-c"} <= set(expected)
    assert any(worker.endswith(f":{os.getpid()}") for worker in expected), expected
    order = sorted(expected, key=lambda w: (expected[w][4] is None, -(expected[w][4] or 0), w))
    assert [r["worker"] for r in rows] == order


@check("workers_of_experiment", experiment="mlp", version=1)
def check_workers_of_experiment(rows, orion, experiment, version):
    trials = defaultdict(list)
    for trial in orion.trials(experiment, version):
        trials[trial.worker].append(trial)
    expected = {
        worker: (
            len(items),
            sum(t.status == "completed" for t in items),
            sum(t.status == "broken" for t in items),
            approx(_broken_rate([t.status for t in items])),
            approx(_mean([_seconds(t) for t in items if t.status == "completed"])),
        )
        for worker, items in trials.items()
    }
    got = {
        r["worker"]: (
            r["trial_count"],
            r["completed_count"],
            r["broken_count"],
            r["broken_rate"],
            r["mean_completed_seconds"],
        )
        for r in rows
    }
    assert got == expected
    assert set(expected) == {"node-a", "node-b"}


@check("durations_by_status", experiment="svm", version=1)
def check_durations_by_status(rows, orion, experiment, version):
    expected = {}
    for status in Trial.allowed_stati:
        trials = orion.trials(experiment, version, status)
        if trials:
            seconds = [s for s in map(_seconds, trials) if s is not None]
            expected[status] = (
                len(trials), len(seconds), approx(_mean(seconds)) if seconds else None,
                min(seconds, default=None), max(seconds, default=None),
            )
    got = {
        r["status"]: (
            r["trials"], r["timed_trials"], r["mean_seconds"],
            approx(r["min_seconds"]) if r["min_seconds"] is not None else None,
            approx(r["max_seconds"]) if r["max_seconds"] is not None else None,
        )
        for r in rows
    }
    assert got == expected
    assert {"completed", "broken", "interrupted"} <= set(expected)


@check("results_summary", experiment="mlp", version=1)
def check_results_summary(rows, orion, experiment, version):
    values = defaultdict(list)
    for trial in orion.trials(experiment, version):
        for result in trial.to_dict()["results"]:
            values[(result["name"], result["type"])].append(result["value"])
    expected = {key: (len(v), min(v), approx(statistics.fmean(v)), max(v)) for key, v in values.items()}
    got = {(r["result_name"], r["result_type"]): (r["trials"], r["low"], r["mean"], r["high"]) for r in rows}
    assert got == expected
    assert set(expected) == {("loss", "objective"), ("accuracy", "statistic")}


@check("experiments_of_user", user="alice")
def check_experiments_of_user(rows, orion, user):
    expected = []
    for name, version in orion.experiments():
        client = orion.client(name, version)
        if client.metadata["user"] != user:
            continue
        completed = orion.trials(name, version, "completed")
        expected.append((
            name, version, client.metadata["datetime"], next(iter(client.configuration["algorithm"])),
            len(orion.trials(name, version)), len(completed), len(orion.trials(name, version, "broken")),
            min((t.objective.value for t in completed), default=None),
        ))
    expected.sort(key=lambda e: (e[2], e[0], e[1]))
    got = [
        (r["experiment_name"], r["version"], _time(r["created_at"]), r["algorithm"], r["trial_count"],
         r["completed_count"], r["broken_count"], r["best_objective"])
        for r in rows
    ]
    assert got == expected
    assert [(e[0], e[1]) for e in expected] == [("mlp", 1), ("mlp", 2), ("mlp-wide", 1)]


@check("evc_tree", experiment="mlp-wide", version=1)
def check_evc_tree(rows, orion, experiment, version):
    expected = []
    for node in orion.client(experiment, version).node.root:  # pre-order, from the root
        depth, parent = 0, node.parent
        while parent is not None:
            depth, parent = depth + 1, parent.parent
        parent = node.parent
        expected.append((node.name, node.version, parent and parent.name, parent and parent.version, depth))
    expected.sort(key=lambda e: (e[4], e[0], e[1]))
    got = [(r["experiment_name"], r["version"], r["parent_name"], r["parent_version"], r["depth"]) for r in rows]
    assert got == expected
    assert expected == [("mlp", 1, None, None, 0), ("mlp", 2, "mlp", 1, 1), ("mlp-wide", 1, "mlp", 2, 2)]


@check("version_differences", experiment_a="mlp", version_a=1, experiment_b="mlp-wide", version_b=1)
def check_version_differences(rows, orion, experiment_a, version_a, experiment_b, version_b):
    a = orion.client(experiment_a, version_a).configuration
    b = orion.client(experiment_b, version_b).configuration
    expected = [
        ("dimension", d, prior, b["space"].get(d)) for d, prior in a["space"].items() if b["space"].get(d) != prior
    ]
    expected += [("dimension", d, None, prior) for d, prior in b["space"].items() if d not in a["space"]]
    if a["algorithm"] != b["algorithm"]:
        expected.append(("algorithm", next(iter(a["algorithm"])), a["algorithm"], b["algorithm"]))
    expected.sort(key=lambda e: (e[0], e[1]))
    got = [
        (r["what"], r["name"], _json(r["old_value"]), _json(r["new_value"])) if r["what"] == "algorithm"
        else (r["what"], r["name"], r["old_value"], r["new_value"])
        for r in rows
    ]
    assert got == expected
    assert [e[1] for e in expected] == ["random", "dropout", "layers"]


@check("recorded_changes", experiment="mlp")
def check_recorded_changes(rows, orion, experiment):
    expected = []
    for name, version in orion.experiments():
        node = orion.client(name, version).node
        if node.root.name != experiment or node.parent is None:
            continue
        for adapter in orion.client(name, version).configuration["refers"]["adapter"]:
            dimension = (adapter.get("param") or {}).get("name") or adapter.get("name") or adapter.get("old_name")
            expected.append(
                (name, version, node.parent.name, node.parent.version, adapter["of_type"], dimension, adapter)
            )
    key = lambda e: (e[0], e[1], e[4], e[5] or "")  # noqa: E731
    got = [
        (r["experiment_name"], r["version"], r["parent_name"], r["parent_version"], r["change_type"],
         r["dimension"], _json(r["details"]))
        for r in rows
    ]
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert {e[4] for e in expected} == {"algorithmchange", "dimensionaddition", "dimensionpriorchange"}


@check("parameter_ranges_by_version", experiment="mlp")
def check_parameter_ranges_by_version(rows, orion, experiment):
    values = defaultdict(list)
    for name, version in orion.experiments():
        if name == experiment:
            for trial in orion.trials(name, version):
                for param in _params(trial):
                    values[(param["name"], version, param["type"])].append(param["value"])
    expected = []
    for (name, version, kind), v in sorted(values.items()):
        numbers = [x for x in v if not isinstance(x, str)]
        expected.append(
            (name, version, kind, len(v), min(numbers, default=None), max(numbers, default=None), len(set(v)))
        )
    got = [
        (r["parameter_name"], r["version"], r["parameter_type"], r["trials"], r["low"], r["high"], r["distinct_values"])
        for r in rows
    ]
    assert got == expected
    assert {(e[0], e[1]) for e in expected} >= {("dropout", 2), ("lr", 1), ("lr", 2)}


# --- The document, executed ------------------------------------------------------------


@pytest.mark.slow  # the first test on each database runs Oríon to fill it
@pytest.mark.parametrize("name", sorted(QUERIES))
def test_example_query(filled, name):
    if name not in CHECKS:
        pytest.fail(f"{DOC.name}: query {name!r} has no check in {Path(__file__).name}; add one")
    binds, verify = CHECKS[name]
    variants = QUERIES[name]
    statement = text(variants.get(filled.dialect, variants.get(None)))
    assert set(statement.compile().params) == set(binds), f"{name}: the document's :parameters differ from the check's"
    with filled.engine.connect() as conn:
        rows = conn.execute(statement, binds).mappings().all()
    assert rows, f"{name} found nothing: its check would prove nothing"
    verify(rows, filled.orion, **binds)


def test_every_check_has_a_query():
    assert set(CHECKS) - set(QUERIES) == set(), "checks for queries no longer in the document"


@pytest.mark.slow
def test_schema_table_matches_the_database(filled):
    inspector = inspect(filled.engine)
    assert sorted(inspector.get_view_names()) == DOCUMENTED_VIEWS
    here = {name: columns for name, (kind, columns) in SCHEMA.items() if on(kind, filled.dialect)}
    documented_tables = {name for name, (kind, _) in SCHEMA.items() if kind.startswith("table") and name in here}
    assert set(inspector.get_table_names()) - {VERSION_TABLE} == documented_tables
    for name, columns in here.items():
        assert [column["name"] for column in inspector.get_columns(name)] == columns, name


@pytest.mark.slow
def test_views_are_read_only(filled):
    for view in DOCUMENTED_VIEWS:
        with filled.engine.connect() as conn:
            transaction = conn.begin()
            try:
                with pytest.raises(DBAPIError):
                    conn.execute(text(f"DELETE FROM {view}"))
            finally:
                transaction.rollback()


@pytest.mark.slow
def test_trial_overview_is_what_orion_stores(filled):
    orion = filled.orion
    expected = {}
    for name, version in orion.experiments():
        for trial in orion.trials(name, version):
            expected[trial.id_override] = (
                name, version, trial.id, trial.status, trial.worker, _time(trial.submit_time),
                _time(trial.start_time), _time(trial.end_time),
                approx(_seconds(trial)) if _seconds(trial) is not None else None,
                trial.objective.value if trial.objective else None,
            )
    with filled.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM trial_overview")).mappings().all()
    got = {
        r["trial_id"]: (
            r["experiment_name"], r["version"], r["trial_hash"], r["status"], r["worker"], _time(r["submit_time"]),
            _time(r["start_time"]), _time(r["end_time"]), r["duration_seconds"], r["objective"],
        )
        for r in rows
    }
    assert got == expected


# --- The revision -------------------------------------------------------------------------


def schema_objects(url: str) -> dict:
    """Everything but views: tables with their columns, keys, checks and indexes; triggers and rules."""
    engine = create_engine(url)
    inspector = inspect(engine)
    tables = {
        table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (fk["name"], tuple(fk["constrained_columns"])) for fk in inspector.get_foreign_keys(table)
            ),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), i["unique"]) for i in inspector.get_indexes(table)),
        }
        for table in inspector.get_table_names()
    }
    hooks = {
        "mariadb": "SELECT 'trigger', trigger_name FROM information_schema.triggers WHERE trigger_schema = DATABASE()",
        "sqlite": "SELECT type, name FROM sqlite_master WHERE type = 'trigger'",
        "postgresql": "SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal"
                      " UNION ALL SELECT 'rule', rulename FROM pg_rules WHERE schemaname = current_schema()",
    }[engine.dialect.name]
    with engine.connect() as conn:
        write_hooks = sorted(tuple(row) for row in conn.execute(text(hooks)))
    views = sorted(inspector.get_view_names())
    engine.dispose()
    return {"tables": tables, "write_hooks": write_hooks, "views": views}


@pytest.mark.slow
def test_upgrade_keeps_the_data_and_adds_only_views(database_url):
    """0001 -> 0002 on a database Oríon wrote: same tables, keys, indexes, no trigger; data intact."""
    orion_fill.fill_one_experiment(database_url)
    database = Database(make_url(database_url))
    orion = Orion(database_url)
    before = {t.id_override: t.to_dict() for t in orion.trials("mlp", 1)}
    orion.close()
    assert len(before) >= 3

    head = head_revision()
    assert downgrade(database, BEFORE_VIEWS) == (head, BEFORE_VIEWS)
    at_0001 = schema_objects(database_url)
    assert upgrade(database, VIEWS_REVISION) == (BEFORE_VIEWS, VIEWS_REVISION)
    at_0002 = schema_objects(database_url)
    assert upgrade(database) == (VIEWS_REVISION, head)
    database.dispose()

    assert at_0001["views"] == []
    assert at_0002["views"] == VIEWS_OF_0002
    assert at_0002["tables"] == at_0001["tables"], "the revision changes no table, key or index"
    assert at_0002["write_hooks"] == at_0001["write_hooks"] == [], "no trigger or rule costs the storage's writes"

    orion = Orion(database_url)  # the storage starts on the upgraded database
    after = {t.id_override: t.to_dict() for t in orion.trials("mlp", 1)}
    orion.close()
    assert after == before
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT trial_id, trial_hash, status, objective FROM trial_overview")).all()
    engine.dispose()
    assert sorted(rows) == sorted(
        (uid, t["id"], t["status"], next((r["value"] for r in t["results"] if r["type"] == "objective"), None))
        for uid, t in before.items()
    )


def test_alembic_check_passes_with_the_views(database_url):
    database = Database(make_url(database_url))
    with database.transaction() as conn:
        assert current_revision(conn) == head_revision()
        assert sorted(inspect(conn).get_view_names()) == DOCUMENTED_VIEWS
        command.check(alembic_config(conn))  # raises when the models and the revisions differ
    database.dispose()
