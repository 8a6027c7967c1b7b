"""The `orion-sql` command on real SQLite files and PostgreSQL databases.

Most tests call :func:`orion_sql.cli.main` in this process (an Oríon import costs
seconds); the console script itself runs as a subprocess where what is checked
is what a terminal shows: the prompt read from stdin, one error line, no traceback.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

from orion_sql import __version__
from orion_sql.cli import main
from orion_sql.database import Database
from orion_sql.location import DEFAULT_SQLITE_PATH, configured_url, sqlite_url
from orion_sql.schema import downgrade, head_revision, revisions
from support.schema import FUTURE_REVISION, revision_of, stamp, table_names

ORION_SQL = str(Path(sys.executable).with_name("orion-sql"))  # the console script of this environment
PASSWORD = "s3cret-Pa55"
UNREACHABLE = URL.create(
    "postgresql+psycopg", username="orion", password=PASSWORD, host="127.0.0.1", port=1, database="orion"
)


def run(monkeypatch, capsys, *args: str, answers: str | None = None) -> tuple[int, str, str]:
    """`orion-sql ARGS` in this process, with `answers` on stdin; exit code, stdout, stderr."""
    if answers is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(answers))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def at(url: str, revision: str) -> str:
    """The database `url`, brought down to `revision`."""
    database = Database(make_url(url))
    downgrade(database, revision)
    database.dispose()
    return url


# --- upgrade -------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"orion-sql {__version__} (schema head {head_revision()})"


@pytest.mark.parametrize("answers", ["n\n", "\n", "maybe\nno\n"], ids=["no", "default", "asked-again"])
def test_upgrade_refused_at_the_prompt_leaves_the_database_untouched(empty_url, monkeypatch, capsys, answers):
    code, out, _ = run(monkeypatch, capsys, "upgrade", "--url", empty_url, answers=answers)
    assert code == 0
    assert "backup" in out and "(y/N)" in out and "not changed" in out
    assert revision_of(empty_url) is None
    assert table_names(empty_url) == set()


def test_upgrade_without_an_answer_on_stdin_fails_and_leaves_the_database_untouched(empty_url, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "upgrade", "--url", empty_url, answers="")
    assert code == 1
    assert err.splitlines() == [
        "orion-sql: error: no answer on standard input; use -f/--force to proceed without asking"
    ]
    assert table_names(empty_url) == set()


def test_upgrade_accepted_at_the_prompt(empty_url, monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "upgrade", "--url", empty_url, answers="y\n")
    assert code == 0
    assert out.splitlines()[-1].endswith(f"from base (no orion_sql schema) to {head_revision()}.")
    assert revision_of(empty_url) == head_revision()


def test_upgrade_force_does_not_ask(empty_url, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # an attempt to ask would fail
    code, out, _ = run(monkeypatch, capsys, "upgrade", "-f", "--url", empty_url)
    assert code == 0
    assert "(y/N)" not in out
    assert revision_of(empty_url) == head_revision()


@pytest.mark.parametrize("revision", revisions()[:-1])
def test_upgrade_an_outdated_database_says_from_which_revision_to_which(database_url, revision, monkeypatch, capsys):
    at(database_url, revision)
    code, out, _ = run(monkeypatch, capsys, "upgrade", "--force", "--url", database_url)
    assert code == 0
    assert out.splitlines()[-1].endswith(f"from {revision} to {head_revision()}.")
    assert revision_of(database_url) == head_revision()


def test_upgrade_at_head_has_nothing_to_do(database_url, monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "upgrade", "--url", database_url, answers="")
    assert code == 0
    assert f"already at head {head_revision()}" in out


def test_upgrade_refuses_a_database_of_a_newer_orion_sql(database_url, monkeypatch, capsys):
    stamp(database_url, FUTURE_REVISION)
    code, _, err = run(monkeypatch, capsys, "upgrade", "-f", "--url", database_url)
    assert code == 1
    (line,) = err.splitlines()
    assert FUTURE_REVISION in line and "newer orion_sql" in line
    assert revision_of(database_url) == FUTURE_REVISION


# --- current -------------------------------------------------------------------


def test_current_up_to_date_exits_0(database_url, monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "current", "--url", database_url)
    assert code == 0
    assert f"revision: {head_revision()}" in out and "state:    up to date" in out


def test_current_empty_exits_5(empty_url, monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "current", "--url", empty_url)
    assert code == 5
    assert "state:    empty" in out
    assert table_names(empty_url) == set()


@pytest.mark.parametrize("revision", revisions()[:-1])
def test_current_outdated_exits_3(database_url, revision, monkeypatch, capsys):
    at(database_url, revision)
    code, out, _ = run(monkeypatch, capsys, "current", "--url", database_url)
    assert code == 3
    assert f"revision: {revision}" in out and "state:    outdated" in out and "orion-sql upgrade" in out


def test_current_newer_exits_4(database_url, monkeypatch, capsys):
    stamp(database_url, FUTURE_REVISION)
    code, out, _ = run(monkeypatch, capsys, "current", "--url", database_url)
    assert code == 4
    assert f"revision: {FUTURE_REVISION}" in out and "state:    newer" in out


def test_current_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["current", "--help"])
    out = capsys.readouterr().out
    for line in ("0  up to date", "3  outdated", "4  newer", "5  empty", "1  error"):
        assert line in out


# --- downgrade -----------------------------------------------------------------


@pytest.mark.parametrize("target", [*revisions()[:-1], "base"])
def test_downgrade_after_the_prompt(database_url, target, monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "downgrade", target, "--url", database_url, answers="n\n")
    assert code == 0 and "not changed" in out
    assert revision_of(database_url) == head_revision()

    code, out, _ = run(monkeypatch, capsys, "downgrade", target, "--url", database_url, answers="yes\n")
    assert code == 0
    expected = None if target == "base" else target
    assert out.splitlines()[-1].endswith(f"from {head_revision()} to {expected or 'base (no orion_sql schema)'}.")
    assert revision_of(database_url) == expected


def test_downgrade_to_an_unknown_revision_fails_in_one_line_and_changes_nothing(database_url, monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "downgrade", "nosuch_revision", "-f", "--url", database_url)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("orion-sql: error:") and "nosuch_revision" in line
    assert revision_of(database_url) == head_revision()


# --- finding the database ---------------------------------------------------------


def _config_file(tmp_path, text: str) -> str:
    path = tmp_path / "orion_config.yaml"
    path.write_text(text)
    return str(path)


def test_the_database_is_found_as_the_storage_finds_it(tmp_path, monkeypatch):
    """--url, else the config file's storage.database.host, else ORION_DB_ADDRESS, else the default."""
    config = _config_file(
        tmp_path,
        f"experiment:\n  max_trials: 5\nstorage:\n  type: sql\n  database:\n    host: {tmp_path / 'c.sqlite'}\n",
    )
    monkeypatch.setenv("ORION_DB_ADDRESS", str(tmp_path / "env.sqlite"))
    assert configured_url(str(tmp_path / "u.sqlite"), config) == sqlite_url(str(tmp_path / "u.sqlite"))
    assert configured_url(None, config) == sqlite_url(str(tmp_path / "c.sqlite"))
    assert configured_url(None, _config_file(tmp_path, "storage:\n  type: sql\n")) == sqlite_url(
        str(tmp_path / "env.sqlite")
    )
    assert configured_url() == sqlite_url(str(tmp_path / "env.sqlite"))
    monkeypatch.delenv("ORION_DB_ADDRESS")
    assert configured_url() == sqlite_url(DEFAULT_SQLITE_PATH)


