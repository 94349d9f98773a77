"""SQLite for bulk loads (the demo, benchmarks): the library's recorder with ``synchronous=NORMAL``.

In WAL mode, ``synchronous=NORMAL`` skips the fsync at every commit (it syncs at checkpoints):
the file cannot be corrupted, but the last transactions may be lost on a power failure. A demo
dataset built from a seed can simply be built again, and one fsync per command dominated its
time (about 4 ms each here against well under 1 ms of work). The ledger's own store keeps the
library's default (``FULL``); only :func:`bulk_env` selects this factory.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.sqlite import SQLiteFactory


class BulkLoadSQLiteFactory(SQLiteFactory):
    def __init__(self, env: Any):
        super().__init__(env)
        pool = self.datastore.pool
        create = pool._create_connection

        def create_connection() -> Any:
            conn = create()
            conn._sqlite_conn.execute("PRAGMA synchronous=NORMAL")  # noqa: SLF001 - no public hook
            return conn

        pool._create_connection = create_connection  # type: ignore[method-assign]


TOPIC = f"{__name__}:{BulkLoadSQLiteFactory.__qualname__}"


def bulk_env(env: dict[str, str]) -> dict[str, str]:
    """The same store, written with ``synchronous=NORMAL`` when it is a SQLite file."""
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite" and "mode=memory" not in env.get("SQLITE_DBNAME", ""):
        return {**env, "PERSISTENCE_MODULE": TOPIC}
    return dict(env)
