"""Separation of duties (R-PH-4 [002 3.4], R-CLR-3 [000 第七条]), performed as attacks on the one
write path: one officer under another spelling, a payer who already signed, a 免申即享 batch that
would sign itself. Each attack must be refused and record nothing."""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest

from commands import models as m
from commands.app import DEFAULT_OFFICERS, DEFAULT_PAYER, LedgerApp
from infra.wiring import memory_app
from ledger.aggregates import Claim
from ledger.values import CST, same_identity

DIBAO_ID = "310105195803122013"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}


def t(day: str, hm: str = "10:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hm}:00+08:00")


@pytest.fixture
def ledger() -> LedgerApp:
    return memory_app("shanghai.changning", published_at=datetime(2025, 12, 31, 8, tzinfo=CST))


def given_expense(app: LedgerApp, invoice_no: str = "HY-1", day: str = "2026-04-02", consent: bool = False) -> tuple[str, str]:
    known = any(True for _ in app.recipient_ids())
    rid = str(app.recipient_id_for(DIBAO_ID))
    if not known:
        rid = app.run(m.Enrol(id_number=DIBAO_ID, name="王秀英", street="华阳路街道", at=t("2026-04-01", "09:00"))).ids["recipient"]
        app.run(m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2020, 1, 1), at=t("2026-04-01", "09:01")))
        app.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=t("2026-04-01", "09:02")))
        if consent:
            app.run(m.ConsentAutoClaim(recipient=rid, signed=True, at=t("2026-04-01", "09:03")))
    eid = app.run(m.RecordExpense.model_validate({
        "recipient": rid, "visit_type": "outpatient", "facility": CHC, "service_date": day, "invoice_date": day,
        "invoice_no": invoice_no, "total": "100.00", "in_scope": "100.00", "basic_insurance_paid": "0.00", "at": t(day, "15:00"),
    })).ids["expense"]
    return rid, eid


def lodged(app: LedgerApp, handler: str = "Wang.Li") -> str:
    rid, eid = given_expense(app)
    return app.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler=handler, at=t("2026-04-10"))).ids["claim"]


def nothing_recorded(app: LedgerApp, before: int) -> bool:
    return (app.recorder.max_notification_id() or 0) == before


def test_identities_compare_after_nfkc_case_folding_and_trimming() -> None:
    assert same_identity(" Wang.Li ") == same_identity("wang.li") == same_identity("ＷＡＮＧ．ＬＩ") == "wang.li"
    assert same_identity("wang.li") != same_identity("wang.lin")
    # what shows nothing is left out before normalising too: a joiner cannot keep é decomposed
    assert same_identity("José") == same_identity("Jose\u034f\u0301") == "josé"
    # a blank that shows is kept: "12 34" and "12\u280034" are not "1234"
    assert len({same_identity("1234"), same_identity("12 34"), same_identity("12\u280034")}) == 3


@pytest.mark.parametrize("alias", ["wang.li", "  WANG.LI", "Ｗａｎｇ．Ｌｉ", "wang.li\u3000",
                                   # characters that show nothing: joiners, a Hangul filler, a combining grapheme joiner
                                   "Wang.Li\u200d", "Wang\u200c.Li", "Wang.Li\u3164", "Wa\u034fng.Li", "\uffa0Wang.Li\u115f"])
def test_the_handler_under_another_spelling_cannot_review(ledger: LedgerApp, alias: str) -> None:
    cid = lodged(ledger)
    before = ledger.recorder.max_notification_id()
    res = ledger.run(m.Review(claim=cid, reviewer=alias, at=t("2026-04-11")))
    assert (res.status, res.code, res.rule) == ("rejected", "SAME_OFFICER", "R-PH-4")
    assert nothing_recorded(ledger, before)
    assert ledger.claim(cid).status == "lodged"


def test_the_reviewer_under_another_spelling_cannot_approve(ledger: LedgerApp) -> None:
    cid = lodged(ledger)
    assert ledger.run(m.Review(claim=cid, reviewer="Zhao.Min", at=t("2026-04-11"))).status == "accepted"
    res = ledger.run(m.Approve(claim=cid, approver=" ZHAO.MIN", at=t("2026-04-12")))
    assert (res.code, res.rule) == ("SAME_OFFICER", "R-PH-4")
    assert ledger.claim(cid).status == "reviewed"


