"""Oríon documents <-> rows: exact JSON, derived columns, trials with params and results.

JSON columns hold strict JSON. Values JSON cannot say are written as one-key
objects, in the manner of MongoDB's extended JSON, and come back as they went in:
``{"$datetime": "2024-01-31T12:00:00.000001"}`` and ``{"$float": "inf"}``. So are
the floats PostgreSQL's JSONB would not give back as floats (it keeps numbers as
decimals: 1e300 would come back as the integer 10**300, -0.0 as 0.0):
``{"$float": "1e+300"}``, ``{"$float": "-0.0"}``.
"""
from __future__ import annotations

import copy
import datetime
import json
import math
from typing import Any, Iterable, Mapping

from orion.core.worker.trial import validate_status

DATETIME_TAG = "$datetime"
FLOAT_TAG = "$float"


# --- JSON ----------------------------------------------------------------------


def to_json_safe(value: Any, path: str = "") -> Any:
    """Return `value` as plain JSON data, tagging what JSON cannot represent.

    Raises ValueError, naming the path, for what cannot be stored exactly.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        text = repr(value)  # 'nan', 'inf', '-inf', '-0.0', '1e+300', or a plain decimal
        if math.isfinite(value) and "e+" not in text and text != "-0.0":
            return value
        return {FLOAT_TAG: text}
    if isinstance(value, datetime.datetime):
        return {DATETIME_TAG: value.isoformat(timespec="microseconds")}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"{path or 'document'}: key {key!r} is not a string")
        return {key: to_json_safe(item, _join(path, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, as Oríon converts them
        return to_json_safe(value.tolist(), path)
    raise ValueError(
        f"{path or 'value'}: {type(value).__name__} {value!r} cannot be stored as JSON"
    )


def from_json_safe(value: Any) -> Any:
    """Inverse of :func:`to_json_safe`."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, tagged),) = value.items()
            if key == DATETIME_TAG and isinstance(tagged, str):
                return datetime.datetime.fromisoformat(tagged)
            if key == FLOAT_TAG and isinstance(tagged, str) and _is_float_text(tagged):
                return float(tagged)
        return {key: from_json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_safe(item) for item in value]
    return value


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def dumps(value: Any) -> str:
    """Serialize for a JSON column (the engine's json_serializer)."""
    # Sorted keys make equal documents equal text, which SQLite compares.
    return json.dumps(to_json_safe(value), allow_nan=False, separators=(",", ":"), sort_keys=True)


def loads(text: str) -> Any:
    """Deserialize a JSON column (the engine's json_deserializer)."""
    return from_json_safe(json.loads(text))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- Derived columns -----------------------------------------------------------


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
    return value


def naive_utc(value: datetime.datetime) -> datetime.datetime:
    """A datetime as the naive UTC value the timestamp columns hold."""
    if value.tzinfo is None:
        return value
    return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def experiment_columns(document: Mapping) -> dict[str, Any]:
    """The indexed columns of an experiment row, derived from its document."""
    created_at = _typed(document, "metadata.datetime", datetime.datetime)
    return {
        "name": _typed(document, "name", str, required=True),
        "version": _typed(document, "version", int, required=True),
        "parent_id": _typed(document, "refers.parent_id", int),
        "root_id": _typed(document, "refers.root_id", int),
        "username": _typed(document, "metadata.user", str),
        "created_at": naive_utc(created_at) if created_at else None,
        "document": {key: value for key, value in document.items() if key != "_id"},
    }


def benchmark_columns(document: Mapping) -> dict[str, Any]:
    """The columns of a benchmark row, derived from its document."""
    return {
        "name": _typed(document, "name", str, required=True),
        "document": {key: value for key, value in document.items() if key != "_id"},
    }


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
        if value is not None:
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"trial field {key!r} must be None or {kind.__name__}, got {value!r}"
                )
            if kind is datetime.datetime and value.tzinfo is not None:
                raise ValueError(f"trial field {key!r} must be a naive UTC datetime, got {value!r}")
        if key in ("status", "experiment") and value is None:
            raise ValueError(f"trial field {key!r} cannot be None")
        if key == "status":
            validate_status(value)
        columns[column] = value
    return columns


def value_rows(trial_id: int, values: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the params or results table for one trial, in order."""
    rows = []
    for position, item in enumerate(values):
        unknown = set(item) - {"name", "type", "value"}
        if unknown:
            raise ValueError(f"param/result {item!r} has unknown keys {sorted(unknown)}")
        value = item.get("value")
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
    document["params"] = params
    document["results"] = results
    return document


def value_document(row: Mapping) -> dict[str, Any]:
    """A param or result as Oríon's `Trial.Value.to_dict()` gives it."""
    return {"name": row["name"], "type": row["type"], "value": row["value"]}
