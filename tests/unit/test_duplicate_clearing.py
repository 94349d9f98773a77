"""R-CLR-1(b) [002 4.5; 000 第七条]: a receipt aided under two recipients before the ledger-wide
receipt index existed is found by a clearing run with the ``duplicate`` trigger; the recipient aided
second owes the whole aid back (a clearing case), the first keeps theirs, and the index is filled
in so that no later claim on the receipt is paid."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from commands import models as m
from commands.app import LedgerApp
from infra.wiring import memory_app
from ledger.values import CST

CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}


def t(day: str, hm: str = "10:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hm}:00+08:00")


def person(app: LedgerApp, id_number: str, at: str) -> str:
    rid = app.run(m.Enrol(id_number=id_number, name="测试", street="华阳路街道", at=t(at, "09:00"))).ids["recipient"]
    app.run(m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2020, 1, 1), at=t(at, "09:01")))
    app.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=t(at, "09:02")))
    return rid


def receipt(app: LedgerApp, rid: str, invoice_no: str, at: str) -> str:
    return app.run(m.RecordExpense.model_validate({
        "recipient": rid, "visit_type": "outpatient", "facility": CHC, "service_date": "2026-04-02", "invoice_date": "2026-04-02",
        "invoice_no": invoice_no, "total": "100.00", "in_scope": "100.00", "basic_insurance_paid": "0.00", "at": t(at),
    })).ids["expense"]


@pytest.fixture
def aided_twice(monkeypatch: pytest.MonkeyPatch) -> tuple[LedgerApp, str, str, str, str]:
    """R1 aided on receipt 0001; R2's copy of it (typed differently) aided too, as the ledger did
    before receipts were indexed ledger-wide (the index is switched off for that one claim)."""
    app = memory_app("shanghai.changning", published_at=datetime(2025, 12, 31, 8, tzinfo=CST))
    r1, r2 = person(app, "310105195803122013", "2026-04-01"), person(app, "310105196207154427", "2026-04-01")
    with monkeypatch.context() as patch:  # the ledger as it was: receipts known per recipient only
        patch.setattr(app, "_also_save", lambda aggregate: None)
        patch.setattr(app, "receipt_aided_as", lambda r, facts: r.receipt_aided_by(facts))
        e1 = receipt(app, r1, "0001", "2026-04-02")
        assert app.aid(r1, [e1], t("2026-04-10")).status == "accepted"
        e2 = receipt(app, r2, " 0001 ", "2026-04-03")
        assert app.aid(r2, [e2], t("2026-04-11")).status == "accepted"
    assert app.receipt(app.recipient(r1).expenses[e1].facts.receipt_key) is None  # no index yet
    assert app.recipient(r2).expenses[e2].decided["total"] == "95.00"  # paid twice: the defect
    return app, r1, e1, r2, e2


def test_the_duplicate_run_opens_a_case_on_the_recipient_aided_second(aided_twice) -> None:
    app, r1, e1, r2, e2 = aided_twice
    before_r1 = app.recipient(r1).version
    res = app.run(m.ClearingRun(trigger="duplicate", at=t("2026-05-01")))
    assert res.status == "accepted" and res.ids["cases_opened"] == 1
    [case] = app.recipient(r2).cases.values()
    assert (case.expense_id, case.trigger, case.amount) == (e2, "duplicate", Decimal("95.00"))
    assert app.recipient(r1).cases == {} and app.recipient(r1).version == before_r1  # the first aid stands
    again = app.run(m.ClearingRun(trigger="duplicate", at=t("2026-05-02")))
    assert again.ids["cases_opened"] == 0  # idempotent


def test_the_run_fills_the_index_so_no_later_claim_on_the_receipt_is_paid(aided_twice) -> None:
    app, r1, e1, r2, e2 = aided_twice
    app.run(m.ClearingRun(trigger="duplicate", at=t("2026-05-01")))
    r3 = person(app, "11010519491231002X", "2026-05-02")
    e3 = receipt(app, r3, "0001", "2026-05-03")
    refused = app.aid(r3, [e3], t("2026-05-04"))
    assert (refused.status, refused.code, refused.rule) == ("rejected", "DUPLICATE", "R-PH-7")