@pytest.mark.parametrize("payer", ["wang.li", "zhao.min ", "ＬＩＵ．ＹＡＮＧ"])
def test_no_one_who_signed_can_pay(ledger: LedgerApp, payer: str) -> None:
    cid = lodged(ledger)
    ledger.run(m.Review(claim=cid, reviewer="Zhao.Min", at=t("2026-04-11")))
    ledger.run(m.Approve(claim=cid, approver="Liu.Yang", at=t("2026-04-12")))
    before = ledger.recorder.max_notification_id()
    res = ledger.run(m.Pay(claim=cid, payer=payer, at=t("2026-04-25")))
    assert (res.status, res.code, res.rule) == ("rejected", "SAME_OFFICER", "R-PH-4")
    assert nothing_recorded(ledger, before)
    assert ledger.claim(cid).status == "approved"


def test_payment_records_its_payer_and_a_distinct_default(ledger: LedgerApp) -> None:
    cid = lodged(ledger)
    ledger.run(m.Review(claim=cid, reviewer="Zhao.Min", at=t("2026-04-11")))
    ledger.run(m.Approve(claim=cid, approver="Liu.Yang", at=t("2026-04-12")))
    assert ledger.run(m.Pay(claim=cid, payer="Chen.Fei", at=t("2026-04-25"))).status == "accepted"
    c = ledger.claim(cid)
    assert (c.status, c.payer) == ("paid", "Chen.Fei")
    # the scenario shorthand: three default officers and a fourth, default payer
    rid, eid = given_expense(ledger, invoice_no="HY-2", day="2026-04-03")
    res = ledger.aid(rid, [eid], t("2026-04-20"))
    c2 = ledger.claim(res.ids["claim"])
    assert (c2.handler, c2.reviewer, c2.approver, c2.payer) == (*DEFAULT_OFFICERS, DEFAULT_PAYER)
    assert len({same_identity(x) for x in (c2.handler, c2.reviewer, c2.approver, c2.payer)}) == 4


def test_the_default_payer_is_distinct_even_from_a_signer_spelled_like_it(ledger: LedgerApp) -> None:
    """SCENARIOS.md ``pay``: "a distinct default officer when omitted". A handler who happens to
    be called ``Payer-Default`` does not make the omitted payer refuse the claim."""
    _, eid = given_expense(ledger)
    rid = str(ledger.recipient_id_for(DIBAO_ID))
    cid = ledger.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler=" Payer-Default", at=t("2026-04-10"))).ids["claim"]
    ledger.run(m.Review(claim=cid, reviewer="payer-default-2", at=t("2026-04-11")))
    ledger.run(m.Approve(claim=cid, approver="Liu.Yang", at=t("2026-04-12")))
    assert ledger.run(m.Pay(claim=cid, at=t("2026-04-25"))).status == "accepted"
    c = ledger.claim(cid)
    assert c.payer == "payer-default-3"
    assert len({same_identity(x) for x in (c.handler, c.reviewer, c.approver, c.payer)}) == 4


def test_a_payment_recorded_before_payers_reads_with_no_payer(ledger: LedgerApp) -> None:
    """Claim.Paid v1 (no ``payer``) is upcast on reading: old stores keep working."""
    cid = lodged(ledger)
    ledger.run(m.Review(claim=cid, reviewer="Zhao.Min", at=t("2026-04-11")))
    ledger.run(m.Approve(claim=cid, approver="Liu.Yang", at=t("2026-04-12")))
    ledger.run(m.Pay(claim=cid, payer="Chen.Fei", at=t("2026-04-25")))
    [stored] = [s for s in ledger.recorder.select_events(ledger.claim(cid).id) if s.topic.endswith("Claim.Paid")]
    state = json.loads(ledger.mapper.transcoder.decode(ledger.mapper.compressor.decompress(stored.state) if ledger.mapper.compressor else stored.state) and stored.state)
    state.pop("payer")
    state.pop("class_version")
    old = type(stored)(stored.originator_id, stored.originator_version, stored.topic, json.dumps(state).encode())
    event = ledger.mapper.to_domain_event(old)
    assert isinstance(event, Claim.Paid) and event.payer is None


def test_write_off_approver_under_another_spelling_is_refused(ledger: LedgerApp) -> None:
    rid, eid = given_expense(ledger)
    ledger.aid(rid, [eid], t("2026-04-20"))
    ledger.run(m.SettleInsurance(expense=eid, scheme="other", amount="50.00", at=t("2026-05-02")))
    assert ledger.recipient(rid).open_balance() > 0
    before = ledger.recorder.max_notification_id()
    res = ledger.run(m.WriteOff(recipient=rid, officer="Qian.Hua", approver=" ｑｉａｎ．ｈｕａ ", at=t("2026-05-10")))
    assert (res.status, res.code, res.rule) == ("rejected", "SAME_OFFICER", "R-CLR-3")
    assert nothing_recorded(ledger, before)
    assert ledger.run(m.WriteOff(recipient=rid, officer="Qian.Hua", approver="Sun.Yu", at=t("2026-05-11"))).status == "accepted"


