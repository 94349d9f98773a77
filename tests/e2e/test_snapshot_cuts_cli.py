"""``ledger snapshot`` from the persisted cuts, as a regulator runs it: the files are the
full-replay snapshot's, and the manifest names the integrity-chain head at the store position."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import infra.cli.timetravel  # noqa: F401  (registers the commands)
from commands.snapshot import take_snapshot
from infra.cli import app as cli
from infra.integrity import chain_head
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from timetravel_history import GRID_T, GRID_V, START, Ledger, grid_story

runner = CliRunner()


def test_cli_snapshot_matches_the_replay_and_names_the_chain_head(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    app = build_app(Settings(database_url=database_url), publish_policy=False)  # chained, as `ledger do` builds it
    ensure_policy(app, START - timedelta(seconds=1))
    grid = grid_story(Ledger(app))
    for name in ("granted", "amended"):
        t = GRID_T[name]
        res = runner.invoke(cli, ["snapshot", "--valid", GRID_V.isoformat(), "--known-at", t.isoformat(), "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        reference = take_snapshot(grid.app, GRID_V, t)
        files = reference.export(("json", "csv"))
        for fname, data in files.items():
            if not fname.endswith(".manifest.json"):
                assert (tmp_path / name / fname).read_bytes() == data, fname
        manifest = json.loads((tmp_path / name / f"{reference.stem}.manifest.json").read_text(encoding="utf-8"))
        link = chain_head(reference.position, grid.app)
        assert link is not None and link.position <= reference.position
        assert manifest["chain_head"] == {"position": link.position, "hash": link.hash}
        assert manifest["store_position"] == reference.position and manifest["totals"] == reference.totals()