def test_upgrade_with_a_config_file(tmp_path, empty_url, monkeypatch, capsys):
    config = _config_file(tmp_path, f"storage:\n  type: sql\n  database:\n    host: '{empty_url}'\n")
    monkeypatch.setenv("ORION_DB_ADDRESS", str(tmp_path / "not_this.sqlite"))
    code, out, _ = run(monkeypatch, capsys, "upgrade", "-f", "-c", config)
    assert code == 0
    assert revision_of(empty_url) == head_revision()
    assert not (tmp_path / "not_this.sqlite").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("storage:\n  type: legacy\n", "storage.type is 'legacy'"),
        ("storage:\n  type: sql\n  uri: x.sqlite\n", "storage.uri is not read by Oríon's command line"),
        (
            "storage:\n  database:\n    type: mongodb\n",
            "storage.database.type='mongodb' is not used by the sql storage",
        ),
        ("storage: [1\n", "is not valid YAML"),
        ("storage: 3\n", "storage must be a mapping"),
    ],
    ids=["legacy", "unknown-key", "mongodb", "not-yaml", "not-a-mapping"],
)
def test_a_config_file_orion_sql_cannot_use_fails_in_one_line(tmp_path, monkeypatch, capsys, text, message):
    code, _, err = run(monkeypatch, capsys, "current", "-c", _config_file(tmp_path, text))
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("orion-sql: error:") and message in line


# --- errors: one line, no traceback, no password ----------------------------------

BAD_URLS = {
    "unreachable": UNREACHABLE.render_as_string(hide_password=False),
    "port-not-a-number": f"postgresql+psycopg://orion:{PASSWORD}@127.0.0.1:notaport/orion",
    "mongodb": f"mongodb://orion:{PASSWORD}@127.0.0.1/orion",
    "not-a-url": f"post gres://orion:{PASSWORD}@127.0.0.1/orion",
    "in-memory": "sqlite://",
}


@pytest.mark.parametrize("command", ["upgrade", "current", "downgrade"])
@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_bad_url_fails_in_one_clear_line_without_the_password(url, command, monkeypatch, capsys):
    args = [
        command,
        "--url",
        url,
        *(["base"] if command == "downgrade" else []),
        *(["-f"] if command != "current" else []),
    ]
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("orion-sql: error:")
    assert PASSWORD not in out + err


@pytest.mark.slow
def test_the_console_script_reports_an_unreachable_server_in_one_line(tmp_path):
    done = subprocess.run(
        [ORION_SQL, "current", "--url", BAD_URLS["unreachable"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"orion-sql: error: cannot use the database {UNREACHABLE.render_as_string(hide_password=True)}: "
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    ]
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.slow
def test_the_console_script_prompt_reads_stdin(empty_url, tmp_path):
    refused = subprocess.run(
        [ORION_SQL, "upgrade", "--url", empty_url], input="n\n",
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 0, refused.stderr
    assert table_names(empty_url) == set()
    accepted = subprocess.run(
        [ORION_SQL, "upgrade", "--url", empty_url], input="y\n",
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert revision_of(empty_url) == head_revision()
