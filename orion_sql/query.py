"""Oríon's MongoDB-style filters -> SQL WHERE clauses, with EphemeralDB's semantics.

A filter such as ``{"status": {"$in": ["new", "suspended"]}, "metadata.user": "bob"}``
is flattened into dotted keys as Oríon's EphemeralDB does. A key names either a
column (``status``, ``metadata.user`` lifted into ``experiments.username``) or, for
experiments and benchmarks, a path into the JSON document. As in EphemeralDB, a
key matches only documents that have it (``$ne`` and ``$nin`` included), and
values of different types never compare equal. Operators: equality, ``$ne``,
``$in``, ``$nin``, ``$gt``, ``$gte``, ``$lt``, ``$lte``. Anything else, and any
key that cannot be translated, raises ValueError naming it.
"""
from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orion.core.utils.flatten import flatten
from sqlalchemy import BigInteger, and_, case, false, func, literal, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from orion_sql import exact_json
from orion_sql.dialects import Dialect

EQUAL = "$eq"
ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}
OPERATORS = (EQUAL, "$ne", "$in", "$nin", *ORDERINGS)


@dataclass(frozen=True)
class Field:
    """A filterable key stored in a column, and the Python type of its values."""

    column: ColumnElement
    kind: type
    # Where the document may lack the key although the column is NULL: its presence.
    present: Callable[[Dialect], ColumnElement[bool]] | None = None


@dataclass(frozen=True)
class Collection:
    """What a filter may name in one table: columns, and maybe a JSON document."""

    noun: str  # "trial", "experiment", ... for error messages
    fields: Mapping[str, Field]
    document: ColumnElement | None = None
    # Keys that exist in documents but cannot be filtered on, with the reason.
    refused: Mapping[str, str] = field(default_factory=dict)


def compile_filter(query: Mapping | None, collection: Collection, dialect: Dialect) -> ColumnElement[bool]:
    """The WHERE clause selecting what `query` selects in EphemeralDB."""
    if not query:
        return true()
    if not isinstance(query, Mapping):
        raise ValueError(f"a {collection.noun} filter must be a dict, got {query!r}")
    _check_text(query, f"{collection.noun} filter")
    return and_(*(_predicate(key, value, collection, dialect) for key, value in flatten(dict(query)).items()))


