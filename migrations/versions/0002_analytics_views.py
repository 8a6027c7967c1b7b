"""Analytics views: read-only SQL views over the normalized tables, for psql, sqlite3 and pandas.

Plain views only (no materialized view, index, trigger or table change): they cost
nothing until someone queries them, and the storage's own queries never touch them.
Names and columns are the same on SQLite and PostgreSQL; docs/analytics.md lists them.

A later revision that rebuilds one of the tables these views read (SQLite batch
mode copies, drops and renames the table) or changes a column type they use
(PostgreSQL refuses while a view depends on it) must drop the views first and
create them again afterwards.

Revision ID: 0002_analytics_views
Revises: 0001_initial
Create Date: 2026-11-22
"""
from alembic import op

from orion_sql import resumable

revision = "0002_analytics_views"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def _sqlite_json_path(keys: str) -> str:
    return "'$." + keys + "'"


def _postgresql_json_path(keys: str) -> str:
    return "'{" + keys.replace(".", ",") + "}'"


def _mariadb_json_path(keys: str) -> str:
    return "'$" + "".join(f'."{key}"' for key in keys.split(".")) + "'"


def _mariadb_object_entries(value: str, alias: str) -> str:
    # JSON_TABLE reads the tables before it in FROM (no LATERAL needed); one row per key.
    return (
        f"JSON_TABLE(JSON_KEYS(CASE WHEN JSON_TYPE({value}) = 'OBJECT' THEN {value} END),"
        f" '$[*]' COLUMNS (`key` VARCHAR(760) PATH '$')) AS {alias}"
    )


# The only SQL that differs per database: frozen copies, not orion_sql.dialects (a
# revision is history). `keys` is a dotted path into a JSON value, e.g. "metadata.user".
DIALECT_SQL = {
    "sqlite": {
        # Whole seconds from strftime, microseconds from the stored text
        # ('YYYY-MM-DD HH:MM:SS.ffffff'): julianday() keeps only milliseconds.
        "seconds_between": lambda start, end: (
            f"((strftime('%s', {end}) - strftime('%s', {start}))"
            f" + (CAST(substr({end}, 20) AS REAL) - CAST(substr({start}, 20) AS REAL)))"
        ),
        # json_extract gives objects and arrays as JSON text and scalars as SQL values,
        # so one function serves for a JSON value ("json") and a string ("text").
        "json": lambda value, keys: f"json_extract({value}, {_sqlite_json_path(keys)})",
        "text": lambda value, keys: f"json_extract({value}, {_sqlite_json_path(keys)})",
        "integer": lambda value, keys: (
            f"CASE WHEN json_type({value}, {_sqlite_json_path(keys)}) IN ('integer', 'real')"
            f" THEN CAST(json_extract({value}, {_sqlite_json_path(keys)}) AS INTEGER) END"
        ),
        # FROM items: one row per key (alias.key, alias.value) of an object, or per
        # element (alias.value) of an array; nothing when the value is something else.
        "object_entries": lambda value, alias: (
            f"json_each(CASE WHEN json_type({value}) = 'object' THEN {value} END) AS {alias}"
        ),
        "array_elements": lambda value, alias: (
            f"json_each(CASE WHEN json_type({value}) = 'array' THEN {value} END) AS {alias}"
        ),
    },
    "postgresql": {
        "seconds_between": lambda start, end: (
            f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)"
        ),
        "json": lambda value, keys: f"({value} #> {_postgresql_json_path(keys)})",
        "text": lambda value, keys: f"({value} #>> {_postgresql_json_path(keys)})",
        "integer": lambda value, keys: (
            f"CASE WHEN jsonb_typeof({value} #> {_postgresql_json_path(keys)}) = 'number'"
            f" THEN CAST(CAST({value} #>> {_postgresql_json_path(keys)} AS NUMERIC) AS BIGINT) END"
        ),
        "object_entries": lambda value, alias: (
            f"jsonb_each_text(CASE WHEN jsonb_typeof({value}) = 'object' THEN {value} END)"
            f" AS {alias}(key, value)"
        ),
        "array_elements": lambda value, alias: (
            f"jsonb_array_elements(CASE WHEN jsonb_typeof({value}) = 'array' THEN {value} END)"
            f" AS {alias}(value)"
        ),
        "entry_value": lambda value, alias: f"{alias}.value",
    },
    "mariadb": {
        "seconds_between": lambda start, end: (
            f"(CAST(TIMESTAMPDIFF(MICROSECOND, {start}, {end}) AS DOUBLE) / 1000000)"
        ),
        "json": lambda value, keys: f"JSON_EXTRACT({value}, {_mariadb_json_path(keys)})",
        "text": lambda value, keys: f"JSON_UNQUOTE(JSON_EXTRACT({value}, {_mariadb_json_path(keys)}))",
        "integer": lambda value, keys: (
            f"CASE WHEN JSON_TYPE(JSON_EXTRACT({value}, {_mariadb_json_path(keys)})) IN ('INTEGER', 'DOUBLE')"
            f" THEN CAST(JSON_EXTRACT({value}, {_mariadb_json_path(keys)}) AS SIGNED) END"
        ),
        # Keys only: the value of each is entry_value (MariaDB has no json_each).
        "object_entries": _mariadb_object_entries,
        "array_elements": lambda value, alias: (
            f"JSON_TABLE(CASE WHEN JSON_TYPE({value}) = 'ARRAY' THEN {value} END,"
            f" '$[*]' COLUMNS (value JSON PATH '$')) AS {alias}"
        ),
        "entry_value": lambda value, alias: (
            f"JSON_UNQUOTE(JSON_EXTRACT({value}, CONCAT('$.\"', {alias}.`key`, '\"')))"
        ),
    },
}
# The name of the double type in CAST.
DOUBLE = {"sqlite": "DOUBLE PRECISION", "postgresql": "DOUBLE PRECISION", "mariadb": "DOUBLE", "mysql": "DOUBLE"}
# MySQL is MariaDB's dialect here (SQLAlchemy names the dialect after the URL).
DIALECT_SQL["mysql"] = DIALECT_SQL["mariadb"]
# SQLite's json_each and PostgreSQL's jsonb_each_text give each entry's value as a column.
DIALECT_SQL["sqlite"]["entry_value"] = lambda value, alias: f"{alias}.value"


