"""`orion-sql import` and `orion-sql export` between PickledDB files and SQLite/PostgreSQL.

The source is a PickledDB file written by a real Oríon run on its legacy storage
(an EVC child version, broken and interrupted trials, a benchmark). What the sql
storage then holds is compared with what Oríon's own PickledDB reads, document
by document, with the ids mapped. MongoDB sources share the reading code path
(Oríon's Database API); only their failure to connect can be tested here, as this
machine runs no MongoDB server.
"""
from __future__ import annotations

import copy
import functools
import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
from orion.core.io.database.pickleddb import PickledDB
from orion.core.worker.trial import Trial
from orion.storage.legacy import Legacy
from sqlalchemy import select
from sqlalchemy.engine import make_url
from tqdm import tqdm

from orion_sql import SQL
from orion_sql.cli import main
from orion_sql.database import Database
from orion_sql.importer import import_documents
from orion_sql.legacy_db import read_source
from orion_sql.models import (
    AlgoLockRow,
    algo_locks,
    benchmarks,
    experiments,
    params,
    results,
    trials,
)
from support.orion_runs import run_experiment
from support.schema import table_names

SPACE = {"x": "uniform(0, 1)", "kind": "choices(['a', 'b'])"}
TABLES = [experiments, trials, params, results, algo_locks, benchmarks]
KEPT = ("kept", 1)  # what the database holds before an import (see `occupied_url`)
BENCHMARK = {
    "name": "quad-bench",
    "algorithms": ["random"],
    "targets": [{"assess": ["AverageResult"], "task": ["Branin"]}],
}


class Diverged(RuntimeError):
    """The objective's way of breaking a trial."""


def quad(x, kind, z=0.5):
    if x > 0.7:
        raise Diverged(f"x={x}")
    return [
        {"name": "loss", "type": "objective", "value": (x - 0.3) ** 2 + z + (kind == "b") * 0.1},
        {"name": "x2", "type": "statistic", "value": x * x},
    ]


def legacy(path) -> dict:
    return {"type": "legacy", "database": {"type": "pickleddb", "host": str(path)}}


def fill_pickleddb(path: Path) -> None:
    """A real Oríon run on PickledDB: ``quad`` v1 and its EVC child v2, ``other`` v1, a benchmark."""
    v1 = run_experiment("quad", legacy(path), quad, 8, space=SPACE, algorithm={"random": {"seed": 1}},
                        max_trials=30, max_broken=100)
    v2 = run_experiment("quad", legacy(path), quad, 3, space={**SPACE, "z": "uniform(0, 1, default_value=0.5)"},
                        algorithm={"random": {"seed": 2}}, max_trials=30, max_broken=100, branching={"enable": True})
    v2.release(v2.suggest(), status="interrupted")
    other = run_experiment("other", legacy(path), lambda x: quad(x, "a"), 2, space={"x": "uniform(0, 1)"},
                           algorithm={"random": {"seed": 3}}, max_trials=10, max_broken=100)
    Legacy(database=legacy(path)["database"]).create_benchmark(copy.deepcopy(BENCHMARK))
    for client in (v1, v2, other):
        client.close()


@pytest.fixture(scope="session")
def orion_pickleddb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("orion_run") / "orion_db.pkl"
    fill_pickleddb(path)
    statuses = {trial["status"] for trial in PickledDB(host=str(path)).read("trials")}
    assert {"completed", "broken", "interrupted"} <= statuses
    return path


@pytest.fixture
def source(orion_pickleddb, tmp_path) -> Path:
    """A copy of the real run's PickledDB file, for this test to change."""
    path = tmp_path / "source" / "orion_db.pkl"
    path.parent.mkdir()
    shutil.copy(orion_pickleddb, path)
    return path


@pytest.fixture
def occupied_url(database_url) -> str:
    """A database that already holds an unrelated experiment and trial, so that the
    ids an import gives differ from the source's (a missed remapping shows)."""
    storage = SQL(uri=database_url)
    config = {"name": KEPT[0], "version": KEPT[1], "refers": {"parent_id": None, "root_id": None, "adapter": []},
              "algorithm": {"random": {"seed": 0}}, "metadata": {"user": "kept"}}
    storage.create_experiment(config)
    storage.register_trial(Trial(experiment=config["_id"], status="completed",
                                 params=[{"name": "x", "type": "real", "value": 0.5}],
                                 results=[{"name": "loss", "type": "objective", "value": 1.0}]))
    storage.close()
    return database_url


