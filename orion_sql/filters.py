"""What a filter may name in each collection: derived from the collections' field tables.

A key of a field table (:mod:`orion_sql.mapping`) filters on its column; an
experiment's optional lifted key (``metadata.user``) matches only documents that
have it, as in EphemeralDB. Other experiment and benchmark keys are paths into the
JSON document (see :mod:`orion_sql.query`).
"""
from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Table

from orion_sql import mapping
from orion_sql.models import benchmarks, experiments, trials
from orion_sql.query import Collection, Field


def _fields(table: Table, fields: Mapping[str, tuple[str, type]], document=None) -> dict[str, Field]:
    """A Field per key; where the key is optional in a `document`, with its presence test."""
    return {
        key: Field(
            table.c[column],
            kind,
            present=None
            if document is None or key == "_id" or key in mapping.REQUIRED_KEYS
            else _presence(document, key),
        )
        for key, (column, kind) in fields.items()
    }


def _presence(document, key: str):
    path = key.split(".")
    return lambda dialect: dialect.json_exists(document, path)


TRIAL_FILTERS = Collection(
    "trial",
    fields=_fields(trials, mapping.TRIAL_FIELDS),
    refused={key: "params and results live in their own tables" for key in mapping.TRIAL_VALUE_LISTS},
)
EXPERIMENT_FILTERS = Collection(
    "experiment",
    fields=_fields(experiments, mapping.EXPERIMENT_FIELDS, experiments.c.document),
    document=experiments.c.document,
)
BENCHMARK_FILTERS = Collection(
    "benchmark",
    fields=_fields(benchmarks, mapping.BENCHMARK_FIELDS),
    document=benchmarks.c.document,
)
