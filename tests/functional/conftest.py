"""Fixtures for the functional suite: Oríon's own CLI and Python API on `storage: type: sql`.

Every `orion` subprocess runs with HOME and the XDG folders in the test's tmp dir
and no inherited ORION_* variable, so the user's global Oríon config and data
(PickledDB's orion_db.pkl) are neither read nor written. The database is given
either by a config file (`storage.database.host`) or by the environment
(ORION_STORAGE_TYPE=sql, ORION_DB_ADDRESS), the two ways Oríon 0.2.7 offers.

The `orion` commands are forked by a launcher that has imported Oríon's heavy
dependencies once (tests/support/launcher.py: about 3 s of CPU less per command,
Oríon itself still imported by each command in its own environment);
`orion_executable_cli` runs the `orion` executable itself, as a user does.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml
from orion.core.worker.trial_pacemaker import TrialPacemaker
from sqlalchemy import select
from sqlalchemy.engine import make_url

from orion_sql import SQL
from orion_sql.database import Database
from orion_sql.location import resolve_url
from orion_sql.models import Base
from support.launcher import Launcher

ORION = str(Path(sys.executable).with_name("orion"))
BLACKBOX = Path(__file__).with_name("blackbox.py")
COMMAND_TIMEOUT_SECONDS = 180
TABLES = Base.metadata.sorted_tables


def isolated_environment(home: Path) -> dict[str, str]:
    """This process's environment less any ORION_* variable, with HOME and the XDG folders in `home`."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("ORION_")}
    return {
        **inherited,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        # Oríon warns at import about optional extras (profet) nobody here uses.
        "PYTHONWARNINGS": "ignore",
    }


