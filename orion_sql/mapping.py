"""Oríon documents <-> rows: the field table of each collection, derived columns,
trials with their params and results.

Each collection's field table says which document key is stored in which column,
with the type it must have; the columns written and the filter vocabulary
(:mod:`orion_sql.filters`) are both derived from it.
"""
from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from orion.core.worker.trial import validate_status

from orion_sql.exact_json import checked_text, to_json_safe
from orion_sql.models import MAX_INDEXED_TEXT

# Ids and versions are INTEGER columns, 32 bits on PostgreSQL: one range on every database.
INTEGER_RANGE = range(-(2**31), 2**31)
# Names are in unique indexes, whose entries PostgreSQL caps at about 2.7 kB.
MAX_NAME_BYTES = 2000


def checked_id(value: Any, name: str) -> int:
    """An id or version: an integer in the range of the INTEGER columns."""
    if not isinstance(value, int) or isinstance(value, bool) or value not in INTEGER_RANGE:
        low, high = INTEGER_RANGE.start, INTEGER_RANGE.stop - 1
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def checked_name(value: str, name: str) -> str:
    """A name: text that fits in a unique index, on every database (MariaDB's InnoDB keys
    hold 760 utf8mb4 characters), so that every database accepts the same names."""
    checked_text(value, name)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or len(value) > MAX_INDEXED_TEXT:
        raise ValueError(
            f"{name} is {len(value)} characters long; at most {MAX_INDEXED_TEXT} characters"
            f" and {MAX_NAME_BYTES} bytes can be indexed"
        )
    return value

def _get_path(document: Mapping, dotted: str) -> Any:
    value: Any = document
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _typed(document: Mapping, dotted: str, kind: type | tuple, required: bool = False):
    value = _get_path(document, dotted)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(
            f"{dotted} must be {'a' if required else 'None or a'} {names}, got {value!r}"
        )
    if isinstance(value, int):
        return checked_id(value, dotted)
    if isinstance(value, str):
        return checked_name(value, dotted) if dotted in ("name", "metadata.user") else checked_text(value, dotted)
    return value


def naive_utc(value: datetime.datetime) -> datetime.datetime:
    """A datetime as the naive UTC value the timestamp columns hold."""
    if value.tzinfo is None:
        return value
    return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def parse_time(value: Any, name: str) -> datetime.datetime | None:
    """A time as the naive UTC datetime its column holds: a datetime, or the ISO-8601
    text Oríon's own storage tests write in its place. ValueError names the field."""
    if value is None or isinstance(value, datetime.datetime):
        return value if value is None else naive_utc(value)
    if isinstance(value, str):
        try:
            return naive_utc(datetime.datetime.fromisoformat(value))
        except ValueError:
            pass
    raise ValueError(f"{name} must be None, a datetime or an ISO-8601 string, got {value!r}")


# Oríon's experiment keys stored in a column of their own (a dotted key is nested in
# the document), with the type each must have. The whole document is kept as well.
EXPERIMENT_FIELDS: dict[str, tuple[str, type]] = {
    "_id": ("id", int),
    "name": ("name", str),
    "version": ("version", int),
    "refers.parent_id": ("parent_id", int),
    "refers.root_id": ("root_id", int),
    "metadata.user": ("username", str),
    "metadata.datetime": ("created_at", datetime.datetime),
}
BENCHMARK_FIELDS: dict[str, tuple[str, type]] = {"_id": ("id", int), "name": ("name", str)}
# Keys every experiment and benchmark has; the other lifted keys may be absent or None.
REQUIRED_KEYS = frozenset({"name", "version"})


def experiment_columns(document: Mapping) -> dict[str, Any]:
    """The columns of an experiment row: its lifted keys, and the document without `_id`."""
    return _document_columns(document, EXPERIMENT_FIELDS)


def benchmark_columns(document: Mapping) -> dict[str, Any]:
    """The columns of a benchmark row, derived from its document."""
    return _document_columns(document, BENCHMARK_FIELDS)


def _document_columns(document: Mapping, fields: Mapping[str, tuple[str, type]]) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for key, (column, kind) in fields.items():
        if kind is datetime.datetime:
            columns[column] = parse_time(_get_path(document, key), key)
        elif key != "_id":
            columns[column] = _typed(document, key, kind, required=key in REQUIRED_KEYS)
    columns["document"] = _checked_document(document)
    return columns


def _checked_document(document: Mapping) -> dict[str, Any]:
    """The document to store (without `_id`), refused here, naming the key, if JSON
    cannot hold it: before any statement runs, not halfway through one."""
    stored = {key: value for key, value in document.items() if key != "_id"}
    to_json_safe(stored)
    return stored


def explicit_id(document: Mapping) -> int | None:
    """The `_id` a document brings (Oríon's test helpers give them), if any."""
    return _typed(document, "_id", int)


def apply_set(document: Mapping, changes: Mapping[str, Any], row_id: int) -> dict[str, Any]:
    """`document` with `changes` applied as MongoDB's ``$set`` applies them.

    A dotted key sets a nested field. ``_id`` may be given but not changed.
    """
    updated = copy.deepcopy(dict(document))
    for key, value in changes.items():
        if key == "_id":
            if value != row_id:
                raise ValueError(f"an experiment's _id cannot be changed ({row_id!r} to {value!r})")
            continue
        *parents, leaf = key.split(".")
        target = updated
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                target[parent] = {}
            target = target[parent]
        target[leaf] = value
    return updated


