"""`orion db upgrade -f` on the sql storage: the schema comes to head, the data stays as it was."""
from __future__ import annotations

import pytest
from orion.client import build_experiment

from orion_sql.database import Database
from orion_sql.location import resolve_url
from orion_sql.schema import downgrade, head_revision, revisions
from support.schema import revision_of

pytestmark = [pytest.mark.functional, pytest.mark.slow]


def test_orion_db_upgrade_brings_an_older_schema_to_head_and_keeps_the_data(orion_cli, storage_config, rows):
    client = build_experiment("kept", space={"x": "uniform(0, 1)"}, storage=storage_config)
    client.insert({"x": 0.5}, results=[{"name": "objective", "type": "objective", "value": 0.25}])
    client.insert({"x": 0.75})
    before = rows.snapshot()  # at head: the rows as the models describe them
    oldest = revisions()[0]
    database = Database(resolve_url(orion_cli.url))
    downgrade(database, oldest)
    database.dispose()

    upgraded = orion_cli.run("db", "upgrade", "-f", via="file")

    assert f"from {oldest} to {head_revision()}." in upgraded.stdout
    assert "the upgrade is complete" in upgraded.stdout
    assert revision_of(orion_cli.url) == head_revision()
    assert rows.diff(before, rows.snapshot()) == {}

    again = orion_cli.run("db", "upgrade", "-f", via="env")
    assert f"is already at head {head_revision()}; nothing to do." in again.stdout
    assert orion_cli.run("status", via="env").stdout.count("kept-v1") == 1
