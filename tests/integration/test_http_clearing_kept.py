"""GET /clearing/cases keeps what it rendered while the case rows stay as they were (issue 16's
mixed load; ADR 0023): the whole answer under the view's stamp (where the rows last changed), each
row under the row as stored. Through a whole recovery lifecycle (R-CLR-2, R-CLR-3 [000 第七条]: a
case opened by a late 居保大病 settlement, an offset, a repayment, a write-off) every answer is the
one rendered afresh from the read model; an unchanged view is answered without reading its rows,
and a change renders only the rows that changed. SQLite and PostgreSQL."""

from __future__ import annotations

from clearing_story import HOSPITAL_3, Story, app_on, at, id_number
from fastapi.testclient import TestClient

from infra.http import create_app, views
from infra.http.auth import issue
from infra.settings import Settings
from projections import clearing

SECRET = "clearing-kept-secret"
MARKED = {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


def test_clearing_cases_are_kept_while_unchanged_and_follow_every_change(database_url: str, monkeypatch) -> None:
    settings = Settings(database_url=database_url, token_secret=SECRET)
    ledger = app_on(settings)
    story = Story(ledger)
    for n, who in enumerate(("R1", "R2"), start=1):
        story.person(who, id_number(20 + n), "low_income")
        story.expense(f"E{n}", who, at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01", in_scope="90000.00", **MARKED)
        story.expense(f"F{n}", who, at("2026-03-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-03-01", in_scope="20000.00", **MARKED)
        story("aid", at("2026-03-10"), claim=f"C{n}", recipient=who, expenses=[f"E{n}"])
        story("aid", at("2026-03-20"), claim=f"D{n}", recipient=who, expenses=[f"F{n}"])
    reads: list[str | None] = []
    rendered: list[str] = []
    real_rows, real_dict = clearing.case_rows, clearing.case_dict

    def case_rows(conn, status=None):
        reads.append(status)
        return real_rows(conn, status)

    def case_dict(r):
        rendered.append(r.case_id)
        return real_dict(r)

    monkeypatch.setattr(clearing, "case_rows", case_rows)
    monkeypatch.setattr(clearing, "case_dict", case_dict)
    auditor = {"Authorization": "Bearer " + issue(SECRET, "aud-1", "auditor", None)}
    try:
        with TestClient(create_app(settings, ledger=ledger)) as client:
            service = client.app.state.service

            def answer(status: str | None = None) -> list[dict]:
                reads.clear()
                rendered.clear()
                got = client.get("/clearing/cases", headers=auditor, params={"status": status} if status else {})
                assert got.status_code == 200, got.text
                by_service = list(reads), list(rendered)
                engine, _ = service.read_model("clearing_cases")
                fresh = views.clearing_cases(engine, ledger, status)  # rendered afresh, nothing kept
                assert got.json() == fresh
                reads[:], rendered[:] = by_service
                return fresh

            assert answer() == [] and reads == [None]  # no case yet (and no stamp yet: read every time)
            story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")
            story("settle_insurance", at("2026-04-03"), expense="E2", scheme="critical_illness", amount="40000.00")
            cases = answer()
            assert [(c["recipient"], c["status"]) for c in cases] == [(str(story.runner.recipients["R1"]), "open"),
                                                                       (str(story.runner.recipients["R2"]), "open")]
            assert len(rendered) == 2
            one, two = (c["case"] for c in cases)
            # nothing changed: the kept answer, rows not even read; other writes do not change it
            story.expense("G1", "R1", at("2026-04-05"), visit="inpatient", facility=HOSPITAL_3, service="2026-04-04", in_scope="100.00")
            assert answer() == cases and reads == [] and rendered == []
            # R1's supplementary payout offsets its case (R-CLR-3): only that row is rendered again
            story("pay_supplementary", at("2026-04-25"), recipient="R1")
            after = answer()
            assert reads == [None] and rendered == [one]
            assert after[0]["balance"] != cases[0]["balance"] and after[1] == cases[1]
            story("repay", at("2026-05-02"), recipient="R2", amount="1000.00")
            after = answer()
            assert rendered == [two] and after[1]["recovered"] == "1000.00"
            # a filter is an answer of its own
            assert [c["case"] for c in answer("open")] == [one, two]
            story("write_off", at("2026-05-04"), recipient="R1", officer="CLR-1", approver="APR-1")
            after = answer()
            assert after[0]["status"] == "written_off" and rendered == [one]
            assert [c["case"] for c in answer("open")] == [two]
            assert answer("written_off")[0]["case"] == one
            # every read that listed R1 is in the access log as R1's, kept answer or not (ADR 0014):
            # all seven since the settlement but the last "open" list, which R1 has left
            logged = [a for a in service.store.accesses(str(story.runner.recipients["R1"]), include_population=False)
                      if a["operation"] == "clearing_cases"]
            assert len(logged) == 7
            last = answer()
        # a new worker on the same store warms the built views before its first request: that
        # request is answered from what the warm-up kept, without reading the rows again
        with TestClient(create_app(settings, ledger=ledger)) as again:
            assert "clearing_cases" in again.app.state.service._read_models_ready
            reads.clear()
            got = again.get("/clearing/cases", headers=auditor)
            assert got.status_code == 200 and got.json() == last and reads == []
    finally:
        ledger.close()
