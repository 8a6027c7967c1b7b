"""`orion-sql setup` in this process, on a configuration file in the test's folder:
its questions, their flags, what it writes and what it refuses to overwrite.
(tests/functional/test_orion_sql_setup.py runs it, then `orion hunt`, in an isolated home.)"""
from __future__ import annotations

import io
import os
import stat

import pytest
import yaml
from sqlalchemy.engine import make_url

from orion_sql import setup_command
from orion_sql.cli import main
from support.servers import free_port

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Where setup writes (Oríon's user configuration file, in the test's folder)."""
    path = tmp_path / "config" / "orion.core" / "orion_config.yaml"
    monkeypatch.setattr(setup_command, "config_file", lambda: str(path))
    return path


def setup(monkeypatch, capsys, *args: str, answers: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(answers))
    code = main(["setup", *args])
    out, err = capsys.readouterr()
    return code, out, err


def written(config_file) -> dict:
    return yaml.safe_load(config_file.read_text())


def host_of(url: str) -> str:
    parsed = make_url(url)
    return str(parsed.database) if parsed.get_backend_name() == "sqlite" else url


def test_unattended_writes_the_storage_section(database_url, config_file, monkeypatch, capsys):
    code, out, _ = setup(monkeypatch, capsys, "--url", database_url, "-f")
    assert code == 0
    assert written(config_file) == {"storage": {"type": "sql", "database": {"host": host_of(database_url)}}}
    assert "pass  connection:" in out and "pass  schema:" in out
    assert "orion-sql test" in out.splitlines()[-1]


def test_the_database_is_asked_for_with_the_embedded_default_offered(tmp_path, config_file, monkeypatch, capsys):
    default = str(tmp_path / "data" / "orion_db.sqlite")
    monkeypatch.setattr(setup_command, "DEFAULT_SQLITE_PATH", default)
    code, out, _ = setup(monkeypatch, capsys, answers="\n")
    assert code == 0
    assert f"(default: {default})" in out
    assert written(config_file)["storage"]["database"]["host"] == default
    assert not os.path.exists(default)  # the storage creates it on first use; setup only checked


def test_an_existing_file_is_kept_unless_confirmed_and_its_other_settings_survive(
    sqlite_url_fresh, config_file, monkeypatch, capsys
):
    config_file.parent.mkdir(parents=True)
    original = {"database": {"type": "pickleddb", "host": "/old/orion_db.pkl"}, "worker": {"n_workers": 4}}
    config_file.write_text(yaml.safe_dump(original))

    code, _, _ = setup(monkeypatch, capsys, "--url", sqlite_url_fresh, answers="n\n")
    assert code == 0 and written(config_file) == original

    code, _, err = setup(monkeypatch, capsys, "--url", sqlite_url_fresh, answers="")
    assert code == 1 and "no answer on standard input" in err
    assert written(config_file) == original

    code, _, _ = setup(monkeypatch, capsys, "--url", sqlite_url_fresh, answers="y\n")
    assert code == 0
    # Oríon reads a top-level `database` as storage.database: it must not stay to fight the new one.
    assert written(config_file) == {"worker": {"n_workers": 4},
                                    "storage": {"type": "sql", "database": {"host": host_of(sqlite_url_fresh)}}}


def test_a_database_that_does_not_answer_is_written_only_when_confirmed(config_file, monkeypatch, capsys):
    url = f"postgresql+psycopg://orion@127.0.0.1:{free_port()}/orion"  # nothing listens there
    code, out, _ = setup(monkeypatch, capsys, "--url", url, answers="n\n")
    assert code == 1 and "FAIL  connection:" in out and "write the configuration anyway?" in out
    assert not config_file.exists()
    code, _, _ = setup(monkeypatch, capsys, "--url", url, "--force")
    assert code == 0 and written(config_file)["storage"]["database"]["host"] == url


def test_a_password_is_never_printed_and_the_file_is_private(postgresql_url_fresh, config_file, monkeypatch, capsys):
    url = make_url(postgresql_url_fresh).set(password=PASSWORD).render_as_string(hide_password=False)
    code, out, err = setup(monkeypatch, capsys, "--url", url, "-f")
    assert code == 0  # trust authentication: the server ignores the password
    assert PASSWORD not in out + err
    assert "~/.pgpass" in out and "PGPASSWORD" in out
    assert written(config_file)["storage"]["database"]["host"] == url
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600


def test_a_url_the_storage_cannot_use_is_refused(config_file, monkeypatch, capsys):
    code, _, err = setup(monkeypatch, capsys, "--url", "mongodb://localhost/orion", "-f")
    assert code == 1
    assert "not a database the sql storage supports" in err and err.count("\n") == 1
    assert not config_file.exists()