def _views(sql: dict, double: str = "DOUBLE PRECISION") -> dict[str, str]:
    """Each view's SELECT, in creation order (a view may read the ones before it)."""
    return {
        # One row per experiment version, with its EVC parent and root by name.
        "experiment_overview": f"""
SELECT
    e.id AS experiment_id,
    e.name AS experiment_name,
    e.version AS version,
    e.username AS username,
    e.created_at AS created_at,
    parent.id AS parent_id,
    parent.name AS parent_name,
    parent.version AS parent_version,
    root.id AS root_id,
    root.name AS root_name,
    root.version AS root_version,
    (SELECT a.key FROM {sql["object_entries"](sql["json"]("e.document", "algorithm"), "a")}
     ORDER BY a.key LIMIT 1) AS algorithm,
    {sql["json"]("e.document", "algorithm")} AS algorithm_config,
    {sql["json"]("e.document", "space")} AS space,
    {sql["integer"]("e.document", "max_trials")} AS max_trials,
    {sql["integer"]("e.document", "max_broken")} AS max_broken,
    {sql["text"]("e.document", "metadata.orion_version")} AS orion_version,
    (SELECT COUNT(*) FROM trials t WHERE t.experiment_id = e.id) AS trial_count,
    (SELECT COUNT(*) FROM trials t
     WHERE t.experiment_id = e.id AND t.status = 'completed') AS completed_count,
    (SELECT COUNT(*) FROM trials t
     WHERE t.experiment_id = e.id AND t.status = 'broken') AS broken_count
FROM experiments e
LEFT JOIN experiments parent ON parent.id = e.parent_id
LEFT JOIN experiments root ON root.id = e.root_id""",
        # One row per dimension of an experiment's search space.
        "experiment_dimensions": f"""
SELECT
    e.id AS experiment_id,
    e.name AS experiment_name,
    e.version AS version,
    d.key AS dimension,
    {sql["entry_value"](sql["json"]("e.document", "space"), "d")} AS prior
FROM experiments e, {sql["object_entries"](sql["json"]("e.document", "space"), "d")}""",
        # One row per change Oríon recorded between an experiment and its EVC parent.
        "version_changes": f"""
SELECT
    e.id AS experiment_id,
    e.name AS experiment_name,
    e.version AS version,
    parent.id AS parent_id,
    parent.name AS parent_name,
    parent.version AS parent_version,
    {sql["text"]("c.value", "of_type")} AS change_type,
    COALESCE({sql["text"]("c.value", "param.name")}, {sql["text"]("c.value", "name")},
             {sql["text"]("c.value", "old_name")}) AS dimension,
    c.value AS details
FROM experiments e
LEFT JOIN experiments parent ON parent.id = e.parent_id,
{sql["array_elements"](sql["json"]("e.document", "refers.adapter"), "c")}""",
        # One row per trial: who ran it, when, how long, and its objective.
        "trial_overview": f"""
SELECT
    e.id AS experiment_id,
    e.name AS experiment_name,
    e.version AS version,
    t.id AS trial_id,
    t.hash AS trial_hash,
    t.status AS status,
    t.worker AS worker,
    t.parent_hash AS parent_trial_hash,
    t.submit_time AS submit_time,
    t.start_time AS start_time,
    t.end_time AS end_time,
    t.heartbeat AS heartbeat,
    {sql["seconds_between"]("t.start_time", "t.end_time")} AS duration_seconds,
    (SELECT r.numeric_value FROM results r
     WHERE r.trial_id = t.id AND r.type = 'objective'
     ORDER BY r.position LIMIT 1) AS objective
FROM trials t
JOIN experiments e ON e.id = t.experiment_id""",
        # One row per parameter of a trial, with the trial's status and objective.
        "trial_parameters": """
SELECT
    t.experiment_id AS experiment_id,
    t.experiment_name AS experiment_name,
    t.version AS version,
    t.trial_id AS trial_id,
    t.trial_hash AS trial_hash,
    t.status AS status,
    t.objective AS objective,
    p.name AS parameter_name,
    p.type AS parameter_type,
    p.numeric_value AS numeric_value,
    p.text_value AS text_value,
    p.value AS json_value
FROM params p
JOIN trial_overview t ON t.trial_id = p.trial_id""",
        # One row per result of a trial (objective, constraint, gradient, statistic).
        "trial_results": """
SELECT
    e.id AS experiment_id,
    e.name AS experiment_name,
    e.version AS version,
    t.id AS trial_id,
    t.hash AS trial_hash,
    t.status AS status,
    r.name AS result_name,
    r.type AS result_type,
    r.numeric_value AS numeric_value,
    r.text_value AS text_value,
    r.value AS json_value
FROM results r
JOIN trials t ON t.id = r.trial_id
JOIN experiments e ON e.id = t.experiment_id""",
        # One row per experiment that has a completed trial: the lowest objective
        # (the earliest trial id among equals).
        "best_trial_per_experiment": """
SELECT
    experiment_id, experiment_name, version, trial_id, trial_hash, objective,
    worker, submit_time, start_time, end_time, duration_seconds
FROM (
    SELECT t.*, ROW_NUMBER() OVER (
        PARTITION BY t.experiment_id ORDER BY t.objective, t.trial_id) AS place
    FROM trial_overview t
    WHERE t.status = 'completed' AND t.objective IS NOT NULL
) ranked
WHERE place = 1""",
        # One row per experiment and worker: how many trials it ran, and how many broke.
        # broken_rate: broken / (completed + broken), NULL while none has finished.
        "worker_summary": f"""
SELECT
    experiment_id, experiment_name, version, worker,
    COUNT(*) AS trial_count,
    COUNT(CASE WHEN status = 'completed' THEN 1 END) AS completed_count,
    COUNT(CASE WHEN status = 'broken' THEN 1 END) AS broken_count,
    CAST(COUNT(CASE WHEN status = 'broken' THEN 1 END) AS {double})
        / NULLIF(COUNT(CASE WHEN status IN ('completed', 'broken') THEN 1 END), 0)
        AS broken_rate,
    AVG(CASE WHEN status = 'completed' THEN duration_seconds END) AS mean_completed_seconds
FROM trial_overview
GROUP BY experiment_id, experiment_name, version, worker""",
    }


def _dialect_sql() -> dict:
    name = op.get_bind().dialect.name
    if name not in DIALECT_SQL:
        raise NotImplementedError(
            f"0002_analytics_views has no view definitions for the {name!r} database; "
            f"known: {', '.join(DIALECT_SQL)}"
        )
    return DIALECT_SQL[name]


def upgrade() -> None:
    for name, select in _views(_dialect_sql(), DOUBLE[op.get_bind().dialect.name]).items():
        resumable.create_view(name, select)


def downgrade() -> None:
    for name in reversed(list(_views(_dialect_sql(), DOUBLE[op.get_bind().dialect.name]))):
        resumable.drop_view(name)
