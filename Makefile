# The two commands of the README:
#   make demo   an Oríon experiment stored in the embedded SQLite default, then what it stored
#   make test   everything set up, lint and types, the whole test suite, PostgreSQL and MariaDB included (what CI runs)
# and the developer's loop:
#   make test-fast   every test but the slow ones (real Oríon runs, processes, large tables)
#   make lint        ruff (style, import order) and mypy (types), configured in pyproject.toml
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip 26.3 refuses Oríon 0.2.7's sdist (it declares a git URL for its `track` extra).
PIP_PIN := pip>=23,<26.3

.PHONY: demo test test-fast lint postgresql pgbouncer mariadb benchmarks clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(PIP_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/python examples/demo.py

postgresql:
	.ci/ensure-postgresql

pgbouncer:
	.ci/ensure-pgbouncer

mariadb:
	.ci/ensure-mariadb

lint: $(BIN)/activate
	$(BIN)/ruff check orion_sql migrations tests benchmarks examples
	$(BIN)/mypy

test: lint postgresql pgbouncer mariadb
	ORION_SQL_REQUIRE_POSTGRESQL=1 ORION_SQL_REQUIRE_MARIADB=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(BIN)/activate postgresql pgbouncer mariadb
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

benchmarks: $(BIN)/activate postgresql pgbouncer mariadb
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/reserve_throughput.py
	$(BIN)/python benchmarks/workon_throughput.py
	$(BIN)/python benchmarks/experiment_size.py
	$(BIN)/python benchmarks/fleet.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
