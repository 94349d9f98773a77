"""The read models' connections (``projections.common``). Read-only ones (``reading``) on both stores: on
PostgreSQL each statement is a transaction of its own (no ``BEGIN``/``ROLLBACK`` round trips
around a read, and each sees what was committed when it runs: READ COMMITTED, as inside a
transaction), on SQLite a plain ``BEGIN`` that a writer holding the write lock does not block (its
reads keep the snapshot of the first, WAL's snapshot isolation, as before). On PostgreSQL large
values are compressed with lz4."""

from __future__ import annotations

from sqlalchemy import text

from projections.common import reading
from projections_support import engine_for


def test_a_reading_connection_sees_each_commit_and_takes_no_write_lock(database_url: str) -> None:
    engine = engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (n INTEGER)"))
            conn.execute(text("INSERT INTO probe (n) VALUES (1)"))
        with reading(engine) as conn:
            assert conn.execute(text("SELECT count(*) FROM probe")).scalar_one() == 1
            if engine.dialect.name == "postgresql":
                # autocommit: the second statement starts a transaction of its own, so its
                # transaction's start is its own start (inside BEGIN … ROLLBACK it would be the first's)
                conn.execute(text("SELECT pg_sleep(0.02)"))
                assert conn.execute(text("SELECT now() = statement_timestamp()")).scalar_one() is True
                assert conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid() AND state = 'active' AND xact_start = query_start")).scalar_one() == 1
            # a writer commits between two reads of the same connection
            with engine.begin() as writer:
                writer.execute(text("INSERT INTO probe (n) VALUES (2)"))
            seen = conn.execute(text("SELECT count(*) FROM probe")).scalar_one()
            assert seen == (2 if engine.dialect.name == "postgresql" else 1)
        with reading(engine) as conn:
            assert conn.execute(text("SELECT count(*) FROM probe")).scalar_one() == 2
        if engine.dialect.name == "sqlite":
            # a writer holding SQLite's write lock (BEGIN IMMEDIATE) does not keep a reader out
            with engine.begin() as writer:
                writer.execute(text("INSERT INTO probe (n) VALUES (3)"))
                with reading(engine) as conn:
                    assert conn.execute(text("SELECT count(*) FROM probe")).scalar_one() == 2
    finally:
        engine.dispose()


def test_large_read_model_values_are_stored_with_lz4_on_postgresql(another_pg_database) -> None:  # noqa: ANN001
    """The read models' engine asks PostgreSQL to compress large values (a cut's state) with lz4
    instead of its default pglz, when the server has it (Debian's does)."""
    with another_pg_database() as url:
        engine = engine_for(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE probe (state TEXT)"))
                conn.execute(text("INSERT INTO probe (state) VALUES (:v)"), {"v": '{"detail":"' + "0123456789abcdef" * 500 + '"}'})
            with reading(engine) as conn:
                assert conn.execute(text("SELECT pg_column_compression(state) FROM probe")).scalar_one() == "lz4"
        finally:
            engine.dispose()
