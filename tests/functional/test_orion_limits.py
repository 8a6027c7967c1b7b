"""What Oríon 0.2.7 itself cannot do on a storage other than its legacy one: expected failures.

Each test states what a user would expect and is marked xfail(strict=True) with
the reason found in Oríon's source; if a future Oríon fixes it, the test passes
and strict xfail turns that into a failure to notice. The `db test|setup`
and `status -c` commands fail in Oríon's own code whichever database the sql
storage is on, so they run on SQLite only (each `orion` process costs seconds).
"""
from __future__ import annotations

import pytest
import yaml
from orion.client import build_experiment

pytestmark = [pytest.mark.functional, pytest.mark.slow]
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Oríon 0.2.7: `orion status -c FILE` reads the storage from the file only to list the "
    "experiments, then loads each one with experiment_builder.load(name, version) without that "
    "storage (orion/core/cli/status.py, print_evc), i.e. from the global configuration: it fails "
    "the same way on PickledDB whose host is given only by the file. ORION_DB_ADDRESS works.",
)
@sqlite_only
def test_status_from_config_file(orion_cli, storage_config):
    build_experiment("status-from-file", space={"x": "uniform(-2, 2)"}, storage=storage_config)
    status = orion_cli.run("status", via="file", check=False)
    for pickled in orion_cli.pickled_databases():  # where it looked instead (see the reason)
        pickled.unlink()
    assert status.returncode == 0, status.stderr
    assert "status-from-file-v1" in status.stdout


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Oríon 0.2.7: `orion db test` ignores storage.type and checks a legacy Database built "
    "from storage.database (orion/core/cli/checks/creation.py, database_factory.create): with "
    "`type: sql` it tests a PickledDB file at the address, never the sql storage.",
)
@sqlite_only
def test_db_test(orion_cli):
    check = orion_cli.run("db", "test", check=False)
    assert check.returncode == 0, check.stderr
    assert "DB instance SQL(" in check.stdout, check.stdout


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Oríon 0.2.7: `orion db setup` offers only legacy Database types "
    "(database_factory: ephemeraldb, mongodb, pickleddb) and writes a top-level `database:` "
    "section (orion/core/cli/db/setup.py): it cannot write `storage: type: sql`.",
)
@sqlite_only
def test_db_setup(orion_cli, tmp_path):
    result = orion_cli.wait(orion_cli.start("db", "setup", stdin=f"sql\n{orion_cli.url}\n"), check=False)
    written = tmp_path / "home" / ".config" / "orion.core" / "orion_config.yaml"
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(written.read_text())["storage"]["type"] == "sql"