def document_of(row) -> dict[str, Any]:
    """An experiment or benchmark document as Oríon wrote it, with its `_id`."""
    return {**row.document, "_id": row.id}


# --- Trials --------------------------------------------------------------------

# Oríon's trial keys and the column each is stored in, with the type it must have.
TRIAL_FIELDS: dict[str, tuple[str, type]] = {
    "_id": ("id", int),
    "id": ("hash", str),
    "experiment": ("experiment_id", int),
    "status": ("status", str),
    "worker": ("worker", str),
    "exp_working_dir": ("exp_working_dir", str),
    "parent": ("parent_hash", str),
    "submit_time": ("submit_time", datetime.datetime),
    "start_time": ("start_time", datetime.datetime),
    "end_time": ("end_time", datetime.datetime),
    "heartbeat": ("heartbeat", datetime.datetime),
}
TRIAL_VALUE_LISTS = ("params", "results")
TRIAL_TIMES = ("submit_time", "start_time", "end_time", "heartbeat")


def trial_columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for the given trial fields (params and results excluded).

    Raises ValueError for an unknown field, a value of the wrong type, a bad status,
    or a datetime with a time zone (timestamps are naive UTC, as Oríon writes them).
    """
    columns = {}
    for key, value in fields.items():
        if key in TRIAL_VALUE_LISTS:
            continue
        if key not in TRIAL_FIELDS:
            known = ", ".join([*TRIAL_FIELDS, *TRIAL_VALUE_LISTS])
            raise ValueError(f"unknown trial field {key!r}; trial fields are: {known}")
        column, kind = TRIAL_FIELDS[key]
        if key in TRIAL_TIMES:
            if isinstance(value, datetime.datetime) and value.tzinfo is not None:
                raise ValueError(f"trial field {key!r} must be a naive UTC datetime, got {value!r}")
            columns[column] = parse_time(value, f"trial field {key!r}")
            continue
        if value is not None:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"trial field {key!r} must be None or {kind.__name__}, got {value!r}"
                )
            if isinstance(value, int):
                checked_id(value, f"trial field {key!r}")
            elif isinstance(value, str):
                checked_text(value, f"trial field {key!r}")
                if key in ("id", "parent") and len(value) > 32:
                    raise ValueError(f"trial field {key!r} is a hash of at most 32 characters, got {value!r}")
        if key in ("status", "experiment", "id") and value is None:
            raise ValueError(f"trial field {key!r} cannot be None")
        if key == "status":
            validate_status(value)
        columns[column] = value
    return columns


def written_times(fields: Mapping[str, Any]) -> dict[str, str | None]:
    """For each time among `fields`: its text if given as text, else None (text to forget)."""
    return {key: value if isinstance(value, str) else None for key, value in fields.items() if key in TRIAL_TIMES}


def kept_written_times(written: Mapping[str, str | None]) -> dict[str, str] | None:
    """The `written_times` column's value: the texts only, NULL when there are none."""
    return {key: text for key, text in written.items() if text is not None} or None


def time_as_written(value: datetime.datetime | None, text: str, key: str) -> datetime.datetime | str | None:
    """A stored time as it was written: its text while the text still denotes it (a
    later write of another time, such as the server's clock on a heartbeat, replaces it)."""
    return text if parse_time(text, key) == value else value


def whole_trial_columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`trial_columns` of fields that give every time of a trial (registering or
    pushing one), with the `written_times` they make."""
    return {**trial_columns(fields), "written_times": kept_written_times(written_times(fields))}


def value_rows(trial_id: int | None, values: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the params or results table for one trial, in order (`trial_id` None: to be filled)."""
    rows = []
    for position, item in enumerate(values):
        unknown = set(item) - {"name", "type", "value"}
        if unknown:
            raise ValueError(f"param/result {item!r} has unknown keys {sorted(unknown)}")
        value: Any = item.get("value")
        where = f"{item.get('name')!r}"
        for field in ("name", "type"):
            if not isinstance(item.get(field), (str, type(None))):
                raise ValueError(f"param/result {where}: {field} must be a string, got {item.get(field)!r}")
            checked_text(item.get(field) or "", f"param/result {where} {field}")
        if len(item.get("type") or "") > 16:
            raise ValueError(f"param/result {where}: type {item['type']!r} is longer than 16 characters")
        to_json_safe(value, f"param/result {where} value")
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        rows.append(
            {
                "trial_id": trial_id,
                "position": position,
                "name": item.get("name"),
                "type": item.get("type"),
                "value": value,
                "numeric_value": _as_float(value) if is_number else None,
                "text_value": value if isinstance(value, str) else None,
            }
        )
    return rows


def _as_float(value: int | float) -> float | None:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: the exact value stays in `value`
        return None


def trial_document(row: Mapping, params: list, results: list) -> dict[str, Any]:
    """The dictionary `Trial(**document)` takes, as `Trial.to_dict()` gave it."""
    document = {key: row[column] for key, (column, _) in TRIAL_FIELDS.items()}
    for key, text in (row["written_times"] or {}).items():
        document[key] = time_as_written(document[key], text, key)
    document["params"] = params
    document["results"] = results
    return document


def value_document(row: Mapping) -> dict[str, Any]:
    """A param or result as Oríon's `Trial.Value.to_dict()` gives it."""
    return {"name": row["name"], "type": row["type"], "value": row["value"]}
