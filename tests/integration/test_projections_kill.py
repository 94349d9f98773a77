"""A projection process killed with SIGKILL in the middle of a batch, then restarted, ends with
exactly the rows of an uninterrupted rebuild (ADR 0008: rows and tracking commit together)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import projections_dataset as ds
from infra.settings import Settings
from projections import funds
from projections_support import dump, engine_for, runner

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
        pauses = 0
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "pausing before commit" in line:
                pauses += 1
                if pauses == 5:  # well into the run, with a batch applied and not yet committed
                    proc.send_signal(signal.SIGKILL)
                    break
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

        runner(engine, app).rebuild()
        assert dump(engine) == after_restart
        with engine.connect() as conn:
            assert funds.check(conn).ok
    finally:
        engine.dispose()