def _check_text(value: Any, where: str) -> None:
    """Keys must be strings, and no text may hold a NUL character, which no database
    stores (PostgreSQL cannot): refused in filters too, the same on every database."""
    if isinstance(value, str):
        exact_json.checked_text(value, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_text(item, where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            _check_text(key, f"{where} key")
            _check_text(item, f"{where} key {key[:40]!r}")


def _predicate(key: str, value: Any, collection: Collection, dialect: Dialect) -> ColumnElement[bool]:
    parts = key.split(".")
    operator = parts.pop() if parts[-1].startswith("$") else EQUAL
    if operator not in OPERATORS:
        raise ValueError(f"unsupported operator {operator!r} in {collection.noun} filter key {key!r}; "
                         f"supported: equality, {', '.join(OPERATORS[1:])}")
    if not parts or any(part.startswith("$") for part in parts):
        raise ValueError(f"cannot translate {collection.noun} filter key {key!r}: "
                         f"an operator must follow a field name")
    name = ".".join(parts)
    if operator in ("$in", "$nin") and not isinstance(value, (list, tuple)):
        raise ValueError(f"{operator} in {collection.noun} filter key {key!r} needs a list, got {value!r}")
    if name in collection.refused:
        raise ValueError(f"cannot filter {collection.noun}s on {name!r}: {collection.refused[name]}")
    if name in collection.fields:
        target = collection.fields[name]
        predicate = _ColumnTarget(target, dialect).compare(operator, value, key)
        return predicate if target.present is None else and_(target.present(dialect), predicate)
    if collection.document is not None:
        return _JsonTarget(collection.document, parts, dialect).compare(operator, value, key)
    known = ", ".join(sorted([*collection.fields, *collection.refused]))
    raise ValueError(f"unknown {collection.noun} field {name!r} in filter key {key!r}; known fields: {known}")


class _Target:
    """One key of a filter; subclasses say how to test equality and order."""

    def compare(self, operator: str, value: Any, key: str) -> ColumnElement[bool]:
        if operator == EQUAL:
            return self.equals(value)
        if operator == "$ne":
            return self.present() & not_(self.equals(value))
        if operator == "$in":
            return or_(false(), *(self.equals(item) for item in value))
        if operator == "$nin":
            return self.present() & not_(or_(false(), *(self.equals(item) for item in value)))
        if isinstance(value, float) and math.isnan(value):
            return false()  # NaN orders against nothing, as in Python
        return self.ordered(operator, value, key)

    def present(self) -> ColumnElement[bool]:
        raise NotImplementedError

    def equals(self, value: Any) -> ColumnElement[bool]:
        """Two-valued: true where the key is present and equal to `value`."""
        raise NotImplementedError

    def ordered(self, operator: str, value: Any, key: str) -> ColumnElement[bool]:
        raise NotImplementedError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _naive_datetime(value: Any, key: str) -> bool:
    if not isinstance(value, datetime.datetime):
        return False
    if value.tzinfo is not None:
        raise ValueError(f"filter key {key!r}: compare with naive UTC datetimes, got {value!r}")
    return True


class _ColumnTarget(_Target):
    """A key stored in a column: always present (NULL is a present None)."""

    def __init__(self, target: Field, dialect: Dialect):
        self.column = target.column
        self.kind = target.kind
        self.dialect = dialect

    def _accepts(self, value: Any) -> bool:
        if self.kind in (int, float):
            return _is_number(value) and not (isinstance(value, float) and math.isnan(value))
        if self.kind is datetime.datetime:
            return _naive_datetime(value, str(self.column))
        return isinstance(value, self.kind)

    def present(self):
        return true()

    def _operand(self, value: Any) -> Any:
        """`value` as bound. Integers bind as 64-bit, whatever the column's width (a 32-bit
        parameter would overflow); beyond 64 bits, which no column holds, as +-infinity
        (as the dialect binds an infinity)."""
        if isinstance(value, int) and not isinstance(value, bool):
            if -(2**63) <= value < 2**63:
                return literal(value, BigInteger)
            value = math.inf if value > 0 else -math.inf
        if isinstance(value, float) and math.isinf(value):
            return self.dialect.infinity(value)
        return value

    def equals(self, value):
        if value is None:
            return self.column.is_(None)
        if not self._accepts(value):
            return false()
        return self.column.is_not(None) & (self.column == self._operand(value))

    def ordered(self, operator, value, key):
        if value is None or not self._accepts(value):
            raise ValueError(f"filter key {key!r}: cannot order {self.kind.__name__} values "
                             f"against {value!r}")
        column = self.dialect.ordered_text(self.column) if self.kind is str else self.column
        return self.column.is_not(None) & ORDERINGS[operator](column, self._operand(value))


class _JsonTarget(_Target):
    """A key inside a JSON document, matched as EphemeralDB matches flattened keys."""

    def __init__(self, document: ColumnElement, path: list[str], dialect: Dialect):
        self.document = document
        self.path = path
        self.dialect = dialect

    def _kind_in(self, *kinds: str, path=None):
        return self.dialect.json_kind_in(self.document, path or self.path, kinds)

    def _exists(self, path):
        return self.dialect.json_exists(self.document, path)

    def _tag_text(self, tag: str):
        return self.dialect.json_text(self.document, [*self.path, tag])

    def present(self):
        """The key is a leaf of the flattened document: not a non-empty object."""
        inside_objects = [self._kind_in("object", path=self.path[:depth]) for depth in range(1, len(self.path))]
        is_leaf = or_(
            not_(self._kind_in("object")),
            self.dialect.json_text(self.document, self.path) == "{}",
            self._exists([*self.path, exact_json.DATETIME_TAG]),
            self._exists([*self.path, exact_json.FLOAT_TAG]),
        )
        return and_(*inside_objects, self._exists(self.path), is_leaf)

    def _typed(self, kind: str, expression: ColumnElement) -> ColumnElement:
        """`expression` where the value is of JSON `kind`, NULL elsewhere."""
        return case((self._kind_in(kind), expression), else_=None)

    def _number(self):
        """The value where it is a number, tagged floats included (NaN excepted); NULL elsewhere."""
        tag = self._typed("object", self._tag_text(exact_json.FLOAT_TAG))
        return case(
            (self._kind_in("number"), self.dialect.json_number(self.document, self.path)),
            (tag == "inf", self.dialect.number_literal(math.inf)),
            (tag == "-inf", self.dialect.number_literal(-math.inf)),
            (tag != "nan", self.dialect.text_number(tag)),
            else_=None,
        )

    def _string(self):
        return self._typed("string", self.dialect.json_text(self.document, self.path))

    def _datetime_text(self):
        return self._typed("object", self._tag_text(exact_json.DATETIME_TAG))

    def equals(self, value):
        if value is None or isinstance(value, (bool, list, tuple, dict)):
            match = self.dialect.json_equals(self.document, self.path, exact_json.dumps(value))
        elif isinstance(value, float) and math.isnan(value):
            return false()  # NaN equals nothing, itself included
        elif _is_number(value):
            match = self._number() == self.dialect.number_literal(value)
        elif isinstance(value, str):
            match = self._string() == value
        elif _naive_datetime(value, ".".join(self.path)):
            match = self._datetime_text() == value.isoformat(timespec="microseconds")
        else:
            raise ValueError(f"filter key {'.'.join(self.path)!r}: cannot compare with "
                             f"{type(value).__name__} {value!r}")
        return and_(self.present(), func.coalesce(match, false()))

    def ordered(self, operator, value, key):
        compare = ORDERINGS[operator]
        if _is_number(value):
            match = compare(self._number(), self.dialect.number_literal(value))
        elif isinstance(value, str):
            match = compare(self.dialect.ordered_text(self._string()), value)
        elif _naive_datetime(value, key):
            text = value.isoformat(timespec="microseconds")
            match = compare(self.dialect.ordered_text(self._datetime_text()), text)
        else:
            raise ValueError(f"filter key {key!r}: {operator} needs a number, a string "
                             f"or a datetime, got {value!r}")
        return and_(self.present(), func.coalesce(match, false()))
