"""Time travel on a real store (SQLite and PostgreSQL): the (V, T) grid, snapshots that repeat
to the byte, and replay with and without a known-at time (R-TIME-1..3, ADR 0010).

Expected figures are worked out here from RULES.md, not read back from the ledger:
- R1 dibao, community-centre outpatient, self-pay 90.00: city 60% = 54.00 (27.00 city + 27.00
  district, [000 第六条]); 四医联动 95% = 85.50, top-up 31.50 from the district (R-4L-2, R-4L-3).
- R2 low_income, tertiary inpatient outside the district network, self-pay 10,000.00: city 80% =
  8,000.00; once special_relief is granted back to January, 100% = 10,000.00 (R-CAT-2).
- R3 expenditure_poor_1 inpatient, self-pay 5,000.00: 70% = 3,500.00; amended to 60% = 3,000.00.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from openpyxl import load_workbook

from commands import models as m
from commands.replay import audit, replay_decision, replay_expense
from commands.snapshot import FORMATS, take_snapshot
from timetravel_history import (
    AMEND_RECORDED,
    GRID_T,
    GRID_V,
    HOSPITAL_3,
    REVOKE_RECORDED,
    Ledger,
    end_of,
    forge_decision,
    grid_story,
    ledger_app,
    moment,
)

D = Decimal


def by_key(snapshot) -> dict[tuple[str, str], dict]:
    return {(row["recipient"], row["fund"]): row for row in snapshot.rows}


def money(snapshot, column: str) -> dict[tuple[str, str], Decimal]:
    return {key: row[column] for key, row in by_key(snapshot).items()}


@pytest.fixture
def grid(database_url: str) -> Ledger:
    return grid_story(Ledger(ledger_app(database_url)))


def test_same_v_at_two_t_differs_exactly_by_the_back_dated_facts(grid: Ledger) -> None:
    r1, r2, r3 = (grid.recipients[h] for h in ("R1", "R2", "R3"))
    snaps = {name: take_snapshot(grid.app, GRID_V, t) for name, t in GRID_T.items()}

    decided = snaps["decided"]
    assert money(decided, "aid_due") == {
        (r1, "city"): D("27.00"), (r1, "district"): D("58.50"),
        (r2, "city"): D("4000.00"), (r2, "district"): D("4000.00"),
        (r3, "city"): D("1750.00"), (r3, "district"): D("1750.00"),
    }
    assert money(decided, "aid_paid") == money(decided, "aid_due")
    assert money(decided, "caps_used_inpatient")[(r2, "city")] == D("4000.00")

    def changed(a, b) -> set[tuple[str, str]]:
        ka, kb = by_key(a), by_key(b)
        return {k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k)}

    # The retroactive grant (recorded in April) moves R2 only: +2,000.00 due, paid unchanged, the
    # shortfall pending as a supplementary payout, split 1:1.
    assert changed(snaps["decided"], snaps["granted"]) == {(r2, "city"), (r2, "district")}
    for fund in ("city", "district"):
        before, after = by_key(snaps["decided"])[(r2, fund)], by_key(snaps["granted"])[(r2, fund)]
        assert after["aid_due"] - before["aid_due"] == D("1000.00")
        assert after["supplementary_pending"] == D("1000.00")
        assert after["aid_paid"] == before["aid_paid"]
        assert after["category"] == "special_relief+low_income" and before["category"] == "low_income"

    # The back-dated revocation (recorded in May) moves R1 only: nothing due on 2026-02-10 any
    # more; what was paid is open for clearing, per fund.
    assert changed(snaps["granted"], snaps["revoked"]) == {(r1, "city"), (r1, "district")}
    after = by_key(snaps["revoked"])
    assert after[(r1, "city")]["aid_due"] == 0 and after[(r1, "city")]["clearing_open"] == D("27.00")
    assert after[(r1, "district")]["aid_due"] == 0 and after[(r1, "district")]["clearing_open"] == D("58.50")
    assert after[(r1, "city")]["category"] == ""

    # The retroactive amendment (recorded in June) moves R3 only: 3,500.00 → 3,000.00.
    assert changed(snaps["revoked"], snaps["amended"]) == {(r3, "city"), (r3, "district")}
    for fund in ("city", "district"):
        row = by_key(snaps["amended"])[(r3, fund)]
        assert (row["aid_due"], row["aid_paid"], row["clearing_open"]) == (D("1500.00"), D("1750.00"), D("250.00"))

    # V before any service date: the same T sees nothing effective yet.
    assert take_snapshot(grid.app, GRID_V.replace(month=1, day=31), GRID_T["amended"]).rows == []
    # The store position grows with T.
    positions = [s.position for s in snaps.values()]
    assert positions == sorted(positions) and len(set(positions)) == 4


def test_back_dated_revocation_changes_v_now_but_not_v_before_it_was_recorded(grid: Ledger) -> None:
    r1 = grid.recipients["R1"]
    just_before = REVOKE_RECORDED - timedelta(microseconds=1)
    before = by_key(take_snapshot(grid.app, GRID_V, just_before))
    at_decision = by_key(take_snapshot(grid.app, GRID_V, GRID_T["decided"]))
    now = by_key(take_snapshot(grid.app, GRID_V, None))
    for fund, paid in (("city", D("27.00")), ("district", D("58.50"))):
        assert before[(r1, fund)] == at_decision[(r1, fund)]
        assert before[(r1, fund)]["aid_due"] == paid and before[(r1, fund)]["category"] == "dibao"
        assert now[(r1, fund)]["aid_due"] == 0 and now[(r1, fund)]["clearing_open"] == paid
        assert now[(r1, fund)]["aid_paid"] == paid


def test_snapshot_is_byte_identical_and_its_manifest_checks_out(grid: Ledger, database_url: str) -> None:
    t = GRID_T["revoked"]
    first = take_snapshot(grid.app, GRID_V, t).export(FORMATS)
    # Another application on the same store, after more events were recorded later than T.
    grid.expense("E9", "R3", moment("2026-07-01"), service="2026-03-15", in_scope="800.00", visit="inpatient", facility=HOSPITAL_3)
    other = ledger_app(database_url)
    second = take_snapshot(other, GRID_V, t).export(FORMATS)
    assert first.keys() == second.keys() and len(first) == 4
    for name in first:
        assert first[name] == second[name], name

    [manifest_name] = [n for n in first if n.endswith(".manifest.json")]
    manifest = json.loads(first[manifest_name])
    assert manifest["valid"] == GRID_V.isoformat() and manifest["known_at"] == t.isoformat()
    assert manifest["rows"] == 6 and manifest["recipients"] == 3
    for name, meta in manifest["files"].items():
        assert hashlib.sha256(first[name]).hexdigest() == meta["sha256"]
    # The amendment of June is not known at T; the packs are.
    assert manifest["policy"]["amendments"] == [] and len(manifest["policy"]["packs"]) == 4
    amended = take_snapshot(grid.app, GRID_V, AMEND_RECORDED)
    assert [a["name"] for a in amended.policy["amendments"]] == ["shanghai.medical_aid.rate.inpatient.expenditure_poor_1"]

    data = {n.rsplit(".", 1)[-1]: b for n, b in first.items() if not n.endswith("manifest.json")}
    doc = json.loads(data["json"])
    assert {"key": "aid_due", "zh": "应救助金额", "label": "aid_due 应救助金额"} in doc["columns"]
    assert doc["totals"]["clearing_open"] == "85.50"
    csv_text = data["csv"].decode("utf-8-sig")
    assert csv_text.splitlines()[0].split(",")[8] == "aid_due 应救助金额"
    assert len(csv_text.splitlines()) == 7
    sheet = load_workbook(io.BytesIO(data["xlsx"])).worksheets[0]
    assert sheet.cell(1, 9).value == "aid_due 应救助金额"
    assert sheet.max_row == 8 and sheet.cell(8, 1).value == "合计 total"  # six rows and the totals row
    assert D(str(sheet.cell(8, 11).value)) == D("85.50")
    assert sheet.cell(1, 11).value == "clearing_open 清算未结余额"
    assert sum(D(str(sheet.cell(r, 11).value)) for r in range(2, 8)) == D("85.50")


def test_replay_known_at_before_a_late_settlement_reproduces_the_decision(database_url: str) -> None:
    ledger = Ledger(ledger_app(database_url))
    ledger.person("R", 7, "low_income", "2025-06-01", moment("2026-01-06"))
    eid = ledger.expense("E", "R", moment("2026-01-20"), service="2026-01-20", in_scope="40000.00", insurance="25000.00",
                         visit="inpatient", facility=HOSPITAL_3, critical_illness_related=True, critical_illness_evidence="receipt_marking")
    assert ledger.aid("R", ["E"], moment("2026-04-10")).status == "accepted"
    settled = moment("2026-05-02")
    ledger.run(m.SettleInsurance(expense=eid, scheme="critical_illness", amount="9750.00", at=settled))

    rid = ledger.recipients["R"]
    recorded = replay_decision(ledger.app, rid, eid)
    assert recorded.equal and recorded.stored["total"] == "12000.00"  # 80% of 15,000.00
    before = replay_decision(ledger.app, rid, eid, known_at=settled - timedelta(seconds=1))
    assert before.equal and before.replayed["total"] == "12000.00"
    after = replay_decision(ledger.app, rid, eid, known_at=end_of("2026-05-02"))
    assert not after.equal
    assert (after.replayed["self_pay"], after.replayed["total"]) == ("5250.00", "4200.00")  # 80% of 15,000 − 9,750
    paths = {d["path"]: d for d in after.differences if d["amount"]}
    assert paths["total"]["stored"] == "12000.00" and paths["by_fund.city"]["replayed"] == "2100.00"
    # Known at a time before the expense was recorded: nothing to re-decide.
    assert not replay_decision(ledger.app, rid, eid, known_at=moment("2026-01-10")).equal
    # The reassessment the settlement caused replays with its own knowledge.
    kinds = [(r.kind, r.equal) for r in replay_expense(ledger.app, eid)]
    assert kinds == [("decision", True), ("reassessment", True)]


def test_the_audit_finds_a_decision_that_does_not_replay(grid: Ledger) -> None:
    """A decision recorded with an amount its own knowledge does not give (as a faulty handler
    or an edited store would leave it) is caught; the honest ones all replay."""
    honest = audit(grid.app)
    assert honest.ok and (honest.decisions, honest.reassessments, honest.expenses) == (3, 3, 6)
    eid = forge_decision(grid.app, moment("2026-07-03"))
    report = audit(grid.app)
    assert [(d.expense_id, d.kind) for d in report.different] == [(eid, "decision")]
    [first, *_] = report.different[0].differences
    assert first["path"] == "total" and D(first["stored"]) - D(first["replayed"]) == D("1.00")
    assert report.decisions == 4 and report.reassessments == 3


def test_the_audit_in_worker_processes_refuses_workers_that_opened_another_store(grid: Ledger, tmp_path) -> None:  # noqa: ANN001
    """Workers that opened a store other than the audited one would find none of its recipients
    and call them clean: the audit stops instead."""
    from infra.projection_source import store_source
    from infra.settings import Settings
    from infra.wiring import build_app

    other = f"sqlite:///{tmp_path / 'other.db'}"
    build_app(Settings(database_url=other)).close()  # a store of its own, with only its policy
    with pytest.raises(RuntimeError, match="not the same store"):
        audit(grid.app, jobs=2, source=store_source(other))
