"""A projection process killed with SIGKILL in the middle of a batch, then restarted, ends with
exactly the rows of an uninterrupted rebuild (ADR 0008: rows and tracking commit together)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import infra.cli.projections  # noqa: F401 - registers `ledger projections`
import projections_dataset as ds
from infra.cli import app as cli_app
from infra.settings import Settings
from projections import funds
from projections_support import dump, engine_for, pauses_before_commit

LEDGER = shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return {**env, "LEDGER_DATABASE_URL": database_url, **extra}


def test_sigkill_mid_batch_then_restart_gives_the_same_rows(database_url: str) -> None:
    app = ds.app_on(Settings(database_url=database_url))
    ds.build(app)
    head = app.recorder.max_notification_id()
    engine = engine_for(database_url)
    try:
        proc = subprocess.Popen(
            [LEDGER, "projections", "run", "--once", "--batch", "9"],
            env=_env(database_url, LEDGER_PROJECTIONS_PAUSE_IN_BATCH="0.2"),
            stderr=subprocess.PIPE,
            text=True,
        )
        pauses = pauses_before_commit(proc, 5, 60)  # well into the run, a batch applied and not yet committed
        if pauses == 5:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, f"the runner was not killed mid-batch (pauses seen: {pauses})"

        killed = dict(dump(engine)["positions"])
        assert 0 < max(killed.values()) and min(killed.values()) < head, killed

        restarted = subprocess.run(
            [LEDGER, "projections", "run", "--once", "--batch", "100"], env=_env(database_url), capture_output=True, text=True, timeout=120
        )
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        after_restart = dump(engine)
        assert set(dict(after_restart["positions"]).values()) == {head}

        # The uninterrupted run: `ledger projections rebuild` from zero, in one process.
        cli = CliRunner()
        env = {"LEDGER_DATABASE_URL": database_url}
        rebuilt = cli.invoke(cli_app, ["projections", "rebuild"], env=env)
        assert rebuilt.exit_code == 0, rebuilt.output
        assert dump(engine) == after_restart

        status = cli.invoke(cli_app, ["projections", "status", "--json"], env=env)
        assert status.exit_code == 0, status.output
        assert {(s["name"], s["position"], s["lag"]) for s in json.loads(status.stdout)} == {(n, head, 0) for n in dict(after_restart["positions"])}
        checked = cli.invoke(cli_app, ["projections", "check", "--json"], env=env)
        assert checked.exit_code == 0, checked.output
        report = json.loads(checked.stdout)
        assert report["ok"] and report["position"] == head and report["entries"] > 0
        with engine.connect() as conn:
            assert funds.check(conn).ok
    finally:
        engine.dispose()
