"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infra.cli import _register, app

_register()


@pytest.fixture
def ledger(database_url: str):
    """``ledger …`` through the real CLI on the test's own store (SQLite or PostgreSQL)."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args), env={"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_KEY": "cli-test-key"}, catch_exceptions=False)

    return run
