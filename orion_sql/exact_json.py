"""Exact JSON: what JSON columns hold, and how every value comes back as it went in.

JSON columns hold strict JSON. Values JSON cannot say are written as one-key
objects, in the manner of MongoDB's extended JSON, and come back as they went in:
``{"$datetime": "2024-01-31T12:00:00.000001"}`` and ``{"$float": "inf"}``. So are
the floats PostgreSQL's JSONB would not give back as floats (it keeps numbers as
decimals: 1e300 would come back as the integer 10**300, -0.0 as 0.0):
``{"$float": "1e+300"}``, ``{"$float": "-0.0"}``.
"""
from __future__ import annotations

import datetime
import json
import math
from typing import Any

DATETIME_TAG = "$datetime"
FLOAT_TAG = "$float"


def checked_text(value: str, name: str) -> str:
    """`value`, unless it holds a NUL character, which PostgreSQL cannot store (refused
    on SQLite too, so that every database accepts the same data)."""
    if "\x00" in value:
        raise ValueError(f"{name}: {value[:40]!r} contains a NUL character, which cannot be stored")
    return value


def to_json_safe(value: Any, path: str = "") -> Any:
    """Return `value` as plain JSON data, tagging what JSON cannot represent.

    Raises ValueError, naming the path, for what cannot be stored exactly.
    """
    if isinstance(value, str):
        return checked_text(value, path or "value")
    if value is None or isinstance(value, (bool, int)):
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
            checked_text(key, f"{path or 'document'}: key")
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


def dumps_unescaped(value: Any) -> str:
    """:func:`dumps`, with characters beyond ASCII written as themselves (MariaDB's JSON
    paths match a key's text as stored, without reading ``\\u`` escapes)."""
    return json.dumps(
        to_json_safe(value), allow_nan=False, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    )


def loads(text: str) -> Any:
    """Deserialize a JSON column (the engine's json_deserializer)."""
    return from_json_safe(json.loads(text))


def loads_value(text: str) -> Any:
    """:func:`loads` for a param or result value, ten times faster for the usual ones:
    a JSON number is Python's int or float syntax, and a JSON string without a
    backslash is its characters between the quotes."""
    first = text[0]
    if first in _NUMBER_STARTS:
        return float(text) if "." in text or "e" in text or "E" in text else int(text)
    if first == '"' and "\\" not in text:
        return text[1:-1]
    return loads(text)


_NUMBER_STARTS = frozenset("-0123456789")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
