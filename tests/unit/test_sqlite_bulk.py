"""The bulk-load SQLite factory (the demo's): the library's recorder with synchronous=NORMAL."""

from __future__ import annotations

from pathlib import Path

from eventsourcing.persistence import InfrastructureFactory

from infra.settings import Settings
from infra.sqlite_bulk import TOPIC, bulk_env
from infra.wiring import APP_NAME


def _synchronous(env: dict[str, str]) -> int:
    factory = InfrastructureFactory.construct(env)
    with factory.datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA synchronous")
        return cursor.fetchone()[0]


def test_a_sqlite_file_is_written_with_synchronous_normal(tmp_path: Path) -> None:
    env = Settings(database_url=f"sqlite:///{tmp_path / 'demo.db'}").eventsourcing_env(APP_NAME)
    bulk = bulk_env(env)
    assert bulk["PERSISTENCE_MODULE"] == TOPIC
    assert _synchronous(bulk) == 1  # NORMAL
    assert _synchronous(env) == 2  # the ledger's own store keeps FULL


def test_other_stores_are_left_as_they_are() -> None:
    for url in ("sqlite:///:memory:", "postgresql://postgres@127.0.0.1:5432/x"):
        env = Settings(database_url=url).eventsourcing_env(APP_NAME)
        assert bulk_env(env) == env
