"""One clock for people: what the ledger records without a given time, and every recorded time
it shows, is on Asia/Shanghai time (+08:00), whatever offset a caller's time came in."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from commands import models as m
from commands.explain import explain_expense
from infra.demo import resident_id
from infra.wiring import memory_app
from ledger.values import CST

CHC = {"kind": "community_health_centre", "level": 1, "code": "CN-CHC-HY", "district_designated": True}


def test_recorded_times_are_made_and_shown_in_plus_eight():
    app = memory_app("shanghai.changning", published_at=datetime(2020, 1, 1, tzinfo=CST))
    utc = datetime(2026, 3, 2, 1, 30, tzinfo=timezone.utc)  # 09:30 in Shanghai
    number = resident_id("310105", date(1955, 6, 7), 321, male=True)
    rid = app.run(m.Enrol(id_number=number, name="赵测试", street="华阳路街道", at=utc)).ids["recipient"]
    app.run(m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2020, 1, 1), at=utc + timedelta(minutes=1)))
    app.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=utc + timedelta(minutes=2)))
    eid = app.run(m.RecordExpense(
        recipient=rid, visit_type="outpatient", facility=CHC, service_date=date(2026, 3, 1), invoice_date=date(2026, 3, 1),
        invoice_no="CLOCK-1", total=Decimal("150.00"), in_scope=Decimal("120.00"), basic_insurance_paid=Decimal("30.00"),
        at=utc + timedelta(minutes=3),
    )).ids["expense"]
    paid = app.aid(rid, [eid], utc + timedelta(minutes=4))
    assert paid.status == "accepted", paid
    shown = explain_expense(app, eid)["decision"]["recorded_at"]
    assert shown.endswith("+08:00"), shown
    moment = datetime.fromisoformat(shown)
    assert utc + timedelta(minutes=3) <= moment <= utc + timedelta(minutes=5)
    assert moment.astimezone(CST).hour == 9
    explained = explain_expense(app, eid)
    policy = explained["decision"]["policy"]
    assert policy["known_at"].endswith("+08:00"), policy  # the time the decision knew, as stored
    r = app.recipient(rid)
    assert {e.timestamp.utcoffset() for e in app.repository.event_store.get(r.id)} == {timedelta(hours=8)}

    now = app._now(None)  # noqa: SLF001 - the moment a command without `at` is recorded at
    assert now.utcoffset() == timedelta(hours=8)
    assert abs((now - datetime.now(timezone.utc)).total_seconds()) < 60
