"""Helpers the test modules share (fixtures live in conftest.py)."""

DIALECTS = ["sqlite", "postgresql", "mariadb"]

# Test modules whose MariaDB runs are skipped until that stage of issue 14 lands
# (module -> the stage), each with the reason printed by `pytest -ra`.
MARIADB_PENDING = {
    name: "stage 3: concurrency, lock handover, Oríon runs"
    for name in ("test_fleet",
                 "test_orion_run", "test_orion_api", "test_orion_benchmark",
                 "test_orion_limits", "test_orion_serve")
}
