"""Oríon's arguments to the storage, checked: ids, and the settings a storage is built with.

Each check raises what Oríon lets through to the user: a ValueError naming a bad id,
a ConfigurationError (not a ValueError, which Oríon's setup_storage would swallow)
for a bad setting.
"""
from __future__ import annotations

import math
import os

from orion.storage.base import get_trial_uid_and_exp, get_uid

from orion_sql import mapping
from orion_sql.exact_json import checked_text
from orion_sql.location import ConfigurationError

LOCK_EXPIRY_ENV = "ORION_SQL_LOCK_EXPIRY"
DEFAULT_LOCK_EXPIRY_SECONDS = 60.0
CACHE_TRIALS_ENV = "ORION_SQL_CACHE_TRIALS"
DEFAULT_CACHE_TRIALS = 100_000


def cache_size(cache_trials: int | None) -> int:
    """How many trials the cache keeps: the argument, else the environment, else the default."""
    given = cache_trials if cache_trials is not None else os.environ.get(CACHE_TRIALS_ENV)
    if given is None or given == "":
        return DEFAULT_CACHE_TRIALS
    try:
        size = int(given)
    except (TypeError, ValueError):
        size = -1
    if size < 0 or isinstance(given, bool):
        source = "cache_trials" if cache_trials is not None else CACHE_TRIALS_ENV
        raise ConfigurationError(f"{source} must be a whole number of trials (0 turns the cache off), got {given!r}")
    return size


def experiment_id(experiment, uid) -> int:
    """Oríon's `experiment` or `uid` argument, refused unless it is an integer id."""
    return mapping.checked_id(get_uid(experiment, uid), "experiment id")


def trial_and_experiment_ids(trial, uid, experiment_uid) -> tuple[str, int]:
    trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
    if not isinstance(trial_uid, str):
        raise ValueError(f"trial id must be a string (the trial's hash), got {trial_uid!r}")
    return checked_text(trial_uid, "trial id"), mapping.checked_id(experiment_uid, "experiment id")


def lock_expiry(given) -> float:
    """`lock_expiry`, else ``$ORION_SQL_LOCK_EXPIRY``, else the default: positive seconds."""
    text = given or os.environ.get(LOCK_EXPIRY_ENV) or DEFAULT_LOCK_EXPIRY_SECONDS
    try:
        seconds = float(text)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise ConfigurationError(f"lock_expiry ({LOCK_EXPIRY_ENV}) must be a positive number of seconds, got {text!r}")
    return seconds