def run(capsys, *args: str) -> tuple[int, str, str]:
    """`orion-sql ARGS` in this process; exit code, stdout, stderr."""
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_pickleddb(path) -> dict[str, list[dict]]:
    """Every document of a PickledDB file, read by Oríon's own PickledDB."""
    database = PickledDB(host=str(path))
    return {name: database.read(name) for name in ("experiments", "trials", "algo", "benchmarks")}


def snapshot(url: str) -> dict[str, list]:
    """Every row of every table, in key order."""
    database = Database(make_url(url))
    try:
        with database.transaction() as conn:
            return {
                table.name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns))]
                for table in TABLES
            }
    finally:
        database.dispose()


def without_id(document: dict) -> dict:
    return {key: value for key, value in document.items() if key != "_id"}


def remapped(experiment: dict, ids: dict) -> dict:
    """A source experiment as it should be stored: `_id` and EVC links mapped by `ids`."""
    expected = copy.deepcopy(experiment)
    expected["_id"] = ids[experiment["_id"]]
    for key in ("parent_id", "root_id"):
        if expected["refers"][key] is not None:
            expected["refers"][key] = ids[expected["refers"][key]]
    return expected


def id_map(source: list[dict], target: list[dict]) -> dict:
    """Source experiment _id -> target _id, matched by (name, version); the target holds
    the source's experiments and `KEPT`, nothing else."""
    by_key = {(doc["name"], doc["version"]): doc["_id"] for doc in target}
    assert sorted(by_key) == sorted([KEPT, *((doc["name"], doc["version"]) for doc in source)])
    ids = {doc["_id"]: by_key[(doc["name"], doc["version"])] for doc in source}
    assert ids != {key: key for key in ids}  # the ids did change: the comparisons below check the remapping
    return ids


def by_name(experiments: list[dict], name: str, version: int) -> dict:
    (found,) = [doc for doc in experiments if doc["name"] == name and doc["version"] == version]
    return found


def trials_by_hash(trials: list[dict], experiment_id) -> dict[str, dict]:
    """The trials of one experiment by Oríon trial id, without their `_id`."""
    return {trial["id"]: without_id(trial) for trial in trials if trial["experiment"] == experiment_id}


def assert_sql_holds(url: str, expected: dict[str, list[dict]]) -> dict:
    """The sql storage at `url` holds exactly the legacy documents `expected`; returns the id map."""
    storage = SQL(uri=url)
    try:
        stored = storage.fetch_experiments({})
        ids = id_map(expected["experiments"], stored)
        stored_by_id = {doc["_id"]: doc for doc in stored}
        assert len(storage.fetch_trials(uid=by_name(stored, *KEPT)["_id"])) == 1
        for experiment in expected["experiments"]:
            new_id = ids[experiment["_id"]]
            assert stored_by_id[new_id] == remapped(experiment, ids)
            trials = [trial.to_dict() for trial in storage.fetch_trials(uid=new_id)]
            assert trials_by_hash(trials, new_id) == {
                key: {**trial, "experiment": new_id}
                for key, trial in trials_by_hash(expected["trials"], experiment["_id"]).items()
            }
            (algo,) = [algo for algo in expected["algo"] if algo["experiment"] == experiment["_id"]]
            info = storage.get_algorithm_lock_info(uid=new_id)
            assert info.configuration == algo["configuration"]
            assert info.locked is False
            with storage.database.transaction() as conn:
                state = conn.execute(select(AlgoLockRow.state).where(AlgoLockRow.experiment_id == new_id)).scalar_one()
            assert state == algo["state"]  # the pickled bytes, unchanged
        assert [without_id(doc) for doc in storage.fetch_benchmark({})] == [
            without_id(doc) for doc in expected["benchmarks"]
        ]
        return ids
    finally:
        storage.close()


# --- import ------------------------------------------------------------------------


def test_import_copies_a_real_orion_run(source, occupied_url, capsys):
    expected = read_pickleddb(source)
    code, out, err = run(capsys, "import", source, "--url", occupied_url)
    assert code == 0, err
    assert out.startswith(f"Imported 3 experiments ({len(expected['trials'])} trials) and 1 benchmark from {source}")
    assert err == ""
    ids = assert_sql_holds(occupied_url, expected)
    v1, v2 = (doc for doc in expected["experiments"] if doc["name"] == "quad")
    assert v2["refers"]["parent_id"] == v1["_id"]  # the EVC link, remapped by assert_sql_holds
    assert ids[v1["_id"]] != ids[v2["_id"]]


