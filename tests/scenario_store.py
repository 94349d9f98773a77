"""Scenario files (tests/scenarios) played into a real store (SQLite or PostgreSQL) instead of the
scenario runner's in-memory one, for tests that need the store's own encoding (issue 16)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from infra import scenario as sc
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def text_of(name: str) -> str:
    return (SCENARIOS / f"{name}.yaml").read_text(encoding="utf-8")


def runner_on(database_url: str, text: str) -> sc.Runner:
    """A scenario runner whose ledger is built on ``database_url`` (policy published a second
    before the scenario's first step, as the in-memory runner does)."""
    data = sc.load(text)
    first = sc._parse_at(data["steps"][0]["at"])  # noqa: SLF001
    runner = sc.Runner.__new__(sc.Runner)
    runner.app = build_app(Settings(database_url=database_url), jurisdiction=data["jurisdiction"], publish_policy=False)
    ensure_policy(runner.app, first - timedelta(seconds=1))
    runner.recipients, runner.expenses, runner.claims, runner.steps = {}, {}, {}, []
    return runner


def play(runner: sc.Runner, text: str) -> sc.Runner:
    """Every step of the scenario, in order."""
    data = sc.load(text)
    for i, step in enumerate((sc._stringify_dates(s) for s in data["steps"]), start=1):  # noqa: SLF001
        runner.step(i, step)
    return runner
