"""What the console reads without an API endpoint (ADR 0018): finding people, the timeline with
retroactive facts marked, the category periods, cap usage, and the district's figures, checked on
an in-memory ledger against the ledger's own answers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from clearing_story import Story, app_on
from console_story import HUAYANG, ID_LI, ID_WANG, TIANSHAN, tell

from infra.http import console_data as data
from infra.http import views
from infra.relay import StoreReader
from infra.reports import ReportStore
from ledger import errors

D = Decimal


@pytest.fixture(scope="module")
def story() -> Story:
    return tell(Story(app_on(None)))


def test_search_by_id_number_name_and_street(story):
    app = story.app
    r1, r2 = str(story.recipient("R1").id), str(story.recipient("R2").id)
    by, found = data.search(app, ID_WANG)
    assert by == "id_number" and [p.recipient for p in found] == [r1]
    assert found[0].masked_id == ID_WANG[:6] + "********" + ID_WANG[-4:]
    assert data.search(app, "李建", "name")[1][0].recipient == r2
    assert [p.recipient for p in data.search(app, "街道", "street")[1]] == [r1, r2]
    by, found = data.search(app, TIANSHAN)  # a street typed in the box is found as a street
    assert by == "street" and [p.recipient for p in found] == [r2]
    # a street handler sees their own street only (R-PH-1)
    assert data.search(app, ID_LI, street=HUAYANG)[1] == []
    assert data.search(app, "街道", "street", street=HUAYANG)[1][0].recipient == r1
    with pytest.raises(errors.InvalidInput):
        data.search(app, ID_WANG[:-1] + ("0" if ID_WANG[-1] != "0" else "1"), "id_number")


def test_search_by_id_number_goes_through_the_keyed_hash(story):
    app = story.app
    assert app.id_number_digest is not None  # installed by the wiring (ADR 0015)
    assert app.recipient_id_for(ID_WANG) == story.recipient("R1").id
    assert app.recipient_id_for(ID_WANG) != app.recipient(story.recipient("R1").id).id_for(ID_WANG)


def test_timeline_is_in_recorded_order_and_marks_retroactive_facts(story):
    r2 = story.recipient("R2")
    entries = data.timeline(story.app, r2)
    assert [e.recorded_at for e in entries] == sorted(e.recorded_at for e in entries)
    revoked = next(e for e in entries if e.kind == "CategoryRevoked")
    assert (revoked.effective, revoked.recorded[:10], revoked.retroactive) == ("2026-01-01", "2026-03-05", True)
    kinds = [e.kind for e in entries]
    # the claim's signatures come before the decision and the payment they lead to
    assert kinds.index("Lodged") < kinds.index("ClaimAttached") < kinds.index("Reviewed") < kinds.index("Approved") < kinds.index("AidDecided") < kinds.index("Paid") < kinds.index("AidPaid")
    assert next(e for e in entries if e.kind == "ClearingCaseOpened").amount == "190.00"
    r1_entries = data.timeline(story.app, story.recipient("R1"))
    late = next(e for e in r1_entries if e.kind == "InsuranceSettled")
    assert late.late_insurance and late.amount == "2000.00" and "R-INS-4" in late.rules
    enrolled = next(e for e in r1_entries if e.kind == "Enrolled")
    assert not enrolled.retroactive and enrolled.effective is None


def test_category_rows_show_what_a_later_revocation_took_back(story):
    rows, start, end = data.category_rows(story.recipient("R2"), date(2026, 6, 1))
    (row,) = rows
    assert row.key == "low_income"
    assert [(s.kind, s.start, s.end) for s in row.spans] == [("held", date(2025, 6, 1), date(2025, 12, 31)), ("revoked", date(2026, 1, 1), None)]
    assert (start, end) == (date(2025, 1, 1), date(2026, 12, 31))


def test_cap_series_adds_up_to_the_ledgers_caps(story):
    r1 = story.recipient("R1")
    caps = views.caps(story.app, r1)["annual"]
    series = data.cap_series(r1, caps)
    inpatient = next(s for s in series if s.kind == "inpatient")
    # R-CAP-2: what counts is the aid due now, after the late 居保大病 lowered it
    assert inpatient.cumulative == D("5400.00") == inpatient.granted and inpatient.cap == D("80000.00")
    assert [p.on for p in inpatient.points] == [date(2026, 2, 2)]
    assert all(s.agrees for s in series)


def test_district_figures_and_the_monthly_report_match_the_report_subscriber(story, tmp_path):
    app = story.app
    district = data.District(app)
    try:
        assert district.catch_up() == app.recorder.max_notification_id()
        months = district.months()
        assert months == ["2026-01", "2026-02"]
        by_fund = dict(district.by_fund(months))
        paid = sum((story.recipient(h).expenses[story.expense_id(e)].paid_total for h, e in (("R1", "E1"), ("R1", "E2"), ("R2", "E3"))), D(0))
        assert sum((sum(v) for v in by_fund.values()), D(0)) == paid
        streets = dict(district.by_street(months))
        assert set(streets) == {HUAYANG, TIANSHAN}
        books = district.fund_books()
        assert books["ok"] and books["problems"] == []
        receivable = sum((D(r["balance"]) for r in books["rows"] if r["account"] == "receivable"), D(0))
        assert receivable == D("1990.00")  # 1,800.00 late insurance + 190.00 category revoked
        # the same report as the subscriber builds from the public messages
        store = ReportStore(f"sqlite:///{tmp_path / 'reports.db'}")
        try:
            for message in StoreReader(app).read(0, 100000).messages:
                store.apply(message)
            for month in ("2026-01", "2026-02", "2026-03"):
                assert district.report(month).as_dict() == store.monthly(month).as_dict()
            report = district.report("2026-01").as_dict()
            assert report["submission_due"] == "2026-01-20" and report["payment_due"] == "2026-01-26"  # the 25th is a Sunday
            assert {s["street"] for s in report["streets"]} == {HUAYANG}
            # approved on the 25th, after January's cut-off: R2's claim is on February's report (R-PH-6)
            assert {s["street"] for s in district.report("2026-02").as_dict()["streets"]} == {HUAYANG, TIANSHAN}
        finally:
            store.close()
    finally:
        district.close()
