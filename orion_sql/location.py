"""Where the database is: its URL, from the storage's configuration, and how it is shown.

One function, :func:`resolve_url`, answers "which database" for the storage, the
`orion-sql` command and Alembic alike: an explicit URL, else Oríon's
``storage.database.host`` (what ``ORION_DB_ADDRESS`` sets), else the embedded
SQLite file beside PickledDB's ``orion_db.pkl``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import orion.core
import yaml
from orion.core.io.database import DatabaseError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

EXAMPLE_URL = "postgresql+psycopg://user:password@db.example.org:5432/orion"
DEFAULT_SQLITE_PATH = os.path.join(orion.core.DIRS.user_data_dir, "orion", "orion_db.sqlite")

# Drivers we ship and test, by the URL's backend name.
# MariaDB and MySQL: PyMySQL, pure Python (nothing to compile on a fresh machine).
_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mariadb": "mariadb+pymysql",
    "mysql": "mysql+pymysql",
}
# Oríon's legacy `database` keys that name nothing for SQL, with the values Oríon fills in.
_LEGACY_DATABASE_DEFAULTS = {"type": {"pickleddb", "sql"}, "name": {"orion"}, "port": {"27017"}}


class ConfigurationError(DatabaseError):
    """The storage configuration does not name a database orion_sql can use.

    Not a ValueError: Oríon 0.2.7's `setup_storage` swallows a ValueError from the
    storage's constructor and fails with an unrelated TypeError instead. A
    DatabaseError, Oríon's command line prints as one line (``Error: ...``).
    """


# `scheme:` at the start of text that is not a URL (`postgresql:/host/db`, one slash):
# refused rather than taken for a relative SQLite path. One letter is a drive, not a scheme.
_LOOKS_LIKE_A_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


# `scheme://user:password@` in text SQLAlchemy cannot parse.
_PASSWORD_IN_TEXT = re.compile(r"(://[^/@:]*:).*@")  # up to the last @: a password may hold / or @


def redact(url: URL | str) -> str:
    """The URL as text with its password hidden, for logs, errors and reprs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return _PASSWORD_IN_TEXT.sub(r"\1***@", url)


def resolve_url(uri: str | None = None, database: Mapping[str, Any] | None = None) -> URL:
    """The database URL for the given storage configuration.

    `uri` (the Python API's keyword) wins; then `database["host"]`; then the
    embedded SQLite default. A plain path means a SQLite file.
    """
    _check_legacy_database_keys(database or {})
    if uri:
        return _parse(uri, source="uri")
    host = (database or {}).get("host")
    if host:
        return _parse(host, source="storage.database.host (ORION_DB_ADDRESS)")
    return sqlite_url(DEFAULT_SQLITE_PATH)


def configured_url(uri: str | None = None, config_file: str | None = None) -> URL:
    """The database `orion-sql` and Alembic work on, found as Oríon's storage finds it.

    `uri` (``--url``, ``-x url=``) wins; then the `config_file`'s
    ``storage.database`` (as ``orion hunt -c`` reads it); then Oríon's global
    configuration (``ORION_DB_ADDRESS``, its config files); then the embedded default.
    """
    database = dict(_config_file_database(config_file)) if config_file else {}
    database["host"] = database.get("host") or orion.core.config.storage.database.host
    return resolve_url(uri, database)


def _config_file_database(path: str) -> Mapping[str, Any]:
    """The ``storage.database`` section of an Oríon configuration file."""
    try:
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except OSError as error:
        raise ConfigurationError(f"cannot read configuration file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        problem = str(error).splitlines()[0]
        raise ConfigurationError(f"configuration file {path} is not valid YAML: {problem}") from None
    storage = _mapping(_mapping(config or {}, path, "the file").get("storage") or {}, path, "storage")
    unknown = sorted(set(storage) - {"type", "database"})
    if unknown:
        raise ConfigurationError(
            f"{path}: storage.{unknown[0]} is not read by Oríon's command line; "
            f"give the database as storage.database.host, e.g. {EXAMPLE_URL!r}"
        )
    if storage.get("type", "sql") != "sql":
        raise ConfigurationError(f"{path}: storage.type is {storage['type']!r}; orion-sql works on the 'sql' storage")
    return _mapping(storage.get("database") or {}, path, "storage.database")


def _mapping(value: Any, path: str, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{path}: {name} must be a mapping, not a {type(value).__name__}")
    return value


def sqlite_url(path: str) -> URL:
    """URL of a SQLite file, made absolute so that workers elsewhere find the same file."""
    return URL.create("sqlite+pysqlite", database=os.path.abspath(os.path.expanduser(path)))


def _parse(text: str, source: str) -> URL:
    if "://" not in text:
        if _LOOKS_LIKE_A_URL.match(text):
            raise ConfigurationError(
                f"{source}: {redact(text)!r} looks like a URL but is not one (a URL has '://'); "
                f"expected for example {EXAMPLE_URL!r}, or a path to a SQLite file "
                f"(write ./{text} for a file whose name has a colon)"
            )
        return sqlite_url(text)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigurationError(
            f"{source}: {redact(text)!r} is not a database URL; expected for example "
            f"{EXAMPLE_URL!r} or a path to a SQLite file"
        ) from None
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        raise ConfigurationError(
            f"{source}: {redact(url)!r} is not a database the sql storage supports "
            f"(supported: SQLite, PostgreSQL, MariaDB and MySQL); expected for example {EXAMPLE_URL!r} "
            f"or a path to a SQLite file"
        )
    ours = _DRIVERS[backend]
    if "+" in url.drivername and url.drivername.split("+", 1)[1] != ours.split("+", 1)[1]:
        raise ConfigurationError(
            f"{source}: {redact(url)!r} names the driver {url.get_driver_name()!r}, which the sql storage "
            f"does not ship; write {backend}:// (or {ours}://) to use {ours.split('+', 1)[1]}"
        )
    url = url.set(drivername=ours)
    if backend != "sqlite":
        return url
    if url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            f"{source}: {redact(url)!r} is an in-memory SQLite database, which every "
            f"connection and worker would see empty; give a file path instead"
        )
    return sqlite_url(url.database)


def _check_legacy_database_keys(database: Mapping[str, Any]) -> None:
    """Refuse `storage.database` keys that would be silently ignored.

    Oríon fills `type`, `name` and `port` with its legacy defaults, so those
    values are accepted; anything else set there is a mistake worth naming.
    """
    for key, value in database.items():
        if key == "host":
            continue
        if key not in _LEGACY_DATABASE_DEFAULTS:
            raise ConfigurationError(
                f"storage.database.{key} is not a setting of the sql storage; "
                f"give the database as storage.database.host, e.g. {EXAMPLE_URL!r}"
            )
        if str(value).lower() not in _LEGACY_DATABASE_DEFAULTS[key]:
            raise ConfigurationError(
                f"storage.database.{key}={value!r} is not used by the sql storage; "
                f"put everything in storage.database.host as a URL, e.g. {EXAMPLE_URL!r}"
            )
