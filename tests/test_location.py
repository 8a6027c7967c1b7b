"""Where the database is, how its URL is handled, and the storage across pickle and fork.

Resolution order: ``uri=`` > ``storage.database.host`` (ORION_DB_ADDRESS) > the
embedded SQLite file in Oríon's user data folder. Passwords never show.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re

import pytest
from orion.storage.base import setup_storage
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

import orion_sql.location
from orion_sql import SQL
from orion_sql.database import DatabaseUnreachable
from orion_sql.location import EXAMPLE_URL, ConfigurationError, resolve_url
from support.documents import make_trial, new_experiment

PASSWORD = "s3cr3t-Pw-4711"


@pytest.fixture
def default_path(tmp_path, monkeypatch) -> str:
    """The embedded default moved to a folder that does not exist yet."""
    path = tmp_path / "user_data" / "orion" / "orion_db.sqlite"
    monkeypatch.setattr(orion_sql.location, "DEFAULT_SQLITE_PATH", str(path))
    return str(path)


def names(storage) -> list[str]:
    return [doc["name"] for doc in storage.fetch_experiments({})]


# --- URL resolution ------------------------------------------------------------------------


def test_embedded_default_is_created_with_its_folder_on_first_use(default_path):
    assert not os.path.exists(os.path.dirname(default_path))
    storage = SQL()
    assert os.path.isfile(default_path)
    assert storage.database.url.database == default_path
    new_experiment(storage, "embedded")
    # Oríon 0.2.7's default `storage.database` section (what `type: sql` alone gives): the same file
    defaults = {"type": "PickledDB", "name": "orion", "host": "", "port": 27017}
    assert names(SQL(database=defaults)) == ["embedded"]


def test_uri_wins_over_database_host_which_wins_over_the_default(tmp_path, default_path):
    from_uri, from_host = tmp_path / "uri.sqlite", tmp_path / "host.sqlite"
    new_experiment(SQL(uri=str(from_uri), database={"host": str(from_host)}), "via-uri")
    new_experiment(SQL(database={"host": str(from_host)}), "via-host")
    new_experiment(SQL(), "via-default")
    assert names(SQL(uri=f"sqlite:///{from_uri}")) == ["via-uri"]
    assert names(SQL(uri=f"sqlite:///{from_host}")) == ["via-host"]
    assert names(SQL(uri=default_path)) == ["via-default"]


def test_a_relative_path_is_a_sqlite_file_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = SQL(uri=os.path.join("rel", "orion.sqlite"))
    expected = str(tmp_path / "rel" / "orion.sqlite")
    assert storage.database.url.database == expected and os.path.isfile(expected)
    assert resolve_url(None, {"host": "db.sqlite"}).database == str(tmp_path / "db.sqlite")
    assert resolve_url("~/x.sqlite").database == os.path.join(os.path.expanduser("~"), "x.sqlite")
    assert resolve_url("sqlite:///rel/orion.sqlite").database == expected


def test_postgresql_urls_use_psycopg(postgresql_url_fresh):
    for text in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert resolve_url(text).drivername == "postgresql+psycopg"
    plain = make_url(postgresql_url_fresh).set(drivername="postgresql").render_as_string(hide_password=False)
    storage = SQL(uri=plain)
    new_experiment(storage)
    assert storage.database.engine.dialect.driver == "psycopg"
    assert names(SQL(database={"host": plain})) == ["exp"]


@pytest.mark.parametrize(
    "kwargs, source",
    [
        ({"uri": f"mongodb://user:{PASSWORD}@mongo.example.org:27017/orion"}, "uri"),
        ({"database": {"host": f"mongodb://user:{PASSWORD}@mongo.example.org/orion"}}, "storage.database.host"),
        ({"database": {"host": "mysql+nosuchdriver://db.example.org/orion"}}, "storage.database.host"),
        ({"uri": f"postgresql+psycopg2://user:{PASSWORD}@db.example.org/orion"}, "uri"),
        ({"uri": "sqlite:///:memory:"}, "uri"),
        ({"uri": f"postgresql://user:{PASSWORD}@host:notaport/orion"}, "uri"),
    ],
)
def test_urls_that_are_not_ours_are_refused_naming_their_key(kwargs, source):
    with pytest.raises(ConfigurationError) as raised:
        SQL(**kwargs)
    message = str(raised.value)
    assert message.startswith(source)
    assert PASSWORD not in message
    if "driver" in message:  # one we do not ship: never swapped for ours in silence
        assert re.search(r"write (mysql|postgresql):// \(or \1\+(pymysql|psycopg)://\)", message), message
    elif "memory" not in message:
        assert EXAMPLE_URL in message


@pytest.mark.parametrize(
    "database, named",
    [
        ({"name": "mydb"}, "storage.database.name"),
        ({"port": 5433}, "storage.database.port"),
        ({"type": "mongodb"}, "storage.database.type"),
        ({"user": "bob"}, "storage.database.user"),
    ],
)
def test_database_keys_that_would_be_ignored_are_refused(tmp_path, database, named):
    with pytest.raises(ConfigurationError, match=named) as raised:
        SQL(database={"host": str(tmp_path / "x.sqlite"), **database})
    assert "storage.database.host" in str(raised.value)  # says where the URL goes
    assert not (tmp_path / "x.sqlite").exists()


def test_setup_storage_builds_sql_through_the_entry_point(database_url, tmp_path):
    by_uri = setup_storage({"type": "sql", "uri": database_url})
    assert type(by_uri) is SQL
    new_experiment(by_uri)
    by_host = setup_storage(
        {"type": "sql", "database": {"type": "PickledDB", "name": "orion", "port": 27017, "host": database_url}}
    )
    assert type(by_host) is SQL
    assert names(by_host) == ["exp"]


# --- passwords ------------------------------------------------------------------------------


def test_the_password_never_shows(postgresql_url_fresh, caplog):
    caplog.set_level(logging.DEBUG)
    url = make_url(postgresql_url_fresh).set(password=PASSWORD)  # trust auth: any password works
    storage = SQL(uri=url.render_as_string(hide_password=False))
    config = new_experiment(storage)
    trial = storage.register_trial(make_trial(config["_id"], 0.5))
    storage.set_trial_status(trial, "reserved")
    with storage.acquire_algorithm_lock(uid=config["_id"], timeout=1) as locked:
        locked.set_state({"n": 1})
    assert PASSWORD not in repr(storage) and PASSWORD not in repr(storage.database)
    assert url.host in repr(storage) and url.database in repr(storage)

    errors = []
    with pytest.raises(DatabaseUnreachable) as unreachable:
        SQL(uri=url.set(database="orion_sql_no_such_database").render_as_string(hide_password=False))
    errors.append(unreachable.value)
    with pytest.raises(ConfigurationError) as refused:
        SQL(uri=url.set(drivername="mongodb").render_as_string(hide_password=False))
    errors.append(refused.value)
    for error in errors:
        assert PASSWORD not in str(error) and PASSWORD not in repr(error)

    assert caplog.records, "DEBUG logging was on: something should have been logged"
    leaks = [record.getMessage() for record in caplog.records if PASSWORD in record.getMessage()]
    assert leaks == []


# --- pickle and fork ---------------------------------------------------------------------------


def test_storage_survives_pickle(storage):
    config = new_experiment(storage)
    copy = pickle.loads(pickle.dumps(storage))
    assert type(copy) is SQL and repr(copy) == repr(storage)
    copy.register_trial(make_trial(config["_id"], 0.5))
    assert len(storage.fetch_trials(uid=config["_id"])) == 1
    with copy.acquire_algorithm_lock(uid=config["_id"], timeout=1) as locked:
        locked.set_state({"from": "copy"})
    assert storage.get_algorithm_lock_info(uid=config["_id"]).state == {"from": "copy"}
    storage.close()  # an unpickled copy works on its own
    assert names(copy) == ["exp"]
    copy.close()


def _connection_id(storage):
    """What identifies this process's database connection (PostgreSQL: its server pid)."""
    if storage.database.dialect.has_row_locks:
        with storage.database.engine.connect() as conn:
            if storage.database.dialect.name == "mariadb":
                return conn.execute(select(func.connection_id())).scalar_one()
            return conn.execute(select(func.pg_backend_pid())).scalar_one()
    return None


def _use_in_child(storage, experiment_id, results):
    """Child process: use the parent's storage object, report what it saw."""
    trial = storage.register_trial(make_trial(experiment_id, 1.5))
    storage.set_trial_status(trial, "reserved")
    results.put((_connection_id(storage), len(storage.fetch_trials(uid=experiment_id))))


def test_storage_survives_fork_without_sharing_connections(storage):
    config = new_experiment(storage)
    storage.register_trial(make_trial(config["_id"], 0.5))
    parent_connection = _connection_id(storage)  # a pooled connection, open across the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_use_in_child, args=(storage, config["_id"], results))
    child.start()
    child_connection, child_saw = results.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert child_saw == 2
    assert [t.status for t in storage.fetch_trials(uid=config["_id"])] == ["new", "reserved"]
    if parent_connection is not None:
        assert child_connection != parent_connection
        # the parent's own connection survived the child's use and exit
        assert _connection_id(storage) == parent_connection
    with storage.acquire_algorithm_lock(uid=config["_id"], timeout=1):
        pass
