"""Helpers the test modules share (fixtures live in conftest.py)."""

DIALECTS = ["sqlite", "postgresql", "mariadb"]