def test_import_shows_experiments_and_trials_moving(source, occupied_url):
    documents = read_source(str(source))
    bars = io.StringIO()
    database = Database(make_url(occupied_url))
    summary = import_documents(
        database, documents, progress=functools.partial(tqdm, file=bars, disable=False, mininterval=0)
    )
    database.dispose()
    text = bars.getvalue()
    assert "experiments: 100%" in text and "3/3" in text
    assert "trials: 100%" in text and f"{summary.trials}/{summary.trials}" in text
    assert summary.trials == len(documents.trials)


def test_importing_twice_duplicates_nothing(source, occupied_url, capsys):
    assert run(capsys, "import", source, "--url", occupied_url)[0] == 0
    before = snapshot(occupied_url)
    code, out, err = run(capsys, "import", source, "--url", occupied_url)
    assert code == 0, err
    assert out.startswith("Imported 0 experiments (0 trials) and 0 benchmarks")
    assert "skipped 4 already present" in out  # 3 experiments and the benchmark
    assert snapshot(occupied_url) == before


def _change_document(storage: Legacy, experiment_id) -> None:
    assert storage.update_experiment(uid=experiment_id, max_trials=99) == 1


def _remove_a_trial(storage: Legacy, experiment_id) -> None:
    gone = storage.fetch_trials(uid=experiment_id)[0]
    assert storage.delete_trials(uid=experiment_id, where={"id": gone.id}) == 1


def _change_algorithm_state(storage: Legacy, experiment_id) -> None:
    assert (
        storage._db.write("algo", {"state": pickle.dumps({"changed": True})}, query={"experiment": experiment_id}) == 1
    )


CHANGES = {"document": _change_document, "a-trial-removed": _remove_a_trial, "algorithm-state": _change_algorithm_state}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_changed_experiment_is_reported_then_replaced_with_overwrite(source, occupied_url, capsys, change):
    assert run(capsys, "import", source, "--url", occupied_url)[0] == 0
    storage = Legacy(database=legacy(source)["database"])
    v1 = storage.fetch_experiments({"name": "quad", "version": 1})[0]
    change(storage, v1["_id"])
    before = snapshot(occupied_url)

    code, out, err = run(capsys, "import", source, "--url", occupied_url)
    assert code == 1
    assert err.splitlines() == [
        "orion-sql: error: the database already holds experiment 'quad' v1 with different content; "
        "nothing was imported (use --overwrite to replace it)"
    ]
    assert snapshot(occupied_url) == before

    code, out, err = run(capsys, "import", source, "--overwrite", "--url", occupied_url)
    assert code == 0, err
    assert out.startswith(f"Imported 1 experiment ({len(storage.fetch_trials(uid=v1['_id']))} trials) and 0 benchmarks")
    assert "; 1 of them replaced what the database held; skipped 3 already present." in out
    ids = assert_sql_holds(occupied_url, read_pickleddb(source))
    assert {*ids.values(), 1} == {row[0] for row in before["experiments"]}  # replaced in place, KEPT is 1


def test_what_is_not_imported_is_said_in_warnings(source, occupied_url, capsys):
    """A partial dump: v2 without its parent v1 (whose trials and algorithm stay), and a
    collection Oríon does not know."""
    storage = Legacy(database=legacy(source)["database"])
    v1 = storage.fetch_experiments({"name": "quad", "version": 1})[0]
    storage.delete_experiment(uid=v1["_id"])
    storage._db.write("lying_trials", [{"a": 1}, {"a": 2}])
    code, out, err = run(capsys, "import", source, "--url", occupied_url)
    assert code == 0, err
    orphans = len(storage.fetch_trials(uid=v1["_id"]))
    assert err.splitlines() == [
        "orion-sql: warning: the source's collection 'lying_trials' (2 documents) is not one of Oríon's; "
        "it was not imported",
        f"orion-sql: warning: {orphans} trials of experiments that are not in the source were not imported",
        "orion-sql: warning: 1 algorithm document of experiments that are not in the source was not imported",
        f"orion-sql: warning: experiment 'quad' v2: its parent (source _id {v1['_id']!r}) is not in the source; "
        "the link was dropped",
        f"orion-sql: warning: experiment 'quad' v2: its root (source _id {v1['_id']!r}) is not in the source; "
        "the link was dropped",
    ]
    sql = SQL(uri=occupied_url)
    (v2,) = sql.fetch_experiments({"name": "quad", "version": 2})
    assert v2["refers"]["parent_id"] is None and v2["refers"]["root_id"] == v2["_id"]
    sql.close()


