"""The monthly street report subscriber's store (R-PH-6 [002 3.5], ADR 0011): which claims a month
covers, its totals per street, idempotency, order independence, and the Chinese exports.

The messages are written by hand here and the expected figures worked out by hand, so the test
does not depend on the ledger's own output."""

from __future__ import annotations

import csv
import random
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from openpyxl import load_workbook

from infra.contract import messages as pm
from infra.contract.mapping import replay_completed
from infra.reports import ReportStore, write_csv, write_xlsx
from infra.settings import Settings
from ledger.values import CST

R1, R2 = "11111111-1111-5111-8111-111111111111", "22222222-2222-5222-8222-222222222222"
C1, C2, C3, C4 = (str(uuid.UUID(int=i)) for i in (1, 2, 3, 4))
_position = iter(range(1, 10_000))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CST)


def msg(cls, recipient: str | None, when: str, **payload):
    position = next(_position)
    return cls(event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"test:{position}"), position=position, recipient_key=recipient, recorded_at=at(when), payload=payload)


def decision(expense: str, total: str, by_scheme: dict, by_fund: dict) -> dict:
    return {"expense_id": expense, "granted": True, "total": total, "self_pay": total, "by_scheme": by_scheme, "by_fund": by_fund, "category": "dibao", "code": None, "rule_ids": ["R-CAT-1"]}


def story() -> list[pm.Envelope]:
    sm, fl = "shanghai.medical_aid", "changning.four_linkage"
    return [
        msg(pm.RecipientEnrolled, R1, "2026-04-01T09:00:00", street="华阳路街道"),
        msg(pm.RecipientEnrolled, R2, "2026-04-01T09:01:00", street="江苏路街道"),
        msg(pm.ClaimLodged, R1, "2026-05-05T10:00:00", claim_id=C1, recipient_id=R1, expense_ids=[f"{R1}:1", f"{R1}:2"], channel="post_hoc", lodged_on="2026-05-05", handler="H", by_proxy=False),
        msg(pm.AidDecided, R1, "2026-05-10T10:00:00", claim_id=C1, channel="post_hoc", policy_hash=None, decisions=[
            decision(f"{R1}:1", "85.50", {sm: "54.00", fl: "31.50"}, {"city": "27.00", "district": "58.50"}),
            decision(f"{R1}:2", "100.00", {sm: "100.00"}, {"city": "50.00", "district": "50.00"}),
        ]),
        # one-stop: paid to the facility at the point of care, not on the street's list
        msg(pm.AidDecided, R1, "2026-05-12T10:00:00", claim_id=None, channel="one_stop", policy_hash=None, decisions=[decision(f"{R1}:3", "30.00", {sm: "30.00"}, {"city": "15.00", "district": "15.00"})]),
        # approved on the 20th itself (a Wednesday): still May's report
        msg(pm.AidDecided, R2, "2026-05-20T23:30:00", claim_id=C2, channel="auto", policy_hash=None, decisions=[decision(f"{R2}:1", "40.00", {sm: "40.00"}, {"city": "20.00", "district": "20.00"})]),
        # approved on the 21st: June's report
        msg(pm.AidDecided, R1, "2026-05-21T08:00:00", claim_id=C3, channel="post_hoc", policy_hash=None, decisions=[decision(f"{R1}:4", "12.00", {sm: "12.00"}, {"city": "6.00", "district": "6.00"})]),
        msg(pm.ClaimLodged, R2, "2026-05-06T10:00:00", claim_id=C4, recipient_id=R2, expense_ids=[f"{R2}:2"], channel="post_hoc", lodged_on="2026-05-06", handler="H", by_proxy=False),
        msg(pm.ClaimRejected, R2, "2026-05-06T10:00:00", claim_id=C4, recipient_id=R2, code="DEADLINE_PASSED", rule="R-PH-5", message="late", expense_id=f"{R2}:2"),
        # district payment of C1 on the 26th, 10.00 offset against a clearing case
        msg(pm.AidPaid, R1, "2026-05-26T10:00:00", claim_id=C1, channel="post_hoc", payments=[
            {"expense_id": f"{R1}:1", "total": "85.50", "by_scheme": {}, "by_fund": {}, "channel": "post_hoc"},
            {"expense_id": f"{R1}:2", "total": "100.00", "by_scheme": {}, "by_fund": {}, "channel": "post_hoc"},
        ], offsets=[{"case_id": f"{R1}:case:1", "amount": "10.00", "by_fund": {"city": "5.00", "district": "5.00"}}], to_person="175.50"),
        msg(pm.SocialHelpGranted, R2, "2026-05-27T10:00:00", amount="500.00", organisation=None, period="2024-01-01..2028-12-31"),
    ]


