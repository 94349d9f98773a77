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


def test_a_runner_analyses_the_tables_it_filled_where_autovacuum_may_not(another_pg_database) -> None:  # noqa: ANN001
    """PostgreSQL plans from statistics that only ANALYZE gathers; a server with autovacuum off
    never gathers them. A runner that applied pages analyses the tables that changed by more than
    50 rows + 10% since their last statistics, and leaves the others alone."""
    import time

    import projections_dataset as ds
    from infra.settings import Settings
    from projections.runner import Runner, select_projections

    with another_pg_database() as url:
        app = ds.app_on(Settings(database_url=url))
        ds.build(app)
        engine = engine_for(url)
        try:
            runner = Runner(engine, app.recorder, app.mapper, select_projections(["cuts", "statement"]))
            runner.setup()
            runner.catch_up()
            with reading(engine) as conn:  # what each table holds now, every row inserted since it was created
                rows = dict(conn.execute(text("SELECT relname, count(*) FROM (SELECT 'proj_recorded' AS relname FROM proj_recorded UNION ALL "
                                              "SELECT 'proj_cut' FROM proj_cut UNION ALL SELECT 'proj_statement' FROM proj_statement) x GROUP BY relname")).all())
            due = {name for name, n in rows.items() if n > 50 + 0.1 * n}
            assert "proj_recorded" in due and due != set(rows)  # the dataset has tables on both sides of the rule

            def analysed() -> dict[str, bool]:
                with reading(engine) as conn:
                    return dict(conn.execute(text("SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = ANY(:names)"),
                                             {"names": list(rows)}).all())

            # the catch-up checked once already; the counters reach the server's statistics within a second
            deadline, k = time.monotonic() + 10, 1
            while {n for n, done in analysed().items() if done} != due and time.monotonic() < deadline:
                runner.analyse_grown(now=time.monotonic() + 10 * runner.ANALYSE_EVERY * k)
                k += 1
                time.sleep(0.2)
            assert analysed() == {name: name in due for name in rows}
            # nothing changed since: nothing analysed again, and never twice within ANALYSE_EVERY
            assert runner.analyse_grown(now=time.monotonic() + 1000 * runner.ANALYSE_EVERY) == []
            assert runner.analyse_grown() == []
        finally:
            engine.dispose()
            app.close()
