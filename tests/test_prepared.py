"""Prepared statements (orion_sql.prepared) write and read what SQLAlchemy's own execution does."""
from __future__ import annotations

import math

from sqlalchemy import bindparam, insert, select

from orion_sql.models import benchmarks
from orion_sql.prepared import Prepared

# Values the JSON column's processors must encode and decode (tagged floats, text beyond ASCII).
DOCUMENTS = [{"x": [1, 2.5, None]}, {"x": math.inf, "y": "é\u2028"}, {"x": -0.0}]


def test_prepared_statements_bind_and_read_as_sqlalchemy_does(storage):
    add = Prepared(insert(benchmarks))
    named = Prepared(
        select(benchmarks.c.name, benchmarks.c.document)
        .where(benchmarks.c.name.in_([bindparam("name"), "b-1"]))  # one bind given, one the statement carries
        .order_by(benchmarks.c.name)
    )
    rows = [{"id": index + 1, "name": f"b-{index}", "document": document} for index, document in enumerate(DOCUMENTS)]
    with storage.database.transaction(write=True) as conn:
        add.execute(conn, rows)  # many rows: one executemany
        add.execute(conn, {"id": 9, "name": "b-9", "document": {}})  # one row
    with storage.database.transaction() as conn:
        read = named.mappings(conn, {"name": "b-2"})
        expected = conn.execute(named.statement, {"name": "b-2"}).mappings().all()
    assert read == [dict(row) for row in expected] == [
        {"name": "b-1", "document": DOCUMENTS[1]},
        {"name": "b-2", "document": DOCUMENTS[2]},
    ]
    assert math.copysign(1, read[1]["document"]["x"]) == -1  # -0.0 came back as itself
    with storage.database.transaction() as conn:
        everything = conn.execute(select(benchmarks.c.id, benchmarks.c.document).order_by(benchmarks.c.id)).all()
    assert [tuple(row) for row in everything] == [*((row["id"], row["document"]) for row in rows), (9, {})]