# Streets and lines are listed in code-point order of the street's name (华 U+534E before 江 U+6C5F).
MAY = {
    "month": "2026-05",
    "period": {"from": "2026-04-21", "to": "2026-05-20"},
    "submission_due": "2026-05-20",
    "payment_due": "2026-05-25",
    "auto_claims_due": "2026-05-15",  # R-PH-3 [002 3.3] 每月15日前 (not moved)
    "calendar": "chinese_calendar",
    "warning": None,
    "streets": [
        {"street": "华阳路街道", "claims": 1, "expenses": 2, "aid_total": "185.50", "by_scheme": {"changning.four_linkage": "31.50", "shanghai.medical_aid": "154.00"}, "by_fund": {"city": "77.00", "district": "108.50"}, "paid_claims": 1, "offsets": "10.00", "to_person": "175.50"},
        {"street": "江苏路街道", "claims": 1, "expenses": 1, "aid_total": "40.00", "by_scheme": {"shanghai.medical_aid": "40.00"}, "by_fund": {"city": "20.00", "district": "20.00"}, "paid_claims": 0, "offsets": "0.00", "to_person": "0.00"},
    ],
    "payouts": [
        {"street": "华阳路街道", "recipient_key": R1, "claim_id": C1, "channel": "post_hoc", "approved_on": "2026-05-10", "expenses": 2, "amount": "185.50", "offsets": "10.00", "to_person": "175.50", "paid_on": "2026-05-26"},
        {"street": "江苏路街道", "recipient_key": R2, "claim_id": C2, "channel": "auto", "approved_on": "2026-05-20", "expenses": 1, "amount": "40.00", "offsets": None, "to_person": None, "paid_on": None},
    ],
}


@pytest.fixture
def store(database_url):
    s = ReportStore(Settings(database_url=database_url).sqlalchemy_url())
    yield s
    s.close()


def test_the_month_covers_claims_approved_in_its_settlement_period(store):
    for m in story():
        assert store.apply(m) == "applied"
    assert store.monthly("2026-05").as_dict() == MAY
    june = store.monthly("2026-06").as_dict()
    assert [(s["street"], s["claims"], s["aid_total"]) for s in june["streets"]] == [("华阳路街道", 1, "12.00")]
    assert june["period"] == {"from": "2026-05-21", "to": "2026-06-22"}  # 20 June 2026 is a Saturday
    assert store.monthly("2026-04").as_dict()["streets"] == []


def test_a_message_received_twice_changes_nothing(store):
    messages = story()
    for m in messages:
        assert store.apply(m) == "applied"
        before = store.state()
        assert store.apply(m) == "repeat"
        assert store.apply(m.model_dump(mode="json"), ordered=False) == "repeat"  # by event id alone
        after = store.state()
        assert after["repeats"] == before["repeats"] + 2
        assert {k: after[k] for k in ("last_position", "applied")} == {k: before[k] for k in ("last_position", "applied")}
    assert store.monthly("2026-05").as_dict() == MAY
    assert sorted(store.event_ids()) == sorted(str(m.event_id) for m in messages)
    assert store.state()["applied"] == len(messages)


def test_any_arrival_order_gives_the_same_report(store):
    """Unordered transports (Kafka across partitions) rely on the inbox alone."""
    messages = story()
    for seed in range(4):
        shuffled = list(messages)
        random.Random(seed).shuffle(shuffled)
        store.reset()
        for m in shuffled + shuffled[:3]:
            store.apply(m, ordered=False)
        assert store.monthly("2026-05").as_dict() == MAY, seed
        assert store.state()["applied"] == len(messages)


