"""The monthly street report (R-PH-6 [002 3.5]) straight from a ledger store, SQLite and
PostgreSQL: no relay, no broker; its workbook holds numbers, a 合计 row, widths and filters, and
names people by name and masked id number, never by uuid."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from openpyxl import load_workbook

from clearing_story import Story, app_on, at, id_number
from infra.relay import StoreReader
from infra.reports import ReportStore, ledger_people, write_csv, write_xlsx
from infra.settings import Settings

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_the_report_catches_up_from_the_ledger_store_and_exports_for_people(settings_for: Settings, tmp_path: Path) -> None:
    story = Story(app_on(settings_for))
    for n, handle in enumerate(("R1", "R2"), start=1):
        story.person(handle, id_number(60 + n), "low_income")
        story.expense(f"E{n}", handle, at("2026-03-02"), service="2026-03-02", in_scope=f"{100 * n}.00")
        story("aid", at("2026-03-10"), claim=f"C{n}", recipient=handle, expenses=[f"E{n}"])
    store = ReportStore(f"sqlite:///{tmp_path / 'reports.db'}")
    try:
        applied = store.catch_up(story.app, page=7)  # small pages: the position carries over
        assert applied > 0
        assert store.last_position() == StoreReader(story.app).head()
        assert store.catch_up(story.app) == 0  # nothing twice
        report = store.monthly("2026-03")
        d = report.as_dict()
        assert sum(s["claims"] for s in d["streets"]) == 2 and len(d["payouts"]) == 2
        aid = [Decimal(p["amount"]) for p in d["payouts"]]
        assert all(a > 0 for a in aid)

        people = ledger_people(story.app)
        book = load_workbook(write_xlsx(report, tmp_path / "m.xlsx", people=people))
        sheet = book["发放清单"]
        header = [c.value for c in sheet[1]]
        assert header[:3] == ["街镇", "姓名", "证件号码"]
        rows = [[c.value for c in row] for row in sheet.iter_rows(min_row=2, max_row=sheet.max_row)]
        assert rows[-1][0] == "合计" and len(rows) == 3
        money = header.index("救助金额")
        assert [Decimal(str(r[money])) for r in rows[:-1]] == aid and Decimal(str(rows[-1][money])) == sum(aid)
        assert {r[1] for r in rows[:-1]} == {"person R1", "person R2"}
        for r in rows[:-1]:
            assert "*" in r[2] and r[2] not in (id_number(61), id_number(62))
        assert not any(UUID.search(str(v)) for r in rows for i, v in enumerate(r) if header[i] != "申请编号")
        assert sheet.auto_filter.ref == f"A1:{chr(ord('A') + len(header) - 1)}3"
        assert all(sheet.column_dimensions[col].width >= 8 for col in "ABC")
        summary = book["汇总表"]
        last = [c.value for c in summary[summary.max_row]]
        head = [c.value for c in summary[1]]
        assert last[0] == "合计" and Decimal(str(last[head.index("救助金额合计")])) == sum(aid)
        assert isinstance(last[head.index("申请件数")], int) and last[head.index("申请件数")] == 2

        csv_summary, csv_payouts = write_csv(report, tmp_path / "csv", people=people)
        text = csv_payouts.read_text(encoding="utf-8-sig")
        assert "person R1" in text and id_number(61) not in text
    finally:
        store.close()


def test_amended_procedure_days_move_the_months_they_cover(settings_for: Settings, tmp_path: Path) -> None:
    """R-PH-3, R-PH-6 [002 3.3, 3.5]: ``summary_due_day``, ``payment_due_day`` and
    ``auto_claim_day`` are looked up on the month's first day (docs/policy-parameters.md). May's
    summary moved to the 10th sends a claim approved on the 12th to June's report; an amendment
    that ends with May leaves June's payment on the 25th; April keeps the text's days."""
    from datetime import date

    from infra import working_days

    story = Story(app_on(settings_for))
    story.person("R1", id_number(71), "low_income")
    story.expense("E1", "R1", at("2026-05-06"), service="2026-05-06", in_scope="100.00")
    ph = "changning.post_hoc_procedure"
    for name, value, to in (("summary_due_day", 10, None), ("payment_due_day", 15, "2026-05-31"), ("auto_claim_day", 8, None)):
        line = story("set_parameter", at("2026-05-07"), name=f"{ph}.{name}", value=value, effective_from="2026-05-01",
                     **({"effective_to": to} if to else {}))
        assert line["status"] == "accepted", line
    assert story("aid", at("2026-05-12"), claim="C1", recipient="R1", expenses=["E1"])["status"] == "accepted"
    store = ReportStore(f"sqlite:///{tmp_path / 'reports.db'}")
    try:
        store.catch_up(story.app)
        moved = lambda d: working_days.next_working_day(d)[0]  # noqa: E731 - 双休日及法定节假日顺延
        april, may, june = (store.monthly(m).as_dict() for m in ("2026-04", "2026-05", "2026-06"))
        assert (april["submission_due"], april["payment_due"], april["auto_claims_due"]) == (
            moved(date(2026, 4, 20)).isoformat(), moved(date(2026, 4, 25)).isoformat(), "2026-04-15")
        assert (may["submission_due"], may["payment_due"], may["auto_claims_due"]) == (
            moved(date(2026, 5, 10)).isoformat(), moved(date(2026, 5, 15)).isoformat(), "2026-05-08")
        assert (june["submission_due"], june["payment_due"]) == (moved(date(2026, 6, 10)).isoformat(), moved(date(2026, 6, 25)).isoformat())
        assert may["period"]["to"] < "2026-05-12" <= june["period"]["to"]
        assert [p["claim_id"] for p in june["payouts"]] == [story.runner.claims["C1"]] and may["payouts"] == []
        store.reset()  # a rebuild forgets the amendments with the rest
        assert store.days_of("2026-05") == {"auto_claim_day": 15, "summary_due_day": 20, "payment_due_day": 25}
    finally:
        store.close()