# --- what cannot be read leaves the database as it was ---------------------------------


def _bad_last_experiment(path: Path) -> None:
    PickledDB(host=str(path)).write("experiments", {"_id": 99, "name": "zzz", "version": "two", "refers": {}})


def _outdated(path: Path) -> None:
    path.unlink()  # an empty database, with the index of Oríon < 0.1.6 that `orion db upgrade` removes
    PickledDB(host=str(path)).ensure_index("experiments", [("name", 1), ("metadata.user", 1)], unique=True)


def _bad_last_trial(path: Path) -> None:
    database = PickledDB(host=str(path))
    last = database.read("experiments")[-1]
    trial = database.read("trials", {"experiment": last["_id"]})[-1]
    database.write("trials", {**trial, "_id": 999, "id": "f" * 32, "status": "exploded"})


BAD_SOURCES = {
    "missing": (lambda path: path.unlink(), "cannot read {path}: No such file or directory"),
    "not-a-pickle": (
        lambda path: path.write_text("experiments: []\n"),
        "{path} is not a PickledDB file: it is not a pickle",
    ),
    "wrong-shape": (
        lambda path: path.write_bytes(pickle.dumps({"experiments": []})),
        "{path} is not a PickledDB file: it holds a dict, not Oríon's EphemeralDB",
    ),
    "outdated": (_outdated, "{path} was written by an older Oríon; run `orion db upgrade` on it first"),
    "bad-last-experiment": (
        _bad_last_experiment,
        "experiment 'zzz' vtwo (source _id 99): version must be a int, got 'two'",
    ),
    "bad-last-trial": (
        _bad_last_trial,
        "experiment 'other' v1, trial 'ffffffffffffffffffffffffffffffff': Given status `exploded` not one of",
    ),
}


