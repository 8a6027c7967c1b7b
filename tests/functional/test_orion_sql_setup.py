"""The storage guide's first steps on sql, as a new user runs them in a fresh home:
`orion-sql setup`, `orion-sql test`, then `orion hunt` with no -c and no ORION_* variable.
Every command here is the console script executed, as the user runs it (the other
functional tests fork `orion` from a launcher)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

pytestmark = [pytest.mark.functional, pytest.mark.slow]

ORION_SQL = str(Path(sys.executable).with_name("orion-sql"))


def test_setup_unattended_then_test_and_hunt_use_the_database(orion_executable_cli, sql_storage):
    cli = orion_executable_cli
    setup = cli.run("setup", "--url", cli.url, "-f", via="home", program=ORION_SQL)
    written = cli.home / ".config" / "orion.core" / "orion_config.yaml"
    url = make_url(cli.url)
    host = url.database if url.get_backend_name() == "sqlite" else cli.url
    assert yaml.safe_load(written.read_text()) == {"storage": {"type": "sql", "database": {"host": host}}}
    assert f"Wrote {written}" in setup.stdout

    # `orion-sql test` finds the database as the storage does: here, in Oríon's configuration file.
    test = cli.run("test", "--json", via="home", program=ORION_SQL)
    report = json.loads(test.stdout)
    assert report["passed"] and report["checks"][0]["detail"].startswith(url.render_as_string(hide_password=True))

    cli.run("hunt", "-n", "set-up", "--exp-max-trials", "3", *cli.script("-x~uniform(-2, 2)"), via="home")
    (experiment,) = sql_storage.fetch_experiments({"name": "set-up"})
    completed = [trial for trial in sql_storage.fetch_trials(uid=experiment["_id"]) if trial.status == "completed"]
    assert len(completed) >= 3
