"""Oríon's legacy databases as plain documents: read a PickledDB file or MongoDB, write a PickledDB file.

A PickledDB file (Oríon's default storage, and what Oríon's newer ``orion db dump``
writes) is a pickled EphemeralDB; MongoDB is opened through Oríon's own legacy
storage. Both are then read through Oríon's Database API, collection by collection.
A PickledDB file is written the way PickledDB writes it: to a temporary file, then
renamed over the destination, so a reader never sees half a file.
"""
from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass, field
from typing import Any

from orion.core.io.database import Database, DatabaseError
from orion.core.io.database.ephemeraldb import EphemeralCollection, EphemeralDB
from orion.core.utils.backward import db_is_outdated
from orion.storage.legacy import Legacy

from orion_sql.location import redact

# The collections of Oríon's legacy storage, as orion_sql reads and writes them.
COLLECTIONS = ("experiments", "trials", "algo", "benchmarks")
MONGODB_SCHEMES = ("mongodb://", "mongodb+srv://")


class LegacyDatabaseError(Exception):
    """A legacy database that cannot be read or written, said in one line."""


@dataclass
class LegacyDocuments:
    """The documents of a legacy database, by collection, in their stored order."""

    experiments: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    algo: list[dict[str, Any]] = field(default_factory=list)
    benchmarks: list[dict[str, Any]] = field(default_factory=list)
    # Collections Oríon does not use, found in a PickledDB file, with their sizes.
    unknown_collections: dict[str, int] = field(default_factory=dict)


def is_mongodb(source: str) -> bool:
    return source.startswith(MONGODB_SCHEMES)


def describe(source: str) -> str:
    """The source as it may be shown: a MongoDB URL without its password."""
    return redact(source) if is_mongodb(source) else source


def read_source(source: str) -> LegacyDocuments:
    """Every document of a PickledDB file or a MongoDB database (a ``mongodb://`` URL)."""
    database = _open_mongodb(source) if is_mongodb(source) else _open_pickleddb(source)
    try:
        if db_is_outdated(database):
            raise LegacyDatabaseError(
                f"{describe(source)} was written by an older Oríon; run `orion db upgrade` on it first"
            )
        documents = LegacyDocuments(**{name: database.read(name) for name in COLLECTIONS})
    except DatabaseError as error:
        raise LegacyDatabaseError(f"cannot read {describe(source)}: {_first_line(error)}") from None
    if isinstance(database, EphemeralDB):
        documents.unknown_collections = {
            name: len(collection._documents)  # pylint: disable=protected-access
            for name, collection in database._db.items()  # pylint: disable=protected-access
            if name not in COLLECTIONS and collection._documents  # pylint: disable=protected-access
        }
    return documents


def _open_mongodb(url: str) -> Database:
    """A MongoDB database, opened as Oríon's legacy storage opens it (without creating indexes)."""
    try:
        return Legacy(database={"type": "mongodb", "host": url}, setup=False)._db  # pylint: disable=protected-access
    except DatabaseError as error:
        raise LegacyDatabaseError(f"cannot read {redact(url)}: {_first_line(error)}") from None


def _open_pickleddb(path: str) -> EphemeralDB:
    """The EphemeralDB pickled in a PickledDB file.

    The file is read without PickledDB's lock file: PickledDB replaces the file by
    renaming, so it is always whole, and a read-only source stays untouched.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise LegacyDatabaseError(f"cannot read {path}: {error.strerror}") from None
    if not data:  # PickledDB's own reading of an empty file: an empty database
        return EphemeralDB()
    try:
        database = pickle.loads(data)
    except Exception as error:  # noqa: BLE001 (arbitrary bytes can raise anything while unpickling)
        raise LegacyDatabaseError(
            f"{path} is not a PickledDB file: it is not a pickle ({_first_line(error)})"
        ) from None
    if not isinstance(database, EphemeralDB):
        raise LegacyDatabaseError(
            f"{path} is not a PickledDB file: it holds a {type(database).__name__}, not Oríon's EphemeralDB"
        )
    collections = getattr(database, "_db", None)
    if not isinstance(collections, dict) or not all(isinstance(c, EphemeralCollection) for c in collections.values()):
        raise LegacyDatabaseError(f"{path} is not a PickledDB file: its EphemeralDB has no collections")
    return database


# --- writing a PickledDB file -----------------------------------------------------


def check_destination(path: str, force: bool) -> None:
    """Refuse a destination that is a folder, or an existing non-empty file unless `force`."""
    if os.path.isdir(path):
        raise LegacyDatabaseError(f"{path} is a folder; give the path of the PickledDB file to write")
    if not force and os.path.exists(path) and os.path.getsize(path) > 0:
        raise LegacyDatabaseError(f"{path} exists and is not empty; use -f/--force to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise LegacyDatabaseError(f"cannot write {path}: the folder {folder} does not exist")


def write_pickleddb(path: str, documents: LegacyDocuments) -> None:
    """Write `documents` as a PickledDB file at `path`, atomically.

    The EphemeralDB is built with the indexes Oríon's legacy storage creates, which
    also checks that the documents are unique where Oríon expects them to be.
    """
    database = Legacy(database={"type": "ephemeraldb"})._db  # pylint: disable=protected-access
    for name in COLLECTIONS:
        database.write(name, getattr(documents, name))
    temporary = os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    )
    try:
        # os.open applies the umask, as PickledDB's own open(..., "wb") does.
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            pickle.dump(database, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
