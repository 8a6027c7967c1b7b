"""Moving experiments between Oríon's legacy storage and an orion_sql database: what both directions share.

:mod:`orion_sql.importer` copies legacy documents (read by :mod:`orion_sql.legacy_db`)
into the database in one transaction; :mod:`orion_sql.exporter` reads the database
back as legacy documents. Both report a :class:`Summary` and move a progress bar.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import Connection, select
from tqdm import tqdm

from orion_sql import codec
from orion_sql.models import ParamRow, ResultRow, TrialRow

VALUE_MODELS = {"params": ParamRow, "results": ResultRow}

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
    statement = select(TrialRow.__table__).where(TrialRow.experiment_id == experiment_id).order_by(TrialRow.id)
    rows = conn.execute(statement).mappings().all()
    values = {row["id"]: {key: [] for key in VALUE_MODELS} for row in rows}
    for key, model in VALUE_MODELS.items():
        statement = (
            select(model.__table__)
            .join(TrialRow, model.trial_id == TrialRow.id)
            .where(TrialRow.experiment_id == experiment_id)
            .order_by(model.trial_id, model.position)
        )
        for value in conn.execute(statement).mappings():
            values[value["trial_id"]][key].append(codec.value_document(value))
    return [codec.trial_document(row, **values[row["id"]]) for row in rows]
