"""``ledger do`` processes started all at once on a NEW PostgreSQL database: none crashes (exit 0,
1 or 3: accepted, a rule's rejection, a conflict to retry), the store is set up once (tables,
policy), a command id shared by racing processes is applied once, and the annual cap still holds
when they all claim at once (R-CAP-1, R-CAP-3).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from commands import models as m
from commands import queries
from infra.ops import event_count, topic_of
from infra.policy_files import load_packs
from infra.settings import Settings
from infra.wiring import build_app
from integrity_story import CST, id_number
from ledger.aggregates import PolicyLedger

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

LEDGER = shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"
PROCESSES = 10


def _env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return {**env, "LEDGER_DATABASE_URL": database_url}


def _all_at_once(database_url: str, commands: list[list[str]]) -> list[tuple[int, str, str]]:
    """Start every ``ledger do …`` before waiting for any; (exit code, stdout, stderr) each."""
    procs = [
        subprocess.Popen([LEDGER, "do", *args], env=_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in commands
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout, stderr))
    return out


def _no_crash(results: list[tuple[int, str, str]], allowed: set[int]) -> None:
    for code, stdout, stderr in results:
        assert code in allowed, f"exit {code}\n{stdout}\n{stderr[-3000:]}"
        assert "Traceback" not in stderr, stderr[-3000:]
        json.loads(stdout)  # every process answered with its JSON result


def test_processes_racing_on_a_new_database(database_url: str) -> None:
    # 1. a new, empty database: every process creates the tables and publishes the policy if needed
    people = [id_number(f"31010519600101{i + 400:03d}") for i in range(PROCESSES)]
    enrolled = _all_at_once(database_url, [["enrol", f"id_number={n}", f"name=并发{i}", "street=华阳路街道"] for i, n in enumerate(people)])
    _no_crash(enrolled, {0, 3})
    rids = [json.loads(out)["ids"]["recipient"] for code, out, _ in enrolled if code == 0]
    assert rids and len(set(rids)) == len(rids), [code for code, _, _ in enrolled]  # 3 = retry later: nothing recorded

    app = build_app(Settings(database_url=database_url), publish_policy=False)
    try:
        published = event_count(app, [topic_of(PolicyLedger.PackPublished)])
        assert published == len(load_packs(app.jurisdiction, datetime.now(CST)))  # once, not once per process
        assert sorted(str(r) for r in app.recipient_ids()) == sorted(rids)
        rid = rids[0]
        assert app.run(m.GrantCategory.model_validate({"recipient": rid, "category": "dibao", "from": "2025-01-01"})).status == "accepted"
        assert app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2020-01-01"})).status == "accepted"
        served = (datetime.now(CST) - timedelta(days=10)).date().isoformat()

        def expense(invoice_no: str, in_scope: str = "3000.00") -> dict:
            # a non-designated hospital: city aid only (R-4L-1), 60% of self-pay for dibao outpatient
            return {"recipient": rid, "visit_type": "outpatient", "facility": {"kind": "hospital", "level": 3, "code": "H-3"},
                    "service_date": served, "invoice_date": served, "invoice_no": invoice_no, "total": in_scope,
                    "in_scope": in_scope, "basic_insurance_paid": "0.00"}

        # 2. one command id, two different bodies, racing: one body wins, its copies get its result
        bodies = [expense("SHARED-A" if i % 2 else "SHARED-B") for i in range(PROCESSES)]
        shared = _all_at_once(database_url, [["record_expense", "--json", json.dumps(b), "command_id=push-shared"] for b in bodies])
        _no_crash(shared, {0, 2, 3})
        accepted = [(json.loads(out), b["invoice_no"]) for (code, out, _), b in zip(shared, bodies) if code == 0]
        refused = [json.loads(out) for code, out, _ in shared if code == 2]
        assert accepted, "one body must win"
        assert len({json.dumps(a, sort_keys=True) for a, _ in accepted}) == 1  # the same first result
        assert len({number for _, number in accepted}) == 1  # ... and only for the same body
        assert all(r["errors"][0]["code"] == "IDEMPOTENCY_MISMATCH" for r in refused)
        assert len(app.recipient(rid).expenses) == 1

        # 3. claims racing for one annual cap
        eids = [app.run(m.RecordExpense.model_validate(expense(f"CAP-{i}"))).ids["expense"] for i in range(PROCESSES)]
        aided = _all_at_once(database_url, [["aid", f"recipient={rid}", f"expenses={json.dumps([e])}"] for e in eids])
        _no_crash(aided, {0, 1, 3})
        codes = [code for code, _, _ in aided]

        r = app.recipient(rid)
        year = int(served[:4])
        [row] = [x for x in queries.annual_rows(r, app.policy().book, app.schemes) if x["year"] == year and x["scheme"] == "shanghai.medical_aid" and x["kind"] == "outpatient"]
        cap = Decimal(row["cap"])
        assert Decimal(row["granted"]) <= cap  # 10 × 1,800.00 asked for, never more than the cap granted
        if 3 not in codes:  # every claim got its turn: the cap is spent exactly
            assert Decimal(row["granted"]) == cap, row
        assert not r.cases, "no overrun had to be cleared afterwards"
    finally:
        app.close()
