"""``ledger replay``, ``ledger whatif`` and ``ledger snapshot`` on a real store (SQLite and
PostgreSQL), as an auditor runs them (ADR 0010)."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

import infra.cli.timetravel  # noqa: F401  (registers the commands)
from commands.app import LedgerApp
from infra.cli import app as cli
from infra.settings import Settings
from infra.wiring import APP_NAME
from timetravel_history import GRID_V, Ledger, forge_decision, generated, grid_story, ledger_app, moment

runner = CliRunner()


def demo_store(database_url: str) -> LedgerApp:
    """The demo dataset (one year, a few streets' worth) when ``infra.demo`` is there; else this
    suite's own generated history."""
    try:
        from infra.demo import demo_app, generate
    except ImportError:
        return generated(Ledger(ledger_app(database_url)), recipients=6, seed=3).app
    ledger = demo_app(Settings(database_url=database_url).eventsourcing_env(APP_NAME), start=date(2026, 1, 1))
    generate(ledger, recipients=10, seed=11, years=(2026,), until=date(2026, 8, 31))
    return ledger


def test_replay_all_verify_is_clean_on_the_demo_dataset_and_catches_a_forgery(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    store = demo_store(database_url)
    position = store.recorder.max_notification_id()
    ok = runner.invoke(cli, ["replay", "--all", "--verify", "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["differences"] == 0 and report["decisions"] > 10 and report["compared"] >= report["decisions"]
    assert store.recorder.max_notification_id() == position  # replay records nothing

    forged = forge_decision(store, moment("2026-09-02"))
    bad = runner.invoke(cli, ["replay", "--all", "--verify"])
    assert bad.exit_code == 1
    assert "1 difference(s)" in bad.stdout and forged in bad.stdout
    one = runner.invoke(cli, ["replay", forged, "--verify", "--json"])
    assert one.exit_code == 1
    assert json.loads(one.stdout)["replays"][0]["differences"][0]["path"] == "total"


def test_replay_one_expense_with_and_without_known_at(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    grid = grid_story(Ledger(ledger_app(database_url)))
    e2 = grid.expenses["E2"]  # decided at 80% in March; special_relief granted back to January in April
    text = runner.invoke(cli, ["replay", e2])
    assert text.exit_code == 0, text.output
    assert "decision of" in text.stdout and "EQUAL" in text.stdout and "DIFFERENT" not in text.stdout
    later = runner.invoke(cli, ["replay", e2, "--known-at", "2026-04-30", "--json"])
    data = json.loads(later.stdout)
    decision = data["replays"][0]
    assert decision["kind"] == "decision" and not decision["equal"]
    assert (decision["stored"]["total"], decision["replayed"]["total"]) == ("8000.00", "10000.00")
    assert decision["replayed"]["category"] == "special_relief"
    # Known the day before the grant was recorded, the decision replays as made; the reassessment
    # the grant caused does not (its knowledge is not there yet).
    earlier = runner.invoke(cli, ["replay", e2, "--known-at", "2026-04-09", "--json", "--verify"])
    assert earlier.exit_code == 1
    assert [(r["kind"], r["equal"]) for r in json.loads(earlier.stdout)["replays"]] == [("decision", True), ("reassessment", False)]
    assert runner.invoke(cli, ["replay", "not-an-expense"]).exit_code == 2
    assert runner.invoke(cli, ["replay"]).exit_code == 2


def test_snapshot_cli_writes_the_same_bytes_twice(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    grid_story(Ledger(ledger_app(database_url)))
    args = ["snapshot", "--valid", GRID_V.isoformat(), "--known-at", "2026-05-31T23:59:59+08:00"]
    first = runner.invoke(cli, [*args, "--out", str(tmp_path / "a")])
    second = runner.invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "elapsed" in first.stdout
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert [n.rsplit(".", 1)[-1] for n in names] == ["csv", "json", "json", "xlsx"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    [manifest] = [n for n in names if n.endswith(".manifest.json")]
    meta = json.loads((tmp_path / "a" / manifest).read_text(encoding="utf-8"))
    for name, file in meta["files"].items():
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == file["sha256"]
    only_csv = runner.invoke(cli, [*args, "--format", "csv", "--out", str(tmp_path / "c")])
    assert only_csv.exit_code == 0
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".csv", ".json"]
    assert runner.invoke(cli, [*args, "--format", "pdf"]).exit_code == 2


def test_whatif_cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    grid = grid_story(Ledger(ledger_app(database_url)))
    # R3's 5,000.00 self-pay, already amended to 60%: what would 50% from February on move?
    out = runner.invoke(cli, ["whatif", "--set", "shanghai.medical_aid.rate.inpatient.expenditure_poor_1=0.50", "--from", "2026-02-01", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["recorded"] is False
    assert data["total"] == {"before": "3000.00", "after": "2500.00", "change": "-500.00"}
    assert data["by_street"] == {"江苏路街道": {"before": "3000.00", "after": "2500.00", "change": "-500.00"}}
    assert data["expenses"][0]["expense"] == grid.expenses["E3"]
    floor = runner.invoke(cli, ["whatif", "--set", "lianyungang.medical_aid.rate.key=0.60", "--from", "2026-01-01"])
    assert floor.exit_code == 1 and "POLICY_FLOOR" in floor.output
    assert runner.invoke(cli, ["whatif", "--set", "x", "--from", "2026-01-01"]).exit_code == 2


def test_replay_all_in_worker_processes_reports_what_one_process_reports(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``replay --all --jobs 2``: the recipients shared out among two worker processes, each
    opening the store itself; the same counts and the same differences, in the same order, as
    in one process, forged decisions included."""
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    store = demo_store(database_url)
    # forgeries for the first and the last recipient (in different shares of the workers) and a
    # second one for the first
    first, *_, last = list(store.recipient_ids())
    forged = [forge_decision(store, moment("2026-09-02"), first), forge_decision(store, moment("2026-09-03"), last),
              forge_decision(store, moment("2026-09-04"), first)]

    def report(jobs: int) -> dict:
        result = runner.invoke(cli, ["replay", "--all", "--verify", "--json", "--jobs", str(jobs)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)  # the forgeries are found
        data = json.loads(result.stdout)
        assert data.pop("jobs") == jobs
        data.pop("seconds")
        return data

    one, two = report(1), report(2)
    assert two == one
    assert one["differences"] == 3 and {d["expense"] for d in one["different"]} == set(forged)
    assert [d["recipient"] for d in one["different"]] == [str(first), str(first), str(last)]  # in the recipients' order
    assert one["recipients"] > 2 and one["decisions"] > 10
