"""Operator mistakes at the command line: one line naming the problem and the fix, an exit code of
its own (infra/cli/operator_errors.py), never a traceback; the development-key warning once per
invocation and never for ``--help``; times recorded by the CLI on the people's clock (+08:00)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from commands import models as m
from infra.cli import _register, app
from infra.cli.operator_errors import EXIT_DATA_KEY, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_STORE, translate
from infra.demo import resident_id
from infra.settings import Settings
from infra.wiring import build_app

_register()
runner = CliRunner()
LEDGER = Path(sys.executable).with_name("ledger")


def _one_line(result) -> str:  # noqa: ANN001
    lines = [line for line in result.stderr.splitlines() if line.startswith("ledger: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    return lines[0]


def _enrolled(url: str, key: str) -> str:
    ledger = build_app(Settings(database_url=url, data_key=key))
    try:
        number = resident_id("310105", date(1950, 3, 4), 123, male=True)
        return ledger.run(m.Enrol(id_number=number, name="王测试", street="华阳路街道")).ids["recipient"]
    finally:
        ledger.close()


def test_a_reading_command_on_a_path_with_no_store_says_so_and_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "ledger.db"
    for args in (["explain", f"{uuid.uuid4()}:1"], ["projections", "status"], ["whatif", "--set", "x=1", "--from", "2025-01-01"],
                 ["relay", "status"], ["clearing", "list"]):
        result = runner.invoke(app, args, env={"LEDGER_DATABASE_URL": f"sqlite:///{missing}"})
        assert result.exit_code == EXIT_STORE, (args, result.output)
        line = _one_line(result)
        assert f"no ledger store at {missing}" in line and "sqlite:////PATH is absolute" in line, line
    assert not missing.parent.exists()


def test_a_relative_sqlite_url_is_named_with_the_directory_it_is_relative_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explain", f"{uuid.uuid4()}:1"], env={"LEDGER_DATABASE_URL": "sqlite:///var/missing.db"})
    assert result.exit_code == EXIT_STORE
    assert f"no ledger store at {tmp_path / 'var' / 'missing.db'}" in _one_line(result)
    assert not (tmp_path / "var").exists()


def test_a_wrong_data_key_is_one_line_and_exit_6(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rid = _enrolled(url, "the-right-key")
    result = runner.invoke(app, ["do", "grant_category", f"recipient={rid}", "category=dibao", "from=2025-01-01"],
                           env={"LEDGER_DATABASE_URL": url, "LEDGER_DATA_KEY": "a-wrong-key"})
    assert result.exit_code == EXIT_DATA_KEY, result.output
    line = _one_line(result)
    assert line.startswith("ledger: wrong LEDGER_DATA_KEY:") and "set the data key this store was written with" in line
    ok = runner.invoke(app, ["do", "grant_category", f"recipient={rid}", "category=dibao", "from=2025-01-01"],
                       env={"LEDGER_DATABASE_URL": url, "LEDGER_DATA_KEY": "the-right-key"})
    assert ok.exit_code == 0, ok.output


def test_an_unknown_id_is_not_found_without_a_uuid_repr(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _enrolled(url, "k")
    unknown = uuid.uuid4()
    result = runner.invoke(app, ["explain", f"{unknown}:1"], env={"LEDGER_DATABASE_URL": url, "LEDGER_DATA_KEY": "k"})
    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "UUID(" not in result.output and "UUID(" not in result.stderr
    assert str(unknown) in result.stderr


@pytest.mark.postgres
def test_a_postgresql_database_that_does_not_exist_is_one_line_at_once():
    name = f"ledger_missing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    for args in (["explain", f"{uuid.uuid4()}:1"], ["do", "enrol", "id_number=x", "name=y", "street=z"]):
        result = runner.invoke(app, args, env={"LEDGER_DATABASE_URL": url})
        assert result.exit_code == EXIT_STORE, result.output
        line = _one_line(result)
        assert f"PostgreSQL database '{name}' does not exist on 127.0.0.1:5432" in line
        assert f"createdb -h 127.0.0.1 -p 5432 -U postgres {name}" in line


def test_bad_dates_and_malformed_ids_are_invalid_input_with_the_expected_form():
    code, line = translate(ValueError("Invalid isoformat string: '2026-13-45'"))
    assert code == EXIT_INVALID and "'2026-13-45' is not a valid date or time" in line and "YYYY-MM-DD" in line
    code, line = translate(ValueError("month must be in 1..12"))
    assert code == EXIT_INVALID and "YYYY-MM-DD" in line
    code, line = translate(ValueError("badly formed hexadecimal UUID string"))
    assert code == EXIT_INVALID and "ids are UUIDs" in line
    assert translate(ValueError("something else entirely")) is None  # not an operator mistake: the traceback stays


def _subprocess(args: list[str], url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATABASE_URL"] = url
    return subprocess.run([str(LEDGER), *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_development_key_warning_once_per_invocation_and_never_for_help(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    warning = "LEDGER_DATA_KEY is not set"
    first = _subprocess(["do", "enrol", f"id_number={resident_id('310105', date(1960, 1, 2), 45, male=False)}", "name=李测试",
                         "street=华阳路街道", "--get", "ids.recipient"], url)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(warning) == 1 and warning not in first.stdout
    rid = first.stdout.strip()
    shown = _subprocess(["status"], url)
    assert shown.stderr.count(warning) == 1
    for args in (["--help"], ["explain", "--help"], ["relay", "status", "--help"]):
        helped = _subprocess(args, url)
        assert helped.returncode == 0 and warning not in helped.stderr + helped.stdout, args

    # the time the CLI recorded is on the people's clock, as the demo's events are
    recorded = _subprocess(["do", "grant_category", f"recipient={rid}", "category=dibao", "from=2025-01-01"], url)
    assert recorded.returncode == 0, recorded.stderr
    ledger = build_app(Settings(database_url=url), publish_policy=False)
    try:
        events = list(ledger.repository.event_store.get(uuid.UUID(rid)))
    finally:
        ledger.close()
    assert events and all(e.timestamp.utcoffset().total_seconds() == 8 * 3600 for e in events), [e.timestamp for e in events]
    status = json.loads(_subprocess(["do", "grant_category", f"recipient={rid}", "category=dibao", "from=2025-01-01"], url).stdout)
    assert status["status"] in ("accepted", "rejected")
