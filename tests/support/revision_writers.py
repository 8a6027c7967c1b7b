"""A real Oríon experiment, and how each revision's tables store it.

Oríon runs the experiment in memory (its EphemeralDB); WRITERS[revision] inserts
it with plain SQL valid at that revision. Like a revision file, a writer is
frozen: it spells out that revision's tables and JSON conventions and never
follows later models or mapping changes. Every new revision adds its writer.
The storage at head must then read back exactly what Oríon produced
(:func:`assert_stored`), which proves the data survived every upgrade between.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import pickle
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from support.orion_runs import run_experiment

SPACE = {"x": "uniform(0, 1)", "n": "uniform(1, 5, discrete=True)", "kind": "choices(['a', 'b'])"}
ALGORITHM = {"random": {"seed": 1}}
MAX_TRIALS = 20  # the experiment's; each run stops earlier (its `trials`)


def objective(x, n, kind):
    """The trial function: an objective and a statistic, as Oríon users report them."""
    return [
        {"name": "loss", "type": "objective", "value": x * n},
        {"name": "kind_is_a", "type": "statistic", "value": float(kind == "a")},
    ]


def run(name: str, storage, trials: int):
    """Run `trials` trials of the experiment `name` (created with the SPACE if new) on
    `storage`, a configuration dict or a storage object; returns Oríon's client."""
    return run_experiment(name, storage, objective, trials, space=SPACE, algorithm=ALGORITHM, max_trials=MAX_TRIALS)


@dataclasses.dataclass
class OrionRecord:
    """What Oríon stored for one experiment: document, trials, algorithm state."""

    experiment: dict[str, Any]  # without _id
    trials: list[dict[str, Any]]  # Trial.to_dict() without _id and experiment
    algorithm_state: Any

    @classmethod
    def run(cls, name: str, trials: int) -> OrionRecord:
        """Run `trials` trials of a new experiment `name` in memory and record them."""
        client = run(name, {"type": "legacy", "database": {"type": "EphemeralDB"}}, trials)
        storage = client._experiment._storage  # the in-memory store this client wrote to
        (document,) = storage.fetch_experiments({"name": name})
        state = storage.get_algorithm_lock_info(uid=document["_id"]).state
        return cls(
            experiment={key: value for key, value in document.items() if key != "_id"},
            trials=[_portable(trial.to_dict()) for trial in client.fetch_trials()],
            algorithm_state=state,
        )

    def renamed(self, name: str) -> OrionRecord:
        return dataclasses.replace(self, experiment={**copy.deepcopy(self.experiment), "name": name})

    @property
    def name(self) -> str:
        return self.experiment["name"]


def _portable(trial: dict) -> dict:
    return {key: value for key, value in trial.items() if key not in ("_id", "experiment")}


def assert_stored(storage, record: OrionRecord) -> int:
    """The storage returns `record` exactly; returns the experiment's id."""
    (document,) = storage.fetch_experiments({"name": record.name})
    uid = document["_id"]
    refers = {**record.experiment["refers"], "root_id": uid}
    assert document == {**record.experiment, "refers": refers, "_id": uid}
    assert [_portable(trial.to_dict()) for trial in storage.fetch_trials(uid=uid)] == record.trials
    lock = storage.get_algorithm_lock_info(uid=uid)
    assert lock.configuration == record.experiment["algorithm"]
    assert pickle.dumps(lock.state) == pickle.dumps(record.algorithm_state)
    return uid


# --- 0001_initial --------------------------------------------------------------