def test_in_order_transports_drop_anything_at_or_below_the_last_position(store):
    messages = story()
    for m in messages[:5]:
        store.apply(m)
    assert store.apply(messages[2]) == "repeat"
    assert store.last_position() == messages[4].position
    marker = replay_completed("reports", messages[4].position + 7)
    assert store.apply(marker) == "replay_completed"
    assert store.state()["replayed_to"] == messages[4].position + 7
    assert store.last_position() == messages[4].position + 7
    # A message outside the contract (a newer schema's type) is skipped, not fatal.
    bad = messages[0].model_dump(mode="json") | {"type": "recipient.renamed", "position": 999}
    assert store.apply(bad) == "skipped"
    assert store.state()["skipped"] == 1 and store.state()["applied"] == 5


def test_csv_and_xlsx_exports_with_chinese_headers(store, tmp_path: Path):
    for m in story():
        store.apply(m)
    report = store.monthly("2026-05")
    summary_csv, payouts_csv = write_csv(report, tmp_path)
    assert summary_csv.name == "2026-05-汇总表.csv" and payouts_csv.name == "2026-05-发放清单.csv"
    with summary_csv.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    hy = next(r for r in rows if r["街镇"] == "华阳路街道")
    assert (hy["申请件数"], hy["费用笔数"], hy["救助金额合计"], hy["市级财政"], hy["区级财政"]) == ("1", "2", "185.50", "77.00", "108.50")
    assert (hy["上海市医疗救助"], hy["长宁区四医联动"], hy["清算抵扣"], hy["实发金额"]) == ("154.00", "31.50", "10.00", "175.50")
    assert (hy["上报截止日"], hy["拨付截止日"]) == ("2026-05-20", "2026-05-25")
    with payouts_csv.open(encoding="utf-8-sig", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [(r["救助对象标识"], r["申请编号"], r["申请渠道"], r["救助金额"], r["实发金额"]) for r in lines] == [
        (R1, C1, "事后申请", "185.50", "175.50"),
        (R2, C2, "免申即享", "40.00", ""),
    ]
    book = load_workbook(write_xlsx(report, tmp_path / "may.xlsx"))
    assert book.sheetnames == ["汇总表", "发放清单"]
    header = [c.value for c in book["发放清单"][1]]
    assert header[:3] == ["街镇", "救助对象标识", "申请编号"]
    payouts = book["发放清单"]
    assert payouts.max_row == 4 and payouts.auto_filter.ref == "A1:J3"
    money = header.index("救助金额")
    assert [payouts.cell(row=r, column=money + 1).value for r in (2, 3, 4)] == [185.5, 40, 225.5]  # numbers, 合计 last
    assert payouts.cell(row=4, column=1).value == "合计" and payouts.cell(row=2, column=money + 1).number_format == "#,##0.00"
    assert [c.value for c in book["汇总表"][1]][:5] == ["街镇", "月份", "申请件数", "费用笔数", "救助金额合计"]
    assert "仅按双休日" not in summary_csv.read_text(encoding="utf-8-sig")

    # A month past the calendar's years carries its warning into the exports (ADR 0012).
    store.apply(msg(pm.RecipientEnrolled, R1, "2027-02-01T09:00:00", street="华阳路街道"))
    store.apply(msg(pm.AidDecided, R1, "2027-03-02T10:00:00", claim_id=C1, channel="post_hoc", policy_hash=None, decisions=[decision(f"{R1}:1", "10.00", {"shanghai.medical_aid": "10.00"}, {"city": "5.00", "district": "5.00"})]))
    report = store.monthly("2027-03")
    assert report.as_dict()["calendar"] == "weekends_only" and report.warning
    summary_csv, _ = write_csv(report, tmp_path / "2027")
    text = summary_csv.read_text(encoding="utf-8-sig")
    assert "仅按双休日" in text and report.warning in text
