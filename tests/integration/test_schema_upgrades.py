"""A table made by an earlier version gets what a later one added (``projections.common``:
``add_missing_columns``, ``create_missing_indexes``), on SQLite and PostgreSQL: what is missing is
added, what is there is left, twice is the same as once, and a failure that is not another process
having done it first is raised, not swallowed."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, inspect
from sqlalchemy.exc import DBAPIError

from projections.common import add_missing_columns, create_missing_indexes, make_engine


def _old_table(url: str):  # noqa: ANN202
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    old = MetaData()
    Table("upgraded", old, Column("id", Integer, primary_key=True), Column("name", String(20)))
    old.create_all(engine)
    return engine


def test_missing_columns_are_added_once(database_url: str) -> None:
    engine = _old_table(database_url)
    try:
        for _ in range(2):  # a second open finds them there
            add_missing_columns(engine, "upgraded", [("name", "VARCHAR(20)"), ("year", "INTEGER"), ("kind", "VARCHAR(20)")])
        columns = [c["name"] for c in inspect(engine).get_columns("upgraded")]
        assert columns == ["id", "name", "year", "kind"]
        with pytest.raises(DBAPIError):  # not a race: the column is still missing, so the error stands
            add_missing_columns(engine, "upgraded", [("bad", "NOT A TYPE (")])
        assert "bad" not in [c["name"] for c in inspect(engine).get_columns("upgraded")]
    finally:
        engine.dispose()


def test_missing_indexes_are_created_once(database_url: str) -> None:
    engine = _old_table(database_url)
    try:
        later = MetaData()
        table = Table("upgraded", later, Column("id", Integer, primary_key=True), Column("name", String(20)),
                      Column("ghost", Integer))
        by_name = Index("ix_upgraded_name", table.c.name)
        for _ in range(2):
            create_missing_indexes(engine, [by_name])
        assert [i["name"] for i in inspect(engine).get_indexes("upgraded")] == ["ix_upgraded_name"]
        with pytest.raises(DBAPIError):  # on a column the table lacks: no index, so the error stands
            create_missing_indexes(engine, [Index("ix_upgraded_ghost", table.c.ghost)])
        assert [i["name"] for i in inspect(engine).get_indexes("upgraded")] == ["ix_upgraded_name"]
    finally:
        engine.dispose()
