"""The one write path on a real store (SQLite and PostgreSQL): bad input is refused with its field
and rule and changes nothing; a retried command id applies once; a reopened store gives the same
figures. Commands go through ``infra.cli.ops.execute``, the same call ``ledger do`` makes."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

import pytest

from commands import queries
from commands.app import LedgerApp
from infra.cli.ops import execute
from infra.ops import event_count, last_notification_id, topic_of
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from ledger.aggregates import Claim
from ledger.values import CST

ID_NUMBER = "310105195803122013"  # valid: check digit 3
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}
TERTIARY = {"kind": "hospital", "level": 3, "district_designated": False, "code": "SH-H3-RUIJIN"}


@pytest.fixture
def ledger(settings_for: Settings):
    app = build_app(settings_for, publish_policy=False)
    ensure_policy(app, published_at=datetime(2023, 12, 31, 8, tzinfo=CST))
    yield app
    app.close()


def ok(app: LedgerApp, command: str, **payload: Any) -> dict[str, Any]:
    code, answer = execute(app, command, payload)
    assert code == 0, answer
    return answer


def given_recipient(app: LedgerApp, id_number: str = ID_NUMBER) -> str:
    rid = ok(app, "enrol", id_number=id_number, name="王秀英", street="华阳路街道", at="2026-01-05T09:00:00+08:00")["ids"]["recipient"]
    ok(app, "grant_category", recipient=rid, category="dibao", **{"from": "2025-01-01"}, at="2026-01-05T09:01:00+08:00")
    ok(app, "insure", recipient=rid, scheme="resident", **{"from": "2020-01-01"}, at="2026-01-05T09:02:00+08:00")
    return rid


def receipt(rid: str, **changes: Any) -> dict[str, Any]:
    payload = {
        "recipient": rid,
        "visit_type": "outpatient",
        "facility": dict(CHC),
        "service_date": "2026-02-10",
        "invoice_date": "2026-02-10",
        "invoice_no": "CHC-0001",
        "total": "150.00",
        "in_scope": "120.00",
        "basic_insurance_paid": "30.00",
        "at": "2026-02-10T16:00:00+08:00",
    }
    for key, value in changes.items():
        if key.startswith("facility."):
            payload["facility"][key.split(".", 1)[1]] = value
        else:
            payload[key] = value
    return payload


BAD_INPUT: list[tuple[str, str, Callable[[str], dict[str, Any]], str, str]] = [
    # id, command, payload given the recipient id, the field named, a fragment of the rule named
    ("negative money", "record_expense", lambda rid: receipt(rid, total="-150.00"), "total", "two decimals (fen), never negative"),
    ("three decimals", "record_expense", lambda rid: receipt(rid, basic_insurance_paid="30.005"), "basic_insurance_paid", "two decimals (fen)"),
    ("in-scope above total", "record_expense", lambda rid: receipt(rid, in_scope="200.00"), "in_scope", "R-INS-3"),
    ("insurance above in-scope", "record_expense", lambda rid: receipt(rid, basic_insurance_paid="130.00"), "basic_insurance_paid", "R-INS-3"),
    ("invoice before service", "record_expense", lambda rid: receipt(rid, invoice_date="2026-02-09"), "invoice_date", "RULES.md §1"),
    ("unknown category", "grant_category", lambda rid: {"recipient": rid, "category": "millionaire", "from": "2025-01-01"}, "category", "RULES.md §2"),
    ("unknown facility kind", "record_expense", lambda rid: receipt(rid, **{"facility.kind": "spa"}), "facility.kind", "facility.kind"),
    ("bad id number", "enrol", lambda rid: {"id_number": "310105195803122014", "name": "王秀英"}, "id_number", "GB 11643"),
    ("unknown recipient", "record_expense", lambda rid: receipt(str(uuid.uuid4())), "recipient", "enrolled"),
]


@pytest.mark.parametrize(("command", "payload", "field", "rule"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_refused_naming_field_and_rule_and_nothing_changes(ledger: LedgerApp, command, payload, field, rule) -> None:
    rid = given_recipient(ledger)
    ok(ledger, "record_expense", **receipt(rid, invoice_no="CHC-0000"))
    count, last, version = event_count(ledger), last_notification_id(ledger), ledger.recipient(rid).version

    code, answer = execute(ledger, command, payload(rid))

    assert code == 2 and answer["status"] == "invalid"
    [problem] = answer["errors"]
    assert problem["field"] == field, problem
    assert rule in problem["rule"], problem
    assert problem["message"]
    assert (event_count(ledger), last_notification_id(ledger)) == (count, last)
    assert ledger.recipient(rid).version == version


def test_a_retried_command_id_is_applied_once(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    first = ok(ledger, "record_expense", **receipt(rid), command_id="push-2026-0001")
    count = event_count(ledger)
    again = ok(ledger, "record_expense", **receipt(rid), command_id="push-2026-0001")
    assert again == first
    assert event_count(ledger) == count
    assert len(ledger.recipient(rid).expenses) == 1

    eid = first["ids"]["expense"]
    paid = ok(ledger, "aid", recipient=rid, expenses=[eid], at="2026-03-01T10:00:00+08:00", command_id="street-hy-0001")
    count = event_count(ledger)
    assert ok(ledger, "aid", recipient=rid, expenses=[eid], at="2026-03-01T10:00:00+08:00", command_id="street-hy-0001") == paid
    assert event_count(ledger) == count
    assert event_count(ledger, [topic_of(Claim.Lodged)]) == 1

    code, answer = execute(ledger, "enrol", {"id_number": "310105196207154427", "name": "陈美华", "command_id": "push-2026-0001"})
    assert code == 2 and answer["errors"][0]["field"] == "command_id"
    assert event_count(ledger) == count


def figures(app: LedgerApp, rids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"events": event_count(app), "last": last_notification_id(app)}
    for rid in rids:
        r = app.recipient(rid)
        out[rid] = {
            "expenses": {eid: queries.expense_view(r, eid) for eid in r.expenses},
            "cases": [queries.case_view(c) for c in r.cases.values()],
            "funds": {k: str(v) for k, v in queries.fund_movements(r).items()},
            "open": str(r.open_balance()),
            "version": r.version,
        }
    return out


def test_reopening_the_store_gives_the_same_figures(ledger: LedgerApp, settings_for: Settings) -> None:
    rid = given_recipient(ledger)
    other = given_recipient(ledger, "310105196207154427")
    chc = ok(ledger, "record_expense", **receipt(rid))["ids"]["expense"]
    ok(ledger, "one_stop", expense=chc, at="2026-02-10T16:01:00+08:00")
    stay = receipt(rid, visit_type="inpatient", facility=dict(TERTIARY), invoice_no="T3-7781", service_date="2026-01-20", invoice_date="2026-01-20",
                   total="50000.00", in_scope="40000.00", basic_insurance_paid="25000.00", critical_illness_related=True,
                   critical_illness_evidence="receipt_marking", at="2026-01-21T10:00:00+08:00")
    e1 = ok(ledger, "record_expense", **stay)["ids"]["expense"]
    ok(ledger, "aid", recipient=rid, expenses=[e1], at="2026-04-10T10:00:00+08:00")
    ok(ledger, "settle_insurance", expense=e1, scheme="critical_illness", amount="9750.00", at="2026-05-02T10:00:00+08:00")
    ok(ledger, "repay", recipient=rid, amount="2000.00", at="2026-05-20T10:00:00+08:00")
    ok(ledger, "record_expense", **receipt(other, invoice_no="CHC-0907", at="2026-05-25T09:00:00+08:00"))
    before = figures(ledger, [rid, other])
    assert Decimal(before[rid]["open"]) == Decimal("6775.00")  # 90% of the 9,750 居保大病 paid later, less 2,000 repaid
    ledger.close()

    reopened = build_app(settings_for)
    try:
        assert figures(reopened, [rid, other]) == before
    finally:
        reopened.close()
