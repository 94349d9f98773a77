"""One process at a time sets a store up (its tables, the first policy publication).

Processes starting together on a new PostgreSQL database race on ``CREATE TABLE IF NOT EXISTS``
(which can still fail, on the ``pg_type`` unique index) and on publishing the policy packs. A
session advisory lock held while the application is built serialises them: the first creates, the
others find everything there. The lock goes with its connection, so a killed process cannot leave
it held. On a SQLite file the same turn-taking is an exclusive ``flock`` on ``<file>.lock`` (a
transaction that reads the schema and then writes it cannot wait out a concurrent writer in WAL
mode: it fails at once with "database is locked"); an in-memory store needs none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.settings import Settings

#: pg_advisory_lock key: "ledger schema" (any constant shared by every ledger process).
SCHEMA_LOCK_KEY = 7308262500


@contextmanager
def schema_lock(settings: Settings) -> Iterator[None]:
    if settings.is_memory:
        yield
    elif settings.is_sqlite:
        with _file_lock(Path(settings.sqlalchemy_url()[len("sqlite:///") :]).expanduser()):
            yield
    else:
        with _advisory_lock(settings.psycopg_conninfo()):
            yield


@contextmanager
def _advisory_lock(conninfo: str) -> Iterator[None]:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True, connect_timeout=30) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            if not conn.closed:  # else closing released it already
                conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


@contextmanager
def _file_lock(database: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system: the stores' busy timeouts only
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