def test_the_auto_batch_lodges_and_waits_for_three_officers(ledger: LedgerApp) -> None:
    """R-PH-3 with R-PH-4: the batch lodges; it reviews, approves or pays nothing by itself."""
    rid, eid = given_expense(ledger, consent=True)
    res = ledger.run(m.AutoClaims(month="2026-04", handler="system", at=t("2026-05-10")))
    [cid] = res.ids["claims"]
    batch = res.ids["batch"]
    c = ledger.claim(cid)
    assert (c.status, c.channel, c.handler, c.reviewer, c.approver) == ("lodged", "auto", "system", None, None)
    assert ledger.recipient(rid).expenses[eid].decision is None
    # the service cannot sign its own batch under another spelling
    refused = ledger.run(m.SignBatch(batch=batch, role="reviewer", officer=" SYSTEM", at=t("2026-05-11")))
    assert (refused.code, refused.rule) == ("SAME_OFFICER", "R-PH-4")
    assert ledger.claim(cid).status == "lodged"
    # three distinct district officers sign the batch once each; each claim carries the signature
    assert ledger.run(m.SignBatch(batch=batch, role="reviewer", officer="Zhao.Min", at=t("2026-05-11"))).status == "accepted"
    again = ledger.run(m.SignBatch(batch=batch, role="approver", officer="zhao.min", at=t("2026-05-12")))
    assert again.code == "SAME_OFFICER"
    assert ledger.run(m.SignBatch(batch=batch, role="approver", officer="Liu.Yang", at=t("2026-05-12"))).status == "accepted"
    assert ledger.run(m.SignBatch(batch=batch, role="payer", officer="LIU.YANG", at=t("2026-05-25"))).code == "SAME_OFFICER"
    assert ledger.claim(cid).status == "approved"
    assert ledger.run(m.SignBatch(batch=batch, role="payer", officer="Chen.Fei", at=t("2026-05-25"))).status == "accepted"
    c = ledger.claim(cid)
    assert (c.status, c.reviewer, c.approver, c.payer) == ("paid", "Zhao.Min", "Liu.Yang", "Chen.Fei")
    b = ledger.batch(batch)
    assert b.signatures == {"reviewer": "Zhao.Min", "approver": "Liu.Yang", "payer": "Chen.Fei"}
    # a second signature for a role is refused: it would rewrite who signed what the first signed
    before = ledger.recorder.max_notification_id()
    resign = ledger.run(m.SignBatch(batch=batch, role="reviewer", officer="Third.Person", at=t("2026-05-26")))
    assert (resign.status, resign.code) == ("rejected", "CLAIM_CLOSED")
    assert ledger.batch(batch).signatures["reviewer"] == "Zhao.Min"


def test_a_batch_signature_that_signs_nothing_is_not_recorded(ledger: LedgerApp) -> None:
    """R-PH-4: an approver who already reviewed every claim of the batch one by one is refused on
    each claim; the batch then records no approver (who signed nothing)."""
    given_expense(ledger, consent=True)
    res = ledger.run(m.AutoClaims(month="2026-04", handler="system", at=t("2026-05-10")))
    [cid], batch = res.ids["claims"], res.ids["batch"]
    assert ledger.run(m.Review(claim=cid, reviewer="Wang.Li", at=t("2026-05-11"))).status == "accepted"
    refused = ledger.run(m.SignBatch(batch=batch, role="approver", officer=" wang.li", at=t("2026-05-12")))
    assert (refused.status, refused.code, refused.rule) == ("rejected", "SAME_OFFICER", "R-PH-4")
    assert "approver" not in ledger.batch(batch).signatures and ledger.claim(cid).status == "reviewed"
    empty = ledger.run(m.SignBatch(batch=batch, role="reviewer", officer="Zhao.Min", at=t("2026-05-12")))
    assert (empty.status, empty.code) == ("rejected", "CLAIM_CLOSED")  # nothing waits for a reviewer
    assert ledger.run(m.SignBatch(batch=batch, role="approver", officer="Liu.Yang", at=t("2026-05-13"))).status == "accepted"