_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_EXPERIMENTS_0001 = sa.table(
    "experiments",
    *(sa.column(name) for name in ("id", "name", "version", "parent_id", "root_id", "username", "created_at")),
    sa.column("document", _DOCUMENT),
)
_ALGO_LOCKS_0001 = sa.table(
    "algo_locks",
    *(sa.column(name) for name in ("experiment_id", "state", "locked", "owner", "heartbeat")),
    sa.column("configuration", _DOCUMENT),
)
_TRIALS_0001 = sa.table(
    "trials",
    *(sa.column(name) for name in (
        "id", "experiment_id", "hash", "status", "worker", "exp_working_dir", "parent_hash",
        "submit_time", "start_time", "end_time", "heartbeat",
    )),
)
_VALUE_COLUMNS_0001 = ("trial_id", "position", "name", "type", "numeric_value", "text_value")
_PARAMS_0001 = sa.table("params", *map(sa.column, _VALUE_COLUMNS_0001), sa.column("value", sa.JSON))
_RESULTS_0001 = sa.table("results", *map(sa.column, _VALUE_COLUMNS_0001), sa.column("value", sa.JSON))


def _tagged_0001(value: Any) -> Any:
    """0001's JSON: datetimes and non-finite floats as one-key tagged objects."""
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat(timespec="microseconds")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {key: _tagged_0001(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tagged_0001(item) for item in value]
    return value


def _value_rows_0001(trial_id: int, values: list[dict]) -> list[dict]:
    return [
        {
            "trial_id": trial_id,
            "position": position,
            "name": item["name"],
            "type": item["type"],
            "value": _tagged_0001(item["value"]),
            "numeric_value": float(item["value"]) if _is_number(item["value"]) else None,
            "text_value": item["value"] if isinstance(item["value"], str) else None,
        }
        for position, item in enumerate(values)
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_0001_initial(conn: sa.Connection, record: OrionRecord) -> int:
    """Insert the experiment, its algorithm lock and trials as revision 0001 keeps them."""
    document = copy.deepcopy(record.experiment)
    metadata = document["metadata"]
    experiment_id = conn.execute(
        sa.insert(_EXPERIMENTS_0001)
        .values(
            name=document["name"],
            version=document["version"],
            parent_id=document["refers"]["parent_id"],
            username=metadata["user"],
            created_at=metadata["datetime"],
            document=_tagged_0001(document),
        )
        .returning(_EXPERIMENTS_0001.c.id)
    ).scalar_one()
    document["refers"]["root_id"] = experiment_id  # Oríon points a root experiment at itself
    conn.execute(
        sa.update(_EXPERIMENTS_0001)
        .where(_EXPERIMENTS_0001.c.id == experiment_id)
        .values(root_id=experiment_id, document=_tagged_0001(document))
    )
    conn.execute(
        sa.insert(_ALGO_LOCKS_0001).values(
            experiment_id=experiment_id,
            configuration=_tagged_0001(document["algorithm"]),
            state=pickle.dumps(record.algorithm_state),
            locked=False,
            owner=None,
            heartbeat=datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
        )
    )
    for trial in record.trials:
        trial_id = conn.execute(
            sa.insert(_TRIALS_0001)
            .values(
                experiment_id=experiment_id,
                hash=trial["id"],
                parent_hash=trial["parent"],
                **{key: trial[key] for key in (
                    "status", "worker", "exp_working_dir", "submit_time", "start_time", "end_time", "heartbeat",
                )},
            )
            .returning(_TRIALS_0001.c.id)
        ).scalar_one()
        for table, key in ((_PARAMS_0001, "params"), (_RESULTS_0001, "results")):
            rows = _value_rows_0001(trial_id, trial[key])
            if rows:
                conn.execute(sa.insert(table), rows)
    return experiment_id


# Every revision, oldest first, with the writer of its tables.
WRITERS: dict[str, Callable[[sa.Connection, OrionRecord], int]] = {
    "0001_initial": write_0001_initial,
    "0002_analytics_views": write_0001_initial,  # views only: the tables are 0001's
    # New columns all filled by defaults and triggers: 0001's inserts are still complete.
    "0003_trial_change_tracking": write_0001_initial,
    "0004_times_written_as_text": write_0001_initial,  # a nullable column, NULL for datetimes
    "0005_algo_lock_queue": write_0001_initial,  # a new table of transient lock waiters only
    "0006_mariadb_trial_stamps": write_0001_initial,  # MariaDB's triggers; nothing elsewhere
}
