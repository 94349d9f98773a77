"""Shared fixtures: one test body, both backends (ADR 0002).

- ``database_url``: parametrized ``sqlite`` / ``postgres``; a fresh database for every test.
- ``settings_for``: ``Settings(database_url=<that url>)``.
- ``pg_database``: one fresh PostgreSQL database for the whole session.

PostgreSQL is expected at 127.0.0.1:5432 as user ``postgres`` (override the admin URL with
``LEDGER_TEST_PG_ADMIN_URL``). When it is not reachable the postgres cases FAIL: CI must run
them, so they never skip.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from infra.pg import DEFAULT_ADMIN_URL, create_database, drop_database
from infra.settings import Settings

PG_ADMIN_URL = os.environ.get("LEDGER_TEST_PG_ADMIN_URL", DEFAULT_ADMIN_URL)
TEST_DB_PREFIX = "ledger_test_"

_FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}
_pg_state: dict[str, object] = {"error": None, "swept": False}


def _sweep_orphans() -> None:
    """Drop test databases left by killed runs (their pid is gone)."""
    pattern = re.compile(rf"^{TEST_DB_PREFIX}(\d+)_[0-9a-f]+$")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    for name in names:
        match = pattern.match(name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            drop_database(PG_ADMIN_URL, name)
        except PermissionError:
            pass


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    if _pg_state["error"] is not None:
        pytest.fail(str(_pg_state["error"]), pytrace=False)
    name = f"{TEST_DB_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    try:
        if not _pg_state["swept"]:
            _pg_state["swept"] = True
            _sweep_orphans()
        url = create_database(PG_ADMIN_URL, name)
    except psycopg.OperationalError as exc:
        _pg_state["error"] = (
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}). "
            "Start it (bash .ci/run does); postgres tests fail rather than skip."
        )
        pytest.fail(str(_pg_state["error"]), pytrace=False)
    try:
        yield url
    finally:
        drop_database(PG_ADMIN_URL, name)


@pytest.fixture
def another_pg_database():
    """For a test that needs a second store: ``with another_pg_database() as url:`` a further fresh
    PostgreSQL database, dropped afterwards."""
    return fresh_pg_database


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a fresh PostgreSQL database shared by the whole session."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for this test: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


@pytest.fixture
def settings_for(database_url: str) -> Settings:
    return Settings(database_url=database_url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by folder (unit/integration/e2e) and mark every PostgreSQL case ``postgres``."""
    tests_root = Path(__file__).parent
    for item in items:
        try:
            folder = Path(str(item.path)).relative_to(tests_root).parts[0]
        except ValueError:
            folder = ""
        if folder in _FOLDER_MARKERS:
            item.add_marker(_FOLDER_MARKERS[folder])
        callspec = getattr(item, "callspec", None)
        uses_pg = "pg_database" in getattr(item, "fixturenames", ())
        if callspec is not None and callspec.params.get("database_url") == "postgres":
            uses_pg = True
        if uses_pg:
            item.add_marker("postgres")
