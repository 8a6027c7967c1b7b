"""Helpers the test modules share (fixtures live in conftest.py)."""

import os

DIALECTS = ["sqlite", "postgresql", "mariadb"]

# A CI run (or `make test`): hypothesis draws the same examples every time there, so that a
# red run is reproducible and no new random draw turns CI red; a developer gets fresh ones.
IN_CI = bool(os.environ.get("CI")) or os.environ.get("ORION_SQL_REQUIRE_POSTGRESQL") == "1"
