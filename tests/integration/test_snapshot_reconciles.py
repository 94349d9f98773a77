"""A snapshot explains aid_paid − aid_due per person and fund (ledger.reconcile, R-CLR-2, R-CLR-3),
on SQLite and PostgreSQL:

    aid_paid − aid_due = clearing_owed − supplementary_pending − decided_unpaid + uncleared

Figures as in test_clearing_store: R1 low_income, inpatient 80%, cap 80000, split 1:1 city and
district. E1 90000 → 72000, E2 20000 → 8000 (cap); 居保大病 40000 on E1 recorded late: case 32000
on E1, supplementary 8000 on E2 (pending). R2: a claim approved and not paid (decided_unpaid).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from clearing_story import CHC, HOSPITAL_3, Story, app_on, at, id_number, parse
from commands.snapshot import MONEY_COLUMNS, take_snapshot
from infra.settings import Settings

D = Decimal
MARKED = {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


def _gap(row: dict) -> tuple[Decimal, Decimal]:
    v = {k: D(str(row[k])) for k in MONEY_COLUMNS}
    return v["aid_paid"] - v["aid_due"], v["clearing_owed"] - v["supplementary_pending"] - v["decided_unpaid"] + v["uncleared"]


def test_every_snapshot_row_reconciles_paid_and_due(settings_for: Settings) -> None:
    story = Story(app_on(settings_for))
    story.person("R1", id_number(81), "low_income")
    story.person("R2", id_number(82), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01", in_scope="90000.00", **MARKED)
    story.expense("E2", "R1", at("2026-03-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-03-01", in_scope="20000.00", **MARKED)
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1"])
    story("aid", at("2026-03-20"), claim="C2", recipient="R1", expenses=["E2"])
    story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")
    story("repay", at("2026-04-10"), recipient="R1", amount="1000.00")  # settles part of the case, not the payout
    story.expense("E3", "R2", at("2026-04-01"), facility=CHC, service="2026-04-01", in_scope="1000.00")
    story("claim", at("2026-04-03"), claim="C3", recipient="R2", expenses=["E3"], handler="h-1")
    story("review", at("2026-04-04"), claim="C3", reviewer="r-1")
    story("approve", at("2026-04-05"), claim="C3", approver="a-1")

    snap = take_snapshot(story.app, date(2026, 6, 30), parse(at("2026-06-30")))
    rows = snap.rows
    assert rows
    for row in rows:
        paid_minus_due, explained = _gap(row)
        assert paid_minus_due == explained, row
    r1 = {row["fund"]: row for row in rows if row["recipient"] == str(story.recipient("R1").id)}
    r2 = [row for row in rows if row["recipient"] == str(story.recipient("R2").id)]
    # the parts are the story's: 32000 owed on E1 (16000 a fund), 8000 due on E2, nothing unpaid
    assert {f: D(str(r1[f]["clearing_owed"])) for f in ("city", "district")} == {"city": D("16000.00"), "district": D("16000.00")}
    assert sum(D(str(r["supplementary_pending"])) for r in r1.values()) == D("8000.00")
    assert all(D(str(r["decided_unpaid"])) == 0 and D(str(r["uncleared"])) == 0 for r in r1.values())
    # R2: decided, not paid: what is due is all unpaid
    assert r2 and sum(D(str(r["decided_unpaid"])) for r in r2) == sum(D(str(r["aid_due"])) for r in r2) > 0
    assert all(D(str(r["aid_paid"])) == 0 for r in r2)
    # the totals reconcile too
    total = {k: D(v) for k, v in snap.totals().items()}
    assert total["aid_paid"] - total["aid_due"] == total["clearing_owed"] - total["supplementary_pending"] - total["decided_unpaid"] + total["uncleared"]