class OrionCLI:
    """Oríon's command line on one database, isolated from the user's Oríon setup.

    `via="file"` passes the database in a config file (``-c``), `via="env"` in
    ORION_STORAGE_TYPE/ORION_DB_ADDRESS, `via="home"` in neither: the isolated
    home's own Oríon configuration file (what `orion-sql setup` writes) has it.
    With a `launcher`, the `orion` commands are forked by it; without, executed.
    """

    def __init__(self, tmp_path: Path, database_url: str, launcher: Launcher | None = None):
        self.launcher = launcher
        self.url = database_url
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        # Outside any git repository, so that Oríon records no VCS state that
        # edits elsewhere could turn into a code-change branching event.
        self.blackbox = str(shutil.copy(BLACKBOX, tmp_path / "blackbox.py"))
        self.config = tmp_path / "orion_config.yaml"
        self.config.write_text(yaml.safe_dump({"storage": {"type": "sql", "database": {"host": database_url}}}))
        self._answers: dict[subprocess.Popen[str], str | None] = {}
        self.home = tmp_path / "home"
        isolated = isolated_environment(self.home)
        # The environment gives a SQLite database as a plain path, the config file as a URL:
        # both forms of storage.database.host get used.
        address = str(make_url(database_url).database) if database_url.startswith("sqlite") else database_url
        self._environments: dict[str, dict[str, str]] = {
            "file": isolated,
            "env": {**isolated, "ORION_STORAGE_TYPE": "sql", "ORION_DB_ADDRESS": address},
            "home": isolated,
        }

    def pickled_databases(self) -> list[Path]:
        """PickledDB files in the isolated home: where a command that ignored the sql storage wrote."""
        return sorted(self.home.rglob("orion_db.pkl"))

    def script(self, *priors: str, blackbox: str | None = None) -> list[str]:
        """The user command `orion hunt` runs: the black box with these priors."""
        return [sys.executable, blackbox or self.blackbox, *priors]

    def start(
        self, *args: str, via: str = "env", stdin: str | None = None, program: str = ORION
    ) -> subprocess.Popen[str]:
        """Start `orion *args` (or another `program`); with via="file", ``-c <config>`` follows the (sub)command."""
        command = list(args)
        if via == "file":
            position = 2 if command[0] == "db" else 1
            command[position:position] = ["-c", str(self.config)]
        popen = self.launcher.popen if self.launcher is not None and program == ORION else subprocess.Popen
        process = popen(
            [program, *command],
            cwd=self.cwd,
            env=self._environments[via],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._answers[process] = stdin  # what `wait` types in
        return process

    def run(
        self, *args: str, via: str = "env", check: bool = True, program: str = ORION
    ) -> subprocess.CompletedProcess:
        """Run `orion *args` (or `program`) to its end; fails the test on a non-zero exit when `check`."""
        return self.wait(self.start(*args, via=via, program=program), check=check)

    def run_together(self, *commands: Sequence[str], via: str = "env") -> list[subprocess.CompletedProcess]:
        """Run several `orion` commands at once (each a sequence of arguments); all must succeed."""
        processes = [self.start(*command, via=via) for command in commands]
        return [self.wait(process) for process in processes]

    def wait(self, process: subprocess.Popen[str], check: bool = True) -> subprocess.CompletedProcess:
        try:
            stdout, stderr = process.communicate(self._answers.pop(process), timeout=COMMAND_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"{process.args!r} did not finish in {COMMAND_TIMEOUT_SECONDS}s:\n{stdout}\n{stderr}")
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            pytest.fail(f"{result.args} exited with {result.returncode}:\n{stdout}\n{stderr}")
        return result


@pytest.fixture(scope="session")
def orion_launcher(tmp_path_factory) -> Iterator[Launcher]:
    """The fork server of every `orion` command of the session (in a home of its own)."""
    with Launcher(isolated_environment(tmp_path_factory.mktemp("launcher_home"))) as launcher:
        yield launcher


def _checked_cli(cli: OrionCLI) -> Iterator[OrionCLI]:
    yield cli
    assert cli.pickled_databases() == [], "an orion command fell back to PickledDB"


@pytest.fixture
def orion_cli(tmp_path, database_url, orion_launcher) -> Iterator[OrionCLI]:
    """Oríon's CLI on a fresh database (once per dialect), its commands forked by the
    launcher; checks nothing reached PickledDB."""
    yield from _checked_cli(OrionCLI(tmp_path, database_url, orion_launcher))


@pytest.fixture
def orion_executable_cli(tmp_path, database_url) -> Iterator[OrionCLI]:
    """The same, each `orion` command the console script executed, as a user runs it."""
    yield from _checked_cli(OrionCLI(tmp_path, database_url))


@pytest.fixture
def sql_storage(database_url):
    """The sql storage on the test's database, to compare with what the CLI shows."""
    storage = SQL(uri=database_url)
    yield storage
    storage.close()


@pytest.fixture
def storage_config(database_url) -> dict:
    """What the Python API takes as `storage=` for the test's database."""
    return {"type": "sql", "uri": database_url}


@pytest.fixture(autouse=True)
def _no_orion_environment(monkeypatch):
    """In-process Oríon reads ORION_* variables at each access: none may leak in from the shell."""
    for key in list(os.environ):
        if key.startswith("ORION_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _stop_trial_pacemakers():
    """A test that fails while holding a reserved trial leaves Oríon's (non-daemon) heartbeat
    thread running, which would keep pytest from exiting: stop any such thread."""
    yield
    for thread in threading.enumerate():
        if isinstance(thread, TrialPacemaker):
            thread.stop()


CHANGE_TRACKING = ("incarnation", "trial_changes", "trial_deletions", "change_stamp")


class Rows:
    """Every row of every orion_sql table, read with SQLAlchemy, to see exactly what a command changed."""

    def __init__(self, database_url: str):
        self.database = Database(resolve_url(database_url))

    def snapshot(self) -> dict[str, dict[tuple, dict]]:
        """Every row, less the trial cache's bookkeeping (trigger-kept, see revision 0003)."""
        with self.database.transaction() as conn:
            return {
                table.name: {
                    tuple(row[column.name] for column in table.primary_key.columns): {
                        column: value for column, value in row.items() if column not in CHANGE_TRACKING
                    }
                    for row in conn.execute(select(table)).mappings()
                }
                for table in TABLES
            }

    @staticmethod
    def diff(before: dict, after: dict) -> dict[str, dict]:
        """Per table: the keys of rows added and removed, and {key: {column: (old, new)}} changed."""
        changes = {}
        for table in before:
            old, new = before[table], after[table]
            change = {
                "added": set(new) - set(old),
                "removed": set(old) - set(new),
                "changed": {
                    key: {
                        column: (old[key][column], new[key][column])
                        for column in old[key]
                        if old[key][column] != new[key][column]
                    }
                    for key in set(old) & set(new)
                    if old[key] != new[key]
                },
            }
            change = {kind: keys for kind, keys in change.items() if keys}
            if change:
                changes[table] = change
        return changes


@pytest.fixture
def rows(database_url):
    watcher = Rows(database_url)
    yield watcher
    watcher.database.dispose()
