"""`orion-sql test` on real databases: it passes where workers would run, fails with the
right check named where they would not, and leaves every database exactly as it was."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orion_sql import SQL
from orion_sql.checks import sqlite as sqlite_checks
from orion_sql.cli import main
from orion_sql.database import Database
from orion_sql.schema import downgrade, revisions
from support.contents import database_contents
from support.documents import make_trial, new_experiment
from support.schema import table_names
from support.servers import PgBouncer, free_port

ORION_SQL = str(Path(sys.executable).with_name("orion-sql"))
PASSWORD = "s3cret-Pa55"
COMMON = ["url", "connection", "schema", "read-write", "clock"]
# The checks each dialect adds to the common ones (one without checks of its own gets COMMON).
CHECKS = {"sqlite": COMMON + ["file"], "postgresql": COMMON + ["pooler", "connections"]}
# How each server says why it cannot be used (SQLite, a file, has its own tests below).
REFUSED = {"postgresql": "Connection refused", "mariadb": "Connection refused"}
MISSING_DATABASE = {"postgresql": "does not exist", "mariadb": "Unknown database"}
# A trigger that refuses every change of a trial's status: reservations fail.
REFUSING_TRIGGER = {
    "sqlite": ["CREATE TRIGGER refuse BEFORE UPDATE OF status ON trials "
               "BEGIN SELECT RAISE(ABORT, 'reservations refused by the test'); END"],
    "postgresql": ["CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'reservations refused by the test'; END $$",
                   "CREATE TRIGGER refuse BEFORE UPDATE OF status ON trials FOR EACH ROW EXECUTE FUNCTION refuse()"],
    "mariadb": ["CREATE TRIGGER refuse BEFORE UPDATE ON trials FOR EACH ROW IF NEW.status <> OLD.status THEN "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'reservations refused by the test'; END IF"],
}


def checks_of(dialect: str) -> list[str]:
    return CHECKS.get(dialect, COMMON)


def run_test(monkeypatch, capsys, url: str) -> tuple[int, dict[str, dict]]:
    """`orion-sql test --json --url URL` in this process: exit code, results by check."""
    code = main(["test", "--json", "--url", url])
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is (code == 0)
    return code, {result["check"]: result for result in report["checks"]}


def dialect_of(url: str) -> str:
    return make_url(url).get_backend_name()


def populate(url: str) -> None:
    """An experiment with a pending and a completed trial: what the check must not touch."""
    storage = SQL(uri=url)
    experiment = new_experiment(storage, name="users-own")
    storage.register_trial(make_trial(experiment["_id"], 1.0))
    storage.register_trial(make_trial(experiment["_id"], 2.0, status="completed"))
    storage.close()


def assert_failed(checks: dict, name: str, dialect: str) -> dict:
    """`name` failed with advice; the checks before it passed; those that need it were skipped."""
    assert list(checks) == checks_of(dialect)
    failed = checks[name]
    assert failed["outcome"] == "fail" and failed["advice"], failed
    assert [result["check"] for result in checks.values() if result["outcome"] == "fail"] == [name]
    return failed


def test_passes_on_a_database_in_use_and_leaves_it_as_it_was(database_url, monkeypatch, capsys):
    populate(database_url)
    before = database_contents(database_url)
    code, checks = run_test(monkeypatch, capsys, database_url)
    assert code == 0
    assert list(checks) == checks_of(dialect_of(database_url))
    assert {result["outcome"] for result in checks.values()} == {"pass"}, checks
    assert "rolled back" in checks["read-write"]["detail"]
    if "pooler" in checks:
        assert checks["pooler"]["detail"].startswith("none")
    assert database_contents(database_url) == before


def test_passes_on_an_empty_database_and_leaves_it_empty(empty_url, monkeypatch, capsys, tmp_path):
    files_before = sorted(tmp_path.rglob("*"))
    code, checks = run_test(monkeypatch, capsys, empty_url)
    assert code == 0, checks
    assert "no orion_sql schema yet" in checks["schema"]["detail"]
    assert checks["read-write"]["outcome"] == "pass"
    if dialect_of(empty_url) == "sqlite":  # a scratch file stood in for it, and is gone
        assert "does not exist yet" in checks["connection"]["detail"]
        assert sorted(tmp_path.rglob("*")) == files_before
    else:
        assert table_names(empty_url) == set()
        assert not any(database_contents(empty_url).values())  # no row, view or sequence either


def test_an_unreachable_database_fails_the_connection_check(database_url, monkeypatch, capsys, tmp_path):
    dialect = dialect_of(database_url)
    if dialect == "sqlite":  # the file's folder cannot be created: a file is in the way
        (tmp_path / "a-file").write_text("")
        url = f"sqlite:///{tmp_path}/a-file/orion.sqlite"
    else:  # nothing listens on the port
        url = make_url(database_url).set(port=free_port(), password=PASSWORD).render_as_string(hide_password=False)
    code, checks = run_test(monkeypatch, capsys, url)
    assert code == 1
    failed = assert_failed(checks, "connection", dialect)
    assert ("is not a folder" if dialect == "sqlite" else REFUSED[dialect]) in failed["detail"]
    assert {checks[name]["outcome"] for name in checks_of(dialect)[2:]} == {"skip"}
    assert PASSWORD not in json.dumps(checks)


def test_a_wrong_database_name_fails_the_connection_check(database_url, monkeypatch, capsys, tmp_path):
    dialect = dialect_of(database_url)
    if dialect == "sqlite":  # a file, but not a SQLite database: Oríon's PickledDB, say
        wrong = str(tmp_path / "orion_db.pkl")
        Path(wrong).write_bytes(pickle.dumps({"experiments": []}))
    else:
        url = make_url(database_url)
        wrong = url.set(database=url.database + "_typo").render_as_string(hide_password=False)
    before = Path(wrong).read_bytes() if dialect == "sqlite" else None
    code, checks = run_test(monkeypatch, capsys, wrong)
    assert code == 1
    failed = assert_failed(checks, "connection", dialect)
    assert ("not a database" if dialect == "sqlite" else MISSING_DATABASE[dialect]) in failed["detail"]
    if dialect == "sqlite":
        assert Path(wrong).read_bytes() == before


def test_an_outdated_schema_fails_the_schema_check_naming_the_upgrade(database_url, monkeypatch, capsys):
    database = Database(make_url(database_url))
    downgrade(database, revisions()[0])
    database.dispose()
    populate_outdated = database_contents(database_url)
    code, checks = run_test(monkeypatch, capsys, database_url)
    assert code == 1
    failed = assert_failed(checks, "schema", dialect_of(database_url))
    assert revisions()[0] in failed["detail"] and "orion-sql upgrade" in failed["advice"]
    assert checks["read-write"]["outcome"] == "skip"
    assert checks["clock"]["outcome"] == "pass"
    assert database_contents(database_url) == populate_outdated


@pytest.fixture
def select_only_url(postgresql_url_fresh):
    """The test's database, as a role that may only SELECT (created here, dropped after)."""
    url = make_url(postgresql_url_fresh)
    role = f"orion_sql_reader_{os.getpid()}"
    admin = {"host": url.host, "port": url.port, "user": url.username, "password": url.password, "dbname": url.database}
    with psycopg.connect(autocommit=True, **admin) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    yield url.set(username=role, password=None).render_as_string(hide_password=False)
    with psycopg.connect(autocommit=True, **admin) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def test_a_role_that_may_only_read_fails_the_read_write_check(
    select_only_url, postgresql_url_fresh, monkeypatch, capsys
):
    populate(postgresql_url_fresh)
    before = database_contents(postgresql_url_fresh)
    code, checks = run_test(monkeypatch, capsys, select_only_url)
    assert code == 1
    failed = assert_failed(checks, "read-write", "postgresql")
    assert failed["detail"].startswith("creating an experiment: permission denied")
    assert "GRANT SELECT, INSERT, UPDATE, DELETE" in failed["advice"]
    assert database_contents(postgresql_url_fresh) == before


