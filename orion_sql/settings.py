"""How a worker uses its database server: retry time, connection pool, pooler mode.

Each setting comes from the storage's keyword argument, else its environment
variable, else its default; a value that is not what it should be is refused
with an error naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from orion_sql.location import ConfigurationError

POOL_MODES = ("session", "transaction")
# The connection budget: server connections one worker holds between storage calls,
# and while it holds an algorithm lock and calls the storage inside it.
CONNECTIONS_PER_WORKER = 1
CONNECTIONS_WHILE_HOLDING_LOCK = 2


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    """What a process may ask of a database server, and how long it waits for it."""

    # Seconds a transient failure (server restarting, lost connection, too many
    # clients, deadlock, busy) is retried before it surfaces: a restart or failover.
    retry_time: float = 60.0
    # Server connections kept open between calls (per process).
    pool_size: int = CONNECTIONS_PER_WORKER
    # Connections opened beyond `pool_size` when needed (the algorithm lock's holder
    # calling the storage inside it), closed when returned.
    max_overflow: int = CONNECTIONS_WHILE_HOLDING_LOCK - CONNECTIONS_PER_WORKER
    # "transaction" behind a pooler in transaction pooling (PgBouncer): lock waiters
    # retry NOWAIT attempts instead of blocking on a pooled server connection, and
    # nothing is set per session.
    pool_mode: str = "session"

    @classmethod
    def from_arguments(
        cls, arguments: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> ConnectionSettings:
        """Settings from storage arguments (None: not given), else ``ORION_SQL_<NAME>``."""
        unknown = sorted(set(arguments) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ConfigurationError(f"{unknown[0]!r} is not a setting of the sql storage")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            given = arguments.get(field.name)
            source = field.name
            if given is None:
                source = f"ORION_SQL_{field.name.upper()}"
                given = environ.get(source) or None
            if given is not None:
                values[field.name] = _parsed(field.name, source, given)
        return cls(**values)


def _parsed(name: str, source: str, value: Any) -> Any:
    if name == "pool_mode":
        if value not in POOL_MODES:
            raise ConfigurationError(f"{source} must be one of {', '.join(POOL_MODES)}, not {value!r}")
        return value
    kind = float if name == "retry_time" else int
    try:
        number = kind(value)
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{source} must be a number{' of seconds' if kind is float else ''}, not {value!r}"
        ) from None
    minimum = 1 if name == "pool_size" else 0
    if number < minimum or number != number:
        raise ConfigurationError(f"{source} must be at least {minimum}, not {value!r}")
    return number