@pytest.mark.parametrize("spoil", BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_a_source_that_cannot_be_read_fails_in_one_line_and_changes_nothing(source, occupied_url, capsys, spoil):
    spoil_source, message = spoil
    before = snapshot(occupied_url)
    spoil_source(source)
    code, out, err = run(capsys, "import", source, "--url", occupied_url)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("orion-sql: error: " + message.format(path=source))
    assert snapshot(occupied_url) == before


def test_a_failed_import_leaves_an_empty_database_empty(source, empty_url, capsys):
    _bad_last_trial(source)
    code, _, err = run(capsys, "import", source, "--url", empty_url)
    assert code == 1 and "exploded" in err
    assert table_names(empty_url) == set()  # the schema was created inside the rolled back transaction
    empty_file = source.with_name("empty.pkl")
    empty_file.touch()  # PickledDB reads an empty file as an empty database
    code, out, err = run(capsys, "import", empty_file, "--url", empty_url)
    assert code == 0, err
    assert out.startswith("Imported 0 experiments (0 trials) and 0 benchmarks")
    assert "orion_sql_version" in table_names(empty_url)


@pytest.mark.slow
def test_an_unreachable_mongodb_fails_in_one_line_without_the_password(sqlite_url_fresh, capsys):
    """Oríon gives up on the server after 5 s. The source is read before the database
    is touched, so one dialect is enough here."""
    before = snapshot(sqlite_url_fresh)
    code, out, err = run(capsys, "import", "mongodb://orion:s3cret@127.0.0.1:1/orion", "--url", sqlite_url_fresh)
    assert code == 1
    assert err.splitlines() == [
        "orion-sql: error: cannot read mongodb://orion:***@127.0.0.1:1/orion: "
        "Connection Failure: database not found on specified uri"
    ]
    assert "s3cret" not in out + err
    assert snapshot(sqlite_url_fresh) == before


# --- export ------------------------------------------------------------------------


def test_round_trip_gives_the_same_documents(source, occupied_url, tmp_path, capsys):
    assert run(capsys, "import", source, "--url", occupied_url)[0] == 0
    exported = tmp_path / "exported.pkl"
    code, out, err = run(capsys, "export", exported, "--url", occupied_url)
    assert code == 0, err
    before, after = read_pickleddb(source), read_pickleddb(exported)
    assert out == f"Exported 4 experiments ({len(before['trials']) + 1} trials) and 1 benchmark from " \
                  f"{make_url(occupied_url).render_as_string(hide_password=True)} to {exported}.\n"

    ids = id_map(before["experiments"], after["experiments"])
    kept_id = by_name(after["experiments"], *KEPT)["_id"]
    assert {doc["_id"]: doc for doc in after["experiments"] if doc["_id"] != kept_id} == {
        ids[doc["_id"]]: remapped(doc, ids) for doc in before["experiments"]
    }
    for experiment in before["experiments"]:
        assert trials_by_hash(after["trials"], ids[experiment["_id"]]) == {
            key: {**trial, "experiment": ids[experiment["_id"]]}
            for key, trial in trials_by_hash(before["trials"], experiment["_id"]).items()
        }
    assert {algo["experiment"]: without_id(algo) for algo in after["algo"] if algo["experiment"] != kept_id} == {
        ids[algo["experiment"]]: {**without_id(algo), "experiment": ids[algo["experiment"]]} for algo in before["algo"]
    }
    assert [without_id(doc) for doc in after["benchmarks"]] == [without_id(doc) for doc in before["benchmarks"]]


def test_orion_continues_an_exported_experiment(source, occupied_url, tmp_path, capsys):
    assert run(capsys, "import", source, "--url", occupied_url)[0] == 0
    exported = tmp_path / "exported.pkl"
    assert run(capsys, "export", exported, "--url", occupied_url)[0] == 0

    before = {trial["id"] for trial in read_pickleddb(exported)["trials"]}
    client = run_experiment("quad", legacy(exported), quad, 2, max_broken=100)
    assert client.version == 2
    client.close()

    documents = read_pickleddb(exported)
    (v2,) = [doc for doc in documents["experiments"] if doc["name"] == "quad" and doc["version"] == 2]
    trials = [trial for trial in documents["trials"] if trial["experiment"] == v2["_id"]]
    assert len({trial["id"] for trial in trials} - before) == 2
    (algo,) = [algo for algo in documents["algo"] if algo["experiment"] == v2["_id"]]
    assert algo["locked"] == 0 and algo["state"] is not None


def test_export_refuses_a_non_empty_destination_without_force(database_url, tmp_path, capsys):
    folder = tmp_path / "exports"
    folder.mkdir()
    destination = folder / "taken.pkl"
    destination.write_bytes(b"precious")
    code, _, err = run(capsys, "export", destination, "--url", database_url)
    assert code == 1
    assert err.splitlines() == [
        f"orion-sql: error: {destination} exists and is not empty; use -f/--force to replace it"
    ]
    assert destination.read_bytes() == b"precious"

    code, _, err = run(capsys, "export", destination, "--force", "--url", database_url)
    assert code == 0, err
    assert os.listdir(folder) == ["taken.pkl"]  # no temporary file left behind
    assert read_pickleddb(destination)["experiments"] == []


@pytest.mark.parametrize(
    "destination, message",
    [("missing/out.pkl", "cannot write {path}: the folder {folder} does not exist"), (".", "{path} is a folder")],
    ids=["no-folder", "a-folder"],
)
def test_export_to_a_path_that_cannot_be_written_fails_in_one_line(
    database_url, tmp_path, monkeypatch, capsys, destination, message
):
    folder = tmp_path / "exports"
    folder.mkdir()
    monkeypatch.chdir(folder)
    code, _, err = run(capsys, "export", destination, "--url", database_url)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("orion-sql: error: " + message.format(path=destination, folder=folder / "missing"))
    assert os.listdir(folder) == []


def test_export_of_a_database_without_schema_fails_and_creates_nothing(empty_url, tmp_path, capsys):
    code, _, err = run(capsys, "export", tmp_path / "out.pkl", "--url", empty_url)
    assert code == 1
    assert err.splitlines()[0].endswith("has no orion_sql schema; there is nothing to export")
    assert not (tmp_path / "out.pkl").exists()
    assert table_names(empty_url) == set()