def test_a_failure_midway_leaves_nothing_behind(database_url, monkeypatch, capsys):
    """A trigger refuses reservations: the experiment and trial created before are rolled back."""
    populate(database_url)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        for statement in REFUSING_TRIGGER[dialect_of(database_url)]:
            conn.execute(sa.text(statement))
    engine.dispose()
    before = database_contents(database_url)
    code, checks = run_test(monkeypatch, capsys, database_url)
    assert code == 1
    failed = assert_failed(checks, "read-write", dialect_of(database_url))
    assert failed["detail"].startswith("reserving the trial:") and "refused by the test" in failed["detail"]
    assert database_contents(database_url) == before


def test_the_console_script_prints_a_line_per_check_and_exits_1_on_failure(tmp_path):
    url = f"postgresql+psycopg://orion:{PASSWORD}@127.0.0.1:{free_port()}/orion"
    done = subprocess.run([ORION_SQL, "test", "--url", url], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pass  url:") and lines[1].startswith("FAIL  connection:")
    assert lines[2].lstrip().startswith("what to do: check that PostgreSQL runs at 127.0.0.1:")
    assert lines[-1] == "1 of 7 checks failed: connection."
    assert PASSWORD not in done.stdout + done.stderr and done.stderr == ""


def test_a_network_file_system_is_told_apart_from_a_local_one(tmp_path, monkeypatch):
    """Linux's mount table, as the kernel writes it; the longest mount point holding the path wins."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:35 / /home/shared\\040data rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2\n"
        "41 22 0:36 / /mnt/team rw,relatime shared:21 - cifs //server/team rw\n"
    )
    monkeypatch.setattr(sqlite_checks, "MOUNT_TABLE", str(table))
    assert sqlite_checks.file_system_of("/home/shared data/orion/orion_db.sqlite") == "nfs4"
    assert sqlite_checks.file_system_of("/mnt/team/orion_db.sqlite") == "cifs"
    assert sqlite_checks.file_system_of("/home/shared/orion_db.sqlite") == "ext4"
    assert {"nfs4", "cifs"} <= sqlite_checks.NETWORK_FILE_SYSTEMS


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_a_pgbouncer_in_front_is_reported_with_its_pool_mode(postgresql_url_fresh, pool_mode, monkeypatch, capsys):
    url = make_url(postgresql_url_fresh)
    with PgBouncer(url.port, pool_mode=pool_mode, server_host=url.host, user=url.username) as bouncer:
        code, checks = run_test(monkeypatch, capsys, url.set(port=bouncer.port).render_as_string(hide_password=False))
    assert code == 0, checks
    assert f"in {pool_mode} pooling mode" in checks["pooler"]["detail"]
    assert ("its pool size" in checks["connections"]["detail"]) is (pool_mode == "transaction")


def test_a_sqlite_file_on_a_network_file_system_is_a_warning_not_a_failure(
    sqlite_url_fresh, tmp_path, monkeypatch, capsys
):
    """The mount table says the test's folder is NFS: `file` warns, and the exit status stays 0."""
    table = tmp_path / "mountinfo"
    table.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 22 0:35 / {tmp_path} rw - nfs4 server:/export rw\n")
    monkeypatch.setattr(sqlite_checks, "MOUNT_TABLE", str(table))
    code, checks = run_test(monkeypatch, capsys, sqlite_url_fresh)
    assert code == 0
    assert checks["file"]["outcome"] == "warn" and "file system nfs4" in checks["file"]["detail"]
    assert "PostgreSQL" in checks["file"]["advice"]
