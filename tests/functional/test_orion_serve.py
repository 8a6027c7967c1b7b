"""`orion serve` (Oríon's web API) on the sql storage: what it shows is what is stored."""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request

import numpy
import pytest
import yaml
from orion.client import create_experiment

pytestmark = [pytest.mark.functional, pytest.mark.slow]
START_TIMEOUT_SECONDS = 120
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _values(array) -> list:
    """A plotly array: a list, or (plotly 6+) base64 ``{"bdata": ..., "dtype": ...}``."""
    if isinstance(array, dict):
        return numpy.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def _get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=60) as response:
        return json.load(response)


@pytest.fixture
def served(orion_cli):
    """`orion serve -c FILE` on the test's database; yields its base URL."""
    port = _free_port()
    config = yaml.safe_load(orion_cli.config.read_text())
    config["gunicorn"] = {"bind": f"127.0.0.1:{port}", "workers": 1}
    orion_cli.config.write_text(yaml.safe_dump(config))
    server = orion_cli.start("serve", via="file")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while True:
            try:
                _get(base, "/")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"orion serve did not answer:\n{server.communicate()[1]}")
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.communicate(timeout=60)


def test_orion_serve_shows_the_stored_experiment(served, storage_config, sql_storage, database_url, request):
    client = create_experiment("served", space={"x": "uniform(-2, 2)"}, max_trials=3, storage=storage_config)
    client.workon(lambda x: [{"name": "objective", "type": "objective", "value": (x - 1) ** 2}], max_trials=3)
    dialect = request.node.callspec.params["database_url"]

    assert _get(served, "/")["database"] == BACKEND_NAMES[dialect]
    assert _get(served, "/experiments") == [{"name": "served", "version": 1}]

    stored = {trial.id for trial in sql_storage.fetch_trials(uid=client.id)}
    assert len(stored) == 3
    assert {trial["id"] for trial in _get(served, "/trials/served")} == stored

    regret = _get(served, "/plots/regret/served")
    objectives = sorted(trial.objective.value for trial in sql_storage.fetch_trials(uid=client.id))
    (points,) = [trace for trace in regret["data"] if trace["name"] == "trials"]
    assert sorted(_values(points["y"])) == pytest.approx(objectives)
