"""Differential test: orion_sql's filters and selections against Oríon's own EphemeralDB.

The same random experiment documents (and trials) go into EphemeralDB and into the
sql storage; random filters must select the same documents from both, on SQLite and
on PostgreSQL. The reference is EphemeralDB's matcher, extended with ``$lt`` and
``$nin`` in its own style (:class:`ReferenceDocument`).

Intended differences, excluded from the comparison explicitly (``_typing_differs``):

- MongoDB's typing where Python's is an accident: a boolean is not a number, so
  ``True`` does not equal ``1`` (nor ``1.0``) and a boolean does not order against
  numbers.
- A list (or empty dict) filter value compares by JSON equality, so ``[1]`` does not
  equal ``[1.0]`` nor ``[True]``, and ``[-0.0]`` does not equal ``[0.0]``.

Refusals: where orion_sql must raise ValueError (``_refused``), the test asserts the
refusal instead of comparing: ordering against None, a boolean, a list or a dict;
ordering a column (``name``, ``version``, ``_id``, ``metadata.user``, trial fields...)
against a value of another type, even where no document would have made EphemeralDB
raise; trial keys that are not trial fields. Where EphemeralDB raises TypeError
(Python cannot order a string against a number), it has no answer to compare with:
orion_sql must answer (a JSON value of another type matches nothing) or refuse.

Known limitations and bugs outside the filter compiler, excluded explicitly:

- Beyond 2**53, an integer and a float compare by the float's shortest decimal form on
  PostgreSQL (jsonb keeps no int/float distinction), an integer beyond 64 bits as
  the nearest float on SQLite, and both as doubles on MariaDB (``_imprecise_numbers``).
- Oríon's flatten loses values where a key repeats its parent's (``_without_repeated_keys``).
- SQLite's JSON paths cannot name a key holding a double quote, nor MariaDB's one
  holding a double quote or a backslash: orion_sql refuses it there
  (tests/test_query.py), so SQLite and MariaDB filters draw no such key.

Generated strings never contain NUL (PostgreSQL text cannot hold it). Integers in
documents fit in 64 bits (SQLite's integers); filter operands may not.
"""
from __future__ import annotations

import copy
import datetime
import decimal
import math
import os

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from orion.core.io.database import ephemeraldb
from orion.core.io.database.ephemeraldb import EphemeralDB, EphemeralDocument
from orion.core.utils.flatten import flatten, unflatten
from orion.core.worker.trial import Trial
from sqlalchemy import delete

from orion_sql import exact_json, mapping
from orion_sql.models import ExperimentRow
from support import IN_CI

EXAMPLES = settings(
    max_examples=int(os.environ.get("ORION_SQL_DIFFERENTIAL_EXAMPLES", "150")),
    deadline=None,
    derandomize=IN_CI,  # reproducible in CI; fresh examples on a developer's machine
    database=None if IN_CI else settings().database,
    # One storage per dialect per test; each example clears what the previous one wrote.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ReferenceDocument(EphemeralDocument):
    """EphemeralDB's document matcher, with ``$lt`` and ``$nin`` as orion_sql adds them."""

    operators = {
        **EphemeralDocument.operators,
        "$lt": (lambda a, b: a is not None and a < b),
        "$nin": (lambda a, b: a not in b),
    }


@pytest.fixture
def reference(monkeypatch):
    """Makes a fresh EphemeralDB holding documents that match with ReferenceDocument."""
    monkeypatch.setattr(ephemeraldb, "EphemeralDocument", ReferenceDocument)

    def database_with(collection: str, documents: list[dict]) -> EphemeralDB:
        database = EphemeralDB()
        for document in documents:
            database.write(collection, copy.deepcopy(document))
        return database

    return database_with


# --- values ----------------------------------------------------------------------

ORDERINGS = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = ("=", "$ne", "$in", "$nin", *ORDERINGS)

# Few distinct keys and characters, so that documents and filters collide often.
# "0" would index an array in a JSON path; the quote and the space need escaping.
KEYS = st.sampled_from(["a", "b", "0", 'q"t', "é x"])
TEXT = st.text(alphabet="aBé😀 Z", max_size=3)
INTS = st.one_of(st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**53, 2**53 + 1]))
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, -1.5, float(2**53), math.inf, -math.inf]),
    st.floats(allow_nan=False, allow_infinity=False),
)
DATETIMES = st.one_of(
    st.sampled_from([datetime.datetime(2024, 1, 31, 12), datetime.datetime(2024, 1, 31, 12, 0, 0, 1)]),
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31)),
)


