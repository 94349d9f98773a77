"""Helpers for the projection tests: the read-model engine for a store, table dumps, and the
reference figures computed from the aggregates (``commands.queries``), independently of the
projections."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select

from commands import queries
from commands.app import LedgerApp
from infra.settings import Settings
from ledger.money import ZERO, fmt
from projections.common import make_engine, projection_url, tracking
from projections.runner import Runner, all_projections


def engine_for(database_url: str) -> Engine:
    return make_engine(projection_url(Settings(database_url=database_url).sqlalchemy_url()))


def runner(engine: Engine, app: LedgerApp, batch_size: int = 1000, names: list[str] | None = None) -> Runner:
    chosen = [p for p in all_projections() if names is None or p.name in names]
    r = Runner(engine, app.recorder, app.mapper, chosen, batch_size=batch_size)
    r.setup()
    return r


def dump(engine: Engine) -> dict[str, list[tuple]]:
    """Every read-model row, ordered by primary key, and each view's position."""
    out: dict[str, list[tuple]] = {}
    with engine.connect().execution_options(sqlite_deferred=True) as conn:
        for p in all_projections():
            for t in p.tables:
                pk = list(t.primary_key.columns)
                out[t.name] = [tuple(r) for r in conn.execute(select(t).order_by(*pk))]
        out["positions"] = [tuple(r) for r in conn.execute(select(tracking.c.name, tracking.c.position).order_by(tracking.c.name))]
    return out


def reference(app: LedgerApp) -> dict[str, Any]:
    """annual / suspensions / duplicates / funds computed from the aggregates themselves."""
    book = app.policy().book
    annual, suspensions, duplicates = [], [], []
    funds: dict[str, Decimal] = {}
    for rid in app.recipient_ids():
        r = app.recipient(rid)
        annual += queries.annual_rows(r, book, app.schemes)
        for s in r.suspensions:
            suspensions.append({"recipient": str(rid), "scheme": s["scheme"], "from": s["from"], "lifted": s["lifted"], "expense": s["expense"]})
        for eid, acc in r.expenses.items():
            if acc.facts.duplicate_of:
                duplicates.append({"expense": eid, "duplicate_of": acc.facts.duplicate_of})
        for f, v in queries.fund_movements(r).items():
            funds[f] = funds.get(f, ZERO) + v
    return {
        "annual": annual,
        "suspensions": suspensions,
        "duplicates": duplicates,
        "funds": {f: fmt(funds.get(f, ZERO)) for f in ("city", "district", "mutual_aid", "social")},
    }


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    import json

    return sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)


def pauses_before_commit(proc: Any, count: int, timeout: float) -> int:
    """Read a runner's stderr (``LEDGER_PROJECTIONS_PAUSE_IN_BATCH`` set) until it has paused
    before ``count`` commits, or ended, or ``timeout`` seconds passed; the pauses seen. The caller
    kills it then: a page applied and not yet committed."""
    pauses = 0
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while pauses < count and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "pausing before commit" in line:
            pauses += 1
    return pauses
