"""Configuration mistakes reach the user as orion_sql's own one-line message, through
every entry point: the storage, Oríon's `setup_storage` and `create_experiment`, and
the `orion` command line (which prints a DatabaseError as ``Error: ...``)."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from orion.client import create_experiment
from orion.storage.base import setup_storage
from sqlalchemy.engine import make_url

import orion_sql.database
import orion_sql.location
from orion_sql import SQL
from orion_sql.database import DatabaseUnreachable
from orion_sql.dialects.postgresql import CONNECT_TIMEOUT_SECONDS
from orion_sql.location import ConfigurationError

PASSWORD = "s3cret-Pa55"


def _mistakes(database_url: str) -> dict[str, tuple[dict, str]]:
    """{mistake: (storage config, what the message must say)} on the test's database."""
    url = make_url(database_url)
    one_slash = f"postgresql:/{url.host}/{url.database}" if url.host else f"sqlite:{url.database}"
    misspelt = {"postgresql": "postgresq", "sqlite": "sqlit", "mariadb": "mariad"}
    backend = url.get_backend_name()
    typo = url.set(drivername=url.drivername.replace(backend, misspelt[backend]))
    return {
        "scheme typo": (
            {"uri": typo.render_as_string(hide_password=False)},
            "is not a database the sql storage supports",
        ),
        "unknown key": ({"database": {"host": database_url, "user": "bob"}}, "storage.database.user is not a setting"),
        "in-memory SQLite": ({"uri": "sqlite:///:memory:"}, "is an in-memory SQLite database"),
        "one slash": ({"uri": one_slash}, "looks like a URL but is not one"),
    }


MISTAKES = ["scheme typo", "unknown key", "in-memory SQLite", "one slash"]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_setup_storage_and_create_experiment_let_orion_sql_s_message_through(
    database_url, mistake, tmp_path, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config, message = _mistakes(database_url)[mistake]
    with pytest.raises(ConfigurationError, match=message):
        setup_storage({"type": "sql", **config})
    with pytest.raises(ConfigurationError, match=message):
        create_experiment("refused", space={"x": "uniform(0, 1)"}, storage={"type": "sql", **config})
    assert list(work.iterdir()) == [], "a refused configuration created files"


def test_a_bad_lock_expiry_is_a_configuration_error(database_url, monkeypatch):
    with pytest.raises(ConfigurationError, match="lock_expiry"):
        setup_storage({"type": "sql", "uri": database_url, "lock_expiry": -1})
    monkeypatch.setenv("ORION_SQL_LOCK_EXPIRY", "soon")
    with pytest.raises(ConfigurationError, match="'soon'"):
        SQL(uri=database_url)


# --- reaching the database ------------------------------------------------------------


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def _silent_url(port: int, query: str = "") -> str:
    return f"postgresql+psycopg://orion:{PASSWORD}@127.0.0.1:{port}/orion{query}"


def test_a_server_that_never_answers_fails_after_the_connect_timeout_of_the_url(silent_server):
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable) as raised:
        SQL(uri=_silent_url(silent_server, "?connect_timeout=1"))
    assert time.monotonic() - started < CONNECT_TIMEOUT_SECONDS
    message = str(raised.value)
    assert message.startswith(f"cannot reach the database postgresql+psycopg://orion:***@127.0.0.1:{silent_server}/orion")
    assert "timeout" in message and PASSWORD not in message and "\n" not in message


@pytest.mark.slow
def test_a_server_that_never_answers_fails_after_the_default_connect_timeout(silent_server):
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable, match="timeout"):
        SQL(uri=_silent_url(silent_server))
    assert CONNECT_TIMEOUT_SECONDS - 1 < time.monotonic() - started < 6 * CONNECT_TIMEOUT_SECONDS


def test_a_sqlite_file_that_cannot_be_opened_is_one_line_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("")
    opening = r"cannot open the database sqlite\+pysqlite:///.*a-file/orion.sqlite: "
    with pytest.raises(DatabaseUnreachable, match=opening):
        SQL(uri=str(tmp_path / "a-file" / "orion.sqlite"))


# --- SQLite files ------------------------------------------------------------------------


def test_a_new_sqlite_file_is_logged_at_info_with_its_absolute_path(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="orion_sql")
    SQL(uri="relative/new.sqlite").close()
    messages = [record.getMessage() for record in caplog.records]
    created = [message for message in messages if "creating the SQLite database" in message]
    assert created == [f"orion_sql: creating the SQLite database {tmp_path / 'relative' / 'new.sqlite'}"]

    caplog.clear()
    SQL(uri="relative/new.sqlite").close()  # it exists now
    monkeypatch.setattr(orion_sql.database, "DEFAULT_SQLITE_PATH", str(tmp_path / "default.sqlite"))
    SQL(uri=str(tmp_path / "default.sqlite")).close()  # the embedded default: expected, not news
    assert not [record for record in caplog.records if "creating the SQLite database" in record.getMessage()]


# --- the orion command line ------------------------------------------------------------


def _orion_hunt(address: str, tmp_path) -> subprocess.CompletedProcess:
    from functional.conftest import ORION, OrionCLI

    cli = OrionCLI(tmp_path, "sqlite:////unused.sqlite")
    environment = {**cli._environments["file"], "ORION_STORAGE_TYPE": "sql", "ORION_DB_ADDRESS": address}
    return subprocess.run(
        [ORION, "hunt", "-n", "refused", "--max-trials", "1", *cli.script("-x~uniform(0,1)")],
        cwd=cli.cwd, env=environment, capture_output=True, text=True, timeout=180,
    )


@pytest.mark.functional
@pytest.mark.slow
def test_orion_hunt_prints_orion_sql_s_message(database_url, tmp_path):
    config, message = _mistakes(database_url)["scheme typo"]
    hunt = _orion_hunt(config["uri"], tmp_path)
    assert hunt.returncode == 1
    last = hunt.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: storage.database.host (ORION_DB_ADDRESS): ") and message in last, hunt.stderr


@pytest.mark.functional
@pytest.mark.slow
def test_orion_hunt_on_a_server_that_never_answers_prints_one_line(silent_server, tmp_path):
    hunt = _orion_hunt(_silent_url(silent_server, "?connect_timeout=1"), tmp_path)
    assert hunt.returncode == 1
    last = hunt.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot reach the database postgresql+psycopg://orion:***@"), hunt.stderr
    assert PASSWORD not in hunt.stderr


def test_orion_sql_current_refuses_a_url_with_one_slash_and_creates_nothing(tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("orion-sql")), "current", "--url", "postgresql:/db.example.org/orion"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={key: value for key, value in os.environ.items() if not key.startswith("ORION_")},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "orion-sql: error: uri: 'postgresql:/db.example.org/orion' looks like a URL but is not one (a URL has "
        f"'://'); expected for example {orion_sql.location.EXAMPLE_URL!r}, or a path to a SQLite file "
        "(write ./postgresql:/db.example.org/orion for a file whose name has a colon)"
    )
    assert list(tmp_path.iterdir()) == []