def document_values(floats: st.SearchStrategy) -> st.SearchStrategy:
    """Scalars, small lists of scalars, nested dicts (empty ones too)."""
    scalars = st.one_of(st.none(), st.booleans(), INTS, floats, TEXT, DATETIMES)
    return st.recursive(
        st.one_of(scalars, st.lists(scalars, max_size=3)),
        lambda children: st.dictionaries(KEYS, children, max_size=3),
        max_leaves=5,
    )


SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, DATETIMES)
# Operands that documents never hold.
SPECIAL = st.sampled_from([math.inf, -math.inf, math.nan, 2**64, -(2**64), 10**30, -(10**400), {}])


def _section(draw, lifted: dict, values: st.SearchStrategy):
    """An optional sub-document: absent, or some of the `lifted` keys plus extra keys."""
    if draw(st.booleans()):
        return None
    section = draw(st.fixed_dictionaries({}, optional=lifted))
    section.update(draw(st.dictionaries(KEYS, values, max_size=2)))
    return section


@st.composite
def experiment_documents(draw, max_size=5, floats=FLOATS):
    """Experiment documents with unique (name, version), explicit `_id`s 1, 2, ..."""
    values = document_values(floats)
    identities = draw(st.lists(st.tuples(TEXT, st.integers(1, 3)), max_size=max_size, unique=True))
    documents = []
    for _id, (name, version) in enumerate(identities, start=1):
        document = draw(st.dictionaries(KEYS, values, max_size=3))
        document.update(_id=_id, name=name, version=version)
        for key, lifted in (
            ("metadata", {"user": st.none() | TEXT, "datetime": st.none() | DATETIMES}),
            ("refers", {"parent_id": st.none() | st.integers(0, 5), "root_id": st.none() | st.integers(0, 5)}),
        ):
            section = _section(draw, lifted, values)
            if section is not None:
                document[key] = section
        documents.append(_without_repeated_keys(document))
    return documents


def _without_repeated_keys(document: dict, parent: str | None = None) -> dict:
    """`document` without keys that repeat their parent's, as in {"a": {"a": {"x": 1}, "x": 2}}.

    Oríon's flatten (orion.core.utils.flatten) loses values there, depending on key
    order: EphemeralDB and the storage's selection code both use it, and see documents
    in different key orders (the storage's JSON sorts them).
    """
    return {
        key: _without_repeated_keys(value, key) if isinstance(value, dict) else value
        for key, value in document.items()
        if key != parent
    }


