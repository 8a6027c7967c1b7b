# The two commands of the README:
#   make demo   an Oríon experiment stored in the embedded SQLite default, then what it stored
#   make test   everything set up, the whole test suite, PostgreSQL included
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip 26.3 refuses Oríon 0.2.7's sdist (it declares a git URL for its `track` extra).
PIP_PIN := pip>=23,<26.3

.PHONY: demo test postgresql pgbouncer benchmarks clean

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

test: $(BIN)/activate postgresql pgbouncer
	ORION_SQL_REQUIRE_POSTGRESQL=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

benchmarks: $(BIN)/activate postgresql
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/reserve_throughput.py
	$(BIN)/python benchmarks/workon_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
