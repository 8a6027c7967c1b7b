"""PostgreSQL's checks: is a pooler in front, and how many workers the server has room for."""
from __future__ import annotations

from typing import cast

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import URL

from orion_sql.checks.base import Check, CheckFailed, DialectChecks, Probe, passed
from orion_sql.checks.common import open_database
from orion_sql.settings import CONNECTIONS_PER_WORKER, CONNECTIONS_WHILE_HOLDING_LOCK

_SERVER_PROCESS = text("SELECT pg_backend_pid()")


def version(conn) -> str:
    return "PostgreSQL " + conn.execute(text("SHOW server_version")).scalar_one()


def check_pooler(probe: Probe):
    """A pooler (PgBouncer) gives its clients a process id of its own at login: the
    server process that runs their statements has another. Two client connections
    that run their transactions in turn on one server process share it: transaction pooling."""
    engine = probe.database.engine
    with engine.connect() as first, engine.connect() as second:
        given = cast(psycopg.Connection, first.connection.driver_connection).info.backend_pid  # announced at login
        served = [first.execute(_SERVER_PROCESS).scalar_one()]
        first.commit()
        served.append(second.execute(_SERVER_PROCESS).scalar_one())
        second.commit()
    if given == served[0]:
        probe.facts["pooler"] = None
        return passed("none: this connection talks to the server process it was given at login")
    mode = "transaction" if served[0] == served[1] else "session"
    probe.facts["pooler"] = mode
    how = (
        "two client connections ran their transactions on one server process"
        if mode == "transaction"
        else "two client connections kept a server process each, as far as can be told"
    )
    return passed(f"a pooler (PgBouncer or alike) is in front, in {mode} pooling mode: "
                  f"the server process that runs statements is not the one given at login, and {how}")


def check_connections(probe: Probe):
    with probe.database.transaction() as conn:
        limit, for_superusers, reserved, in_use, superuser = conn.execute(
            text(
                "SELECT current_setting('max_connections')::int,"
                " current_setting('superuser_reserved_connections')::int,"
                " coalesce(current_setting('reserved_connections', true), '0')::int,"  # PostgreSQL 16+
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
                " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            )
        ).one()
    held_back = 0 if superuser else for_superusers + reserved
    free = limit - held_back - in_use
    found = (f"max_connections {limit}" + (f" ({held_back} reserved for others)" if held_back else "")
             + f", {in_use} in use (this check's included)")
    if probe.facts.get("pooler") == "transaction":
        return passed(f"{found}; behind a pooler in transaction mode, its pool size, not the number of "
                      "workers, sets how many of these the workers use")
    extra_for_lock = CONNECTIONS_WHILE_HOLDING_LOCK - CONNECTIONS_PER_WORKER
    workers = (free - extra_for_lock) // CONNECTIONS_PER_WORKER
    if workers < 1:
        raise CheckFailed(
            f"{found}: no room for a worker",
            "close idle connections, raise max_connections, or put PgBouncer (transaction pooling) in front",
        )
    return passed(
        f"{found}: room for {workers} workers of one experiment ({CONNECTIONS_PER_WORKER} connection each, "
        f"{CONNECTIONS_WHILE_HOLDING_LOCK} while holding the algorithm lock; each experiment running at once "
        f"needs {extra_for_lock} more)"
    )


def _user(url: URL) -> str:
    return url.username or "(your login name)"


def connect_advice(url: URL) -> str:
    user = _user(url)
    return (
        f"check that PostgreSQL runs at {url.host or 'localhost'}:{url.port or 5432} and accepts connections "
        f"from this machine (listen_addresses, pg_hba.conf, firewall), that the database {url.database!r} exists "
        f"(createdb -h {url.host or 'localhost'} -U {user} {url.database}), and that the user {user} can log in "
        "(keep the password in ~/.pgpass or PGPASSWORD)"
    )


def write_advice(url: URL) -> str:
    user = _user(url)
    return (
        f"as the owner of orion_sql's tables: GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
        f"public TO {user}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user} (an empty database also "
        f"needs GRANT CREATE ON SCHEMA public TO {user}, or `orion-sql upgrade` run once by its owner)"
    )


POSTGRESQL = DialectChecks(
    checks=[
        Check("pooler", "whether a connection pooler is in front", check_pooler, needs=("connection",)),
        Check("connections", "room for workers on the server", check_connections, needs=("pooler",)),
    ],
    open=open_database,  # as the storage opens it, with its connect timeout
    version=version,
    connect_advice=connect_advice,
    write_advice=write_advice,
)