def _keys_of(documents) -> set[str]:
    """Every flattened key of the documents, every prefix of one, and a few absent keys."""
    keys = {"_id", "name", "version", "metadata.user", "metadata.datetime", "refers.parent_id",
            "refers.root_id", "absent", "a.absent", "name.absent", "metadata.user.absent"}
    for document in documents:
        for key in flatten(document):
            parts = key.split(".")
            keys.update(".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    return keys


def _operands(flats: list[dict], key: str, ordering: bool) -> st.SearchStrategy:
    """Operands for a clause on `key`: often what the (flattened) documents hold there
    (what orders, for an ordering), else any value they hold, fresh values, specials."""
    here = [flat[key] for flat in flats if key in flat and (not ordering or _orderable(None, flat[key]))]
    held = [value for flat in flats for value in flat.values()]
    fresh = [INTS, FLOATS, TEXT, DATETIMES] if ordering else [SCALARS, st.lists(SCALARS, max_size=2)]
    return st.one_of(*(st.sampled_from(values) for values in (here, here, held) if values), *fresh, SPECIAL)


def draw_filter(data, keys, documents) -> dict:
    """A filter of up to three clauses, in dotted form or, sometimes, nested form."""
    flat, flats = {}, [flatten(document) for document in documents]
    for _ in range(data.draw(st.integers(0, 3), label="clauses")):
        key = data.draw(st.sampled_from(sorted(keys)), label="key")
        operator = data.draw(st.sampled_from(OPERATORS), label="operator")
        operands = _operands(flats, key, operator in ORDERINGS)
        if operator in ("$in", "$nin"):
            flat[f"{key}.{operator}"] = data.draw(st.lists(operands, max_size=3), label="operand list")
        else:
            operand = data.draw(operands, label="operand")
            if operator != "=" and isinstance(operand, dict):
                operand = {}  # a non-empty dict would be flattened into sub-keys, not an operand
            flat[key if operator == "=" else f"{key}.{operator}"] = operand
    if data.draw(st.booleans(), label="nested form"):
        try:
            nested = unflatten(flat)
        except TypeError:  # "a" and "a.b" both given: only the dotted form can say it
            return flat
        if flatten(nested) == flat:
            return nested
    return flat


# --- what may be compared ---------------------------------------------------------


def _clauses(query):
    """(key, operator, operand) triples as EphemeralDB and orion_sql read a filter."""
    for key, operand in flatten(query or {}).items():
        *parts, last = key.split(".")
        if last.startswith("$"):
            yield ".".join(parts), last, operand
        else:
            yield key, "=", operand


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _orderable(kind, operand) -> bool:
    """Whether orion_sql orders a value of `kind` (None: any JSON value) against `operand`.

    NaN orders against anything and nothing is greater or less than it, as in Python.
    """
    if isinstance(operand, float) and math.isnan(operand):
        return True
    if kind is None:
        return _is_number(operand) or isinstance(operand, (str, datetime.datetime))
    if kind is int:
        return _is_number(operand)
    return isinstance(operand, kind)


def _refused(query, columns: dict, documents: bool) -> bool:
    """Whether orion_sql must refuse `query` with ValueError (see the module docstring).

    `documents`: whether keys that are not `columns` are JSON document keys.
    """
    for key, operator, operand in _clauses(query):
        if key not in columns and not documents:
            return True  # not a trial field
        if operator in ORDERINGS and not _orderable(columns.get(key), operand):
            return True
    return False


def _mongo_equal(a, b) -> bool:
    """Equality as orion_sql applies it: booleans are not numbers, containers are JSON."""
    if isinstance(a, (list, tuple, dict)) or isinstance(b, (list, tuple, dict)):
        containers = isinstance(a, (list, tuple, dict)) and isinstance(b, (list, tuple, dict))
        return containers and exact_json.dumps(a) == exact_json.dumps(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _typing_differs(query, documents) -> bool:
    """Whether Python's typing and MongoDB's would disagree on some clause and document."""
    for document in documents:
        flat = flatten(document)
        for key, operator, operand in _clauses(query):
            if key not in flat:
                continue
            value = flat[key]
            if operator in ORDERINGS:
                if isinstance(value, bool) and _is_number(operand):
                    return True
                continue
            for item in operand if operator in ("$in", "$nin") else [operand]:
                if (value == item) != _mongo_equal(value, item):
                    return True
    return False


def _as_postgresql_compares(value):
    """A number as jsonb holds it: a float as its shortest decimal form."""
    return decimal.Decimal(repr(value) if isinstance(value, float) else value)


def _as_sqlite_compares(value):
    """A number as SQLite binds it: an integer beyond 64 bits as the nearest float."""
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return float(value) if abs(value) < 2**1024 else (math.inf if value > 0 else -math.inf)
    return value


def _as_mariadb_compares(value):
    """A number as MariaDB compares JSON numbers here: as a double."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _imprecise_numbers(query, documents) -> bool:
    """Whether, in some clause, an integer meets a float that a database compares inexactly.

    A known limitation (beyond 2**53 only): PostgreSQL compares a float by its shortest
    decimal form (-2**63 equals float(-2**63) in Python, not there), SQLite an integer
    beyond 64 bits as the nearest float.
    """
    for document in documents:
        flat = flatten(document)
        for key, operator, operand in _clauses(query):
            if key not in flat:
                continue
            for item in operand if operator in ("$in", "$nin") else [operand]:
                pair = (flat[key], item)
                if {type(value) for value in pair} != {int, float} or not all(
                    isinstance(value, int) or math.isfinite(value) for value in pair
                ):
                    continue
                for convert in (_as_postgresql_compares, _as_sqlite_compares, _as_mariadb_compares):
                    a, b = map(convert, pair)
                    if (a == b, a < b) != (pair[0] == pair[1], pair[0] < pair[1]):
                        return True
    return False


def check_filter(query, documents, found, expected, refused) -> bool:
    """Check that orion_sql's answer to `query` is EphemeralDB's; False when not compared.

    `found` and `expected` give the documents each selects (as comparable identities),
    `refused` whether orion_sql must raise ValueError.
    """
    if refused(query):
        event("filter: refused")
        with pytest.raises(ValueError):
            found(query)
        return False
    if _typing_differs(query, documents):
        event("filter: typing differs")
        return False  # an intended difference (module docstring)
    if _imprecise_numbers(query, documents):
        event("filter: integer and float beyond 2**53")
        return False  # a known limitation (module docstring)
    try:
        reference = expected(query)
    except TypeError:
        event("filter: EphemeralDB raised TypeError")
        # EphemeralDB cannot order the values it met: there is no answer to compare with.
        # orion_sql still answers (a JSON value of another type matches nothing; NaN
        # orders against nothing) or refuses (a column of another type).
        answer = outcome(found, query)
        assert answer is ValueError or isinstance(answer, list), (query, answer)
        return False
    assert found(query) == reference, (query, documents)
    event(f"filter: compared, {'some' if reference else 'no'} match")
    return True


def outcome(function, *args):
    """What a call returns, or the type of the exception it raises."""
    try:
        return function(*args)
    except Exception as error:  # compared, never swallowed: the caller asserts on it
        return type(error)


def identities(documents) -> list:
    return [(document["name"], document["version"]) for document in documents]


# --- experiments ------------------------------------------------------------------

EXPERIMENT_COLUMNS = {key: kind for key, (_, kind) in mapping.EXPERIMENT_FIELDS.items()}


def write_experiments(storage, documents):
    """The storage holding exactly these experiments (emptied in one statement)."""
    storage.database.run(lambda conn: conn.execute(delete(ExperimentRow)), write=True)
    for document in documents:
        storage.create_experiment(copy.deepcopy(document))


@EXAMPLES
@given(data=st.data())
def test_experiment_filters_select_what_ephemeraldb_selects(storage, reference, data):
    documents = data.draw(experiment_documents(), label="documents")
    write_experiments(storage, documents)
    database = reference("experiments", documents)
    keys = _keys_of(documents)
    if storage.database.dialect.name == "sqlite":
        # SQLite's JSON paths cannot name a key with a double quote: orion_sql refuses
        # them there (test_query.py); PostgreSQL filters on them here.
        keys = {key for key in keys if '"' not in key}
    if storage.database.dialect.name == "mariadb":
        # Likewise a double quote, a backslash or a control character on MariaDB.
        keys = {key for key in keys if not any(c == '"' or c == "\\" or c < " " for c in key)}
    compared = 0
    for _ in range(3):
        compared += check_filter(
            draw_filter(data, keys, documents),
            documents,
            found=lambda query: identities(storage.fetch_experiments(query)),
            expected=lambda query: identities(database.read("experiments", query)),
            refused=lambda query: _refused(query, EXPERIMENT_COLUMNS, documents=True),
        )
    assume(compared)


def draw_selection(data, keys) -> dict:
    """A selection EphemeralDB accepts: keys to keep (maybe dropping _id), or keys to drop."""
    chosen = data.draw(st.lists(st.sampled_from(sorted(keys - {"_id"})), max_size=3, unique=True), label="selection")
    if data.draw(st.booleans(), label="keep"):
        selection = {key: 1 for key in chosen}
        if data.draw(st.booleans(), label="drop _id"):
            selection["_id"] = 0
        return selection
    return {key: 0 for key in chosen}


@EXAMPLES
@given(data=st.data())
def test_experiment_selections_return_what_ephemeraldb_returns(storage, reference, data):
    documents = data.draw(experiment_documents(max_size=3, floats=FLOATS), label="documents")
    write_experiments(storage, documents)
    keys = _keys_of(documents)
    for _ in range(3):
        selection = draw_selection(data, keys)
        # A fresh EphemeralDB each time: its selections can modify the documents it holds
        # (keeping "a.b" where "a" is an empty dict adds "b" to it). Its select fails on
        # some selections (keeping "a" and "a.b" where "a" is absent): the storage must
        # fail alike, since it selects with EphemeralDB's code.
        expected = outcome(reference("experiments", documents).read, "experiments", {}, selection)
        assert outcome(storage.fetch_experiments, {}, selection) == expected, (selection, documents)


# --- trials -----------------------------------------------------------------------

TRIAL_COLUMNS = {key: kind for key, (_, kind) in mapping.TRIAL_FIELDS.items()}
WORDS = st.sampled_from(["", "a", "B", "worker-1", "é"])
TIMES = st.none() | st.sampled_from([datetime.datetime(2024, 1, 31, 12, second) for second in (0, 1, 2)]) | DATETIMES


@st.composite
def trials(draw, experiment_id):
    """Trials of one experiment with distinct params (so distinct ids) and `_id`s 1, 2, ..."""
    made = []
    for _id in range(1, draw(st.integers(0, 5)) + 1):
        parent = draw(st.none() | st.sampled_from([trial.id for trial in made] or [None]))
        trial = Trial(
            _id=_id,
            experiment=experiment_id,
            status=draw(st.sampled_from(Trial.allowed_stati)),
            worker=draw(st.none() | WORDS),
            exp_working_dir=draw(st.none() | WORDS),
            parent=parent,
            params=[{"name": "x", "type": "integer", "value": _id}],
            results=draw(st.sampled_from([[], [{"name": "loss", "type": "objective", "value": 0.5}]])),
            submit_time=draw(TIMES),
            start_time=draw(TIMES),
            end_time=draw(TIMES),
            heartbeat=draw(TIMES),
        )
        made.append(trial)
    return made


@pytest.fixture
def experiment_id(storage):
    """The id of the experiment whose trials the trial examples replace."""
    config = {"name": "trials", "version": 1}
    storage.create_experiment(config)
    return config["_id"]


@EXAMPLES
@given(data=st.data())
def test_trial_filters_select_what_ephemeraldb_selects(storage, reference, experiment_id, data):
    registered = data.draw(trials(experiment_id), label="trials")
    storage.delete_trials(uid=experiment_id)
    for trial in registered:
        storage.register_trial(Trial(**trial.to_dict()))
    documents = [trial.to_dict() for trial in registered]
    database = reference("trials", documents)
    keys = set(TRIAL_COLUMNS) | {"absent"}
    fields = [{key: value for key, value in document.items() if key in TRIAL_COLUMNS} for document in documents]
    compared = 0
    for _ in range(3):
        compared += check_filter(
            draw_filter(data, keys, fields),
            documents,
            found=lambda query: sorted(
                trial.id_override for trial in storage.fetch_trials(uid=experiment_id, where=query)
            ),
            expected=lambda query: sorted(document["_id"] for document in database.read("trials", query)),
            refused=lambda query: _refused(query, TRIAL_COLUMNS, documents=False),
        )
    assume(compared)
