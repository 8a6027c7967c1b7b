"""Moving experiments between Oríon's legacy storage and an orion_sql database: what both directions share.

:mod:`orion_sql.importer` copies legacy documents (read by :mod:`orion_sql.legacy_db`)
into the database in one transaction; :mod:`orion_sql.exporter` reads the database
back as legacy documents. Both report a :class:`Summary` and move a progress bar.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from tqdm import tqdm

from orion_sql.models import TrialRow
from orion_sql.statements import trial_documents

# A tqdm-like factory: progress(total=, desc=, unit=) gives a context manager with update(n).
Progress = Callable[..., Any]
NO_PROGRESS: Progress = functools.partial(tqdm, disable=True)


class TransferError(Exception):
    """Documents that cannot be moved, said in one line."""


@dataclass
class Summary:
    """What an import or export did."""

    experiments: int = 0  # written: imported (new or replacing) or exported
    trials: int = 0
    benchmarks: int = 0
    replaced: int = 0  # (import with overwrite) experiments and benchmarks replaced in place
    skipped: int = 0  # (import) experiments and benchmarks already present with identical content
    warnings: list[str] = field(default_factory=list)


def experiment_trials(conn: Connection, experiment_id: int) -> list[dict[str, Any]]:
    """The trial documents of one experiment, as ``Trial.to_dict()`` gives them, by id."""
    return trial_documents(conn, TrialRow.experiment_id == experiment_id)
