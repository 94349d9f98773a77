"""R-CAP-4 [001; 000 第七条]: what a person brings into a district (``TransferIn``) and how the engine
counts it: only the carried (scheme, year, kind) bucket starts from the carried usage."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from commands import models as m
from infra.cli.ops import execute
from infra.wiring import memory_app
from ledger import errors
from ledger.values import CST
from aggregate_support import recorded_decision

ID_NUMBER = "310105195803122013"
TERTIARY = {"kind": "hospital", "level": 3, "district_designated": False, "code": "SH-H3-RUIJIN"}


@pytest.fixture
def xuhui():
    app = memory_app("shanghai.changning", datetime(2023, 12, 31, 8, tzinfo=CST))
    yield app
    app.close()


def arrive(app, **changes):
    fields = dict(
        from_district="changning", source_recipient="r-1", source_position=41, id_number=ID_NUMBER, name="王秀英", street="华阳路街道",
        categories=[{"kind": "grant", "category": "dibao", "valid_from": "2025-01-01", "valid_to": None}],
        insurance=[{"kind": "start", "scheme": "resident", "valid_from": "2020-01-01", "valid_to": None}],
        carried_caps=[{"scheme": "shanghai.medical_aid", "year": 2026, "kind": "outpatient", "used": "9500.00"}],
        aided_receipts=[("sh-h3-ruijin", "rj-0001")],
        at=datetime(2026, 3, 5, 9, tzinfo=CST),
    )
    fields.update(changes)
    return app.run(m.TransferIn(**fields))


def aid_on(app, rid, day, invoice_no, visit_type="outpatient", in_scope="1000.00", at=None):
    code, answer = execute(app, "record_expense", {
        "recipient": rid, "visit_type": visit_type, "facility": dict(TERTIARY), "service_date": day, "invoice_date": day,
        "invoice_no": invoice_no, "total": in_scope, "in_scope": in_scope, "basic_insurance_paid": "0.00", "at": at})
    assert code == 0, answer
    eid = answer["ids"]["expense"]
    code, answer = execute(app, "aid", {"recipient": rid, "expenses": [eid], "at": at})
    return eid, code, answer


def test_only_the_carried_bucket_starts_from_the_carried_usage(xuhui):
    res = arrive(xuhui)
    assert res.status == "accepted", res.as_dict()
    rid = res.ids["recipient"]
    # 2026 outpatient: 600 computed, 500 left of the 10,000 cap (R-CAP-3, R-CAP-4)
    eid, code, answer = aid_on(xuhui, rid, "2026-03-10", "X-1", at="2026-03-10T10:00:00+08:00")
    assert code == 0, answer
    decided = xuhui.recipient(rid).expenses[eid].decided
    assert decided["by_scheme"]["shanghai.medical_aid"] == "500.00"
    # 2026 inpatient has its own cap, not carried: the full rate applies
    eid, code, answer = aid_on(xuhui, rid, "2026-03-11", "X-2", visit_type="inpatient", at="2026-03-11T10:00:00+08:00")
    assert code == 0, answer
    city = xuhui.recipient(rid).expenses[eid].decided["by_scheme"]["shanghai.medical_aid"]
    assert Decimal(city) > Decimal("500.00")
    trace = next(s for s in recorded_decision(xuhui, rid, eid)["trace"]["schemes"] if s["scheme"] == "shanghai.medical_aid")
    assert "carried_in" not in trace["cap"] and "R-CAP-4" not in trace["rules"]


def test_a_receipt_aided_before_the_move_is_a_duplicate(xuhui):
    rid = arrive(xuhui).ids["recipient"]
    _, code, answer = aid_on(xuhui, rid, "2026-02-10", "RJ-0001", at="2026-03-10T10:00:00+08:00")
    assert (code, answer["code"]) == (1, "DUPLICATE"), answer


def test_carried_facts_are_checked_and_a_person_already_here_is_not_moved_in_twice(xuhui):
    bad = execute(xuhui, "enrol", {"id_number": ID_NUMBER, "name": "王秀英"})
    assert bad[0] == 0
    res = arrive(xuhui)
    assert (res.status, res.code, res.rule) == ("rejected", "ALREADY_ENROLLED", "R-CAP-4")
    other = memory_app("shanghai.changning", datetime(2023, 12, 31, 8, tzinfo=CST))
    try:
        with pytest.raises(errors.InvalidInput):
            arrive(other, categories=[{"kind": "held", "category": "dibao", "valid_from": "2025-01-01"}])
        with pytest.raises(errors.InvalidInput):
            arrive(other, insurance=[{"kind": "start", "scheme": "resident", "valid_from": "soon"}])
        with pytest.raises(ValueError):
            arrive(other, carried_caps=[{"scheme": "shanghai.medical_aid", "year": 2026, "kind": "outpatient", "used": "-1.00"}])
    finally:
        other.close()
