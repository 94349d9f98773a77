"""The core flows over HTTP on a fresh store (SQLite and PostgreSQL): three signatures (R-PH-4),
idempotent retries, clearing and the two-officer write-off (R-CLR-3), the access log."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import delete

from http_helpers import STREET, api_on, id_number
from infra.http.store import idempotency

# RULES §4/§5 for a dibao recipient at a district community health centre, outpatient:
# city aid 60% of self-pay, 四医联动 total coverage 95% (R-4L-2), the district tops up the rest (R-4L-3).
CITY_RATE, COVERAGE = Decimal("0.60"), Decimal("0.95")


def _fen(x: Decimal) -> str:
    return str(x.quantize(Decimal("0.01")))


def test_three_distinct_officers_sign_every_settlement(database_url):
    with api_on(database_url) as api:
        rid = api.recipient(11)
        eid = api.expense(rid, "S-1", in_scope="120.00", insurance="30.00")
        handler = api.auth("li.handler", "street_handler", STREET)
        lodged = api.post(f"/recipients/{rid}/claims", handler, {"expenses": [eid]})
        assert lodged.status_code == 201, lodged.text
        claim = lodged.json()["ids"]["claim"]

        # approve or pay before the reviewer signs: refused, coded
        early = api.post(f"/claims/{claim}/approve", api.auth("wang.approver", "approver"))
        assert early.status_code == 409 and early.json()["code"] == "NOT_REVIEWED"
        assert api.post(f"/claims/{claim}/pay", api.auth("d-1", "district_officer")).json()["code"] == "NOT_APPROVED"

        # the handler holding a reviewer token is still the handler: SAME_OFFICER (R-PH-4)
        same = api.post(f"/claims/{claim}/review", api.auth("li.handler", "reviewer"))
        assert same.status_code == 409
        assert same.json() | {"message": ""} == {"status": "rejected", "code": "SAME_OFFICER", "rule": "R-PH-4", "message": "", "field": "reviewer", "ids": {}}
        assert api.post(f"/claims/{claim}/review", api.auth("zhao.reviewer", "reviewer")).status_code == 200

        for officer in ("li.handler", "zhao.reviewer"):
            r = api.post(f"/claims/{claim}/approve", api.auth(officer, "approver"))
            assert (r.status_code, r.json()["code"], r.json()["rule"]) == (409, "SAME_OFFICER", "R-PH-4")
        approved = api.post(f"/claims/{claim}/approve", api.auth("wang.approver", "approver"))
        assert approved.status_code == 200, approved.text
        paid = api.post(f"/claims/{claim}/pay", api.auth("d-1", "district_officer"))
        assert paid.status_code == 200, paid.text

        auditor = api.auth("aud-1", "auditor")
        status = api.get(f"/claims/{claim}", auditor).json()
        assert (status["status"], status["handler"], status["reviewer"], status["approver"]) == ("paid", "li.handler", "zhao.reviewer", "wang.approver")
        self_pay = Decimal("120.00") - Decimal("30.00")
        [e] = api.get(f"/recipients/{rid}", auditor).json()["expenses"]
        assert e["self_pay"] == _fen(self_pay)
        assert e["paid"]["total"] == _fen(self_pay * COVERAGE) == e["due"]["total"]
        assert e["paid"]["by_scheme"]["shanghai.medical_aid"] == _fen(self_pay * CITY_RATE)
        assert e["channel"] == "post_hoc" and e["claim"] == claim

        # the same receipt cannot be claimed again (R-PH-7): a coded 409
        again = api.post(f"/recipients/{rid}/claims", handler, {"expenses": [eid]})
        assert (again.status_code, again.json()["code"], again.json()["rule"]) == (409, "DUPLICATE", "R-PH-7")
        assert again.json()["ids"]["claim"]  # the rejected claim is itself recorded


def test_retried_writes_return_the_first_response(database_url):
    with api_on(database_url) as api:
        district = api.auth("d-1", "district_officer")
        body = {"id_number": id_number(41), "name": "张三", "street": STREET}
        first = api.post("/recipients", district, body, key="enrol-1")
        again = api.post("/recipients", district, body, key="enrol-1")
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"] == f"/recipients/{first.json()['ids']['recipient']}"
        # without a key, enrolling the same person twice conflicts with the enrolment recorded (ADR 0019)
        dup = api.post("/recipients", district, body)
        assert (dup.status_code, dup.json()["code"]) == (409, "ALREADY_ENROLLED")
        # the same key for a different request is refused, and changes nothing
        other = api.post("/recipients", district, {**body, "name": "李四"}, key="enrol-1")
        assert (other.status_code, other.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
        # keys are per officer: another officer's "enrol-1" is their own
        assert api.post("/recipients", api.auth("d-2", "district_officer"), {**body, "id_number": id_number(42)}, key="enrol-1").status_code == 201

        rid = first.json()["ids"]["recipient"]
        api.post(f"/recipients/{rid}/categories", district, {"category": "dibao", "from": "2020-01-01"})
        api.post(f"/recipients/{rid}/insurance", district, {"scheme": "resident", "from": "2019-01-01"})
        eid = api.expense(rid, "I-1")
        handler = api.auth("h-1", "street_handler", STREET)
        lodged = api.post(f"/recipients/{rid}/claims", handler, {"expenses": [eid]}, key="claim-1")
        assert lodged.status_code == 201

        # a rejection is replayed as it was, status code included, even after the state moved on
        refused = api.post(f"/claims/{lodged.json()['ids']['claim']}/review", api.auth("h-1", "reviewer"), key="rv-1")
        assert refused.json()["code"] == "SAME_OFFICER"
        assert api.post(f"/claims/{lodged.json()['ids']['claim']}/review", api.auth("r-1", "reviewer")).status_code == 200
        replay = api.post(f"/claims/{lodged.json()['ids']['claim']}/review", api.auth("h-1", "reviewer"), key="rv-1")
        assert (replay.status_code, replay.json()) == (409, refused.json())

        # the key is the command's command_id: with the HTTP record gone, the ledger still
        # recognises the retry and returns the same claim instead of lodging a second one
        with api.client.app.state.service.store.engine.begin() as conn:
            conn.execute(delete(idempotency))
        retried = api.post(f"/recipients/{rid}/claims", handler, {"expenses": [eid]}, key="claim-1")
        assert (retried.status_code, retried.json()) == (201, lodged.json())
        assert "idempotent-replayed" not in retried.headers
        statement = api.get(f"/recipients/{rid}", api.auth("aud-1", "auditor")).json()
        assert [e["claim"] for e in statement["expenses"]] == [lodged.json()["ids"]["claim"]]


def test_clearing_repayment_and_a_write_off_needing_a_second_officer(database_url):
    with api_on(database_url) as api:
        rid = api.recipient(21)
        eid = api.expense(rid, "W-1", in_scope="1000.00", insurance="0.00")
        claim = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [eid]}).json()["ids"]["claim"]
        api.post(f"/claims/{claim}/review", api.auth("r-1", "reviewer"))
        api.post(f"/claims/{claim}/approve", api.auth("a-1", "approver"))
        assert api.post(f"/claims/{claim}/pay", api.auth("d-1", "district_officer")).status_code == 200
        clearing = api.auth("c-1", "clearing_officer")
        assert api.post(f"/recipients/{rid}/write-offs", clearing, {}).json()["code"] == "NOTHING_OWED"

        # insurance pays 400.00 after the aid (R-INS-4): the aid on those 400.00 is now an overpayment
        assert api.post(f"/expenses/{eid}/insurance-settlements", api.auth("push", "system"), {"scheme": "union_mutual_aid", "amount": "400.00"}).status_code == 200
        cases = api.get(f"/recipients/{rid}/clearing", clearing).json()
        [case] = cases["clearing_cases"]
        assert case["trigger"] == "late_insurance" and case["status"] == "open"
        assert Decimal(case["amount"]) == Decimal("400.00") * COVERAGE

        assert api.post(f"/recipients/{rid}/repayments", clearing, {"amount": "100.00", "voucher": "RCPT-100", "method": "cash"}).status_code == 200
        owed = Decimal(case["amount"]) - Decimal("100.00")
        assert api.get(f"/recipients/{rid}/clearing", clearing).json()["open_balance"] == _fen(owed)

        proposal = api.post(f"/recipients/{rid}/write-offs", clearing, {"reason": "hardship"})
        assert proposal.status_code == 201 and proposal.json()["status"] == "pending"
        pid = proposal.json()["id"]
        # the proposing officer cannot approve it, whatever token they hold (R-CLR-3)
        same = api.post(f"/write-offs/{pid}/approve", api.auth("c-1", "approver"))
        assert (same.status_code, same.json()["code"], same.json()["rule"]) == (409, "SAME_OFFICER", "R-CLR-3")
        assert api.get("/write-offs", clearing, status="pending").json()[0]["id"] == pid
        done = api.post(f"/write-offs/{pid}/approve", api.auth("d-9", "district_officer"))
        assert done.status_code == 200, done.text
        after = api.get(f"/recipients/{rid}/clearing", clearing).json()
        assert after["open_balance"] == "0.00" and after["clearing_cases"][0]["status"] == "written_off"
        assert api.post(f"/write-offs/{pid}/approve", api.auth("d-8", "district_officer")).json()["code"] == "PROPOSAL_CLOSED"
        [closed] = api.get("/write-offs", clearing).json()
        assert (closed["status"], closed["officer"], closed["decided_by"]) == ("approved", "c-1", "d-9")


def test_every_read_of_personal_data_is_in_the_access_log(database_url):
    with api_on(database_url) as api:
        rid = api.recipient(31)
        other = api.recipient(32)
        eid = api.expense(rid, "L-1")
        api.expense(rid, "L-1")  # the same receipt again: a duplicate (R-CLR-1(b))
        handler = api.auth("h-7", "street_handler", STREET)
        assert api.get(f"/recipients/{rid}", handler).status_code == 200
        assert api.get(f"/recipients/{rid}/caps", api.auth("r-7", "reviewer")).status_code == 200
        assert api.get(f"/expenses/{eid}/explain", api.auth("c-7", "clearing_officer")).status_code == 200
        assert api.get(f"/recipients/{other}", handler).status_code == 200
        assert api.get(f"/recipients/{rid}", api.auth("g-7", "regulator")).status_code == 403  # refused: no data, no entry
        dupes = api.get("/duplicates", api.auth("d-7", "district_officer"))
        assert dupes.status_code == 200 and {f["recipient"] for f in dupes.json()["findings"]} == {rid}
        assert api.get("/snapshots", api.auth("g-7", "regulator"), valid_on="2026-06-30").status_code == 200

    # a new service on the same database still knows (the log is durable)
    with api_on(database_url) as api:
        auditor = api.auth("aud-7", "auditor")
        log = api.get("/audit/access", auditor, recipient=rid).json()
        mine = [(e["officer"], e["operation"]) for e in log["entries"] if e["scope"] == "recipient"]
        assert mine == [("h-7", "recipient_statement"), ("r-7", "recipient_caps"), ("c-7", "explain_expense"), ("d-7", "duplicate_index")]
        assert [(e["officer"], e["operation"]) for e in log["entries"] if e["scope"] == "population"] == [("g-7", "snapshot")]
        only = api.get("/audit/access", auditor, recipient=rid, include_population="false").json()["entries"]
        assert all(e["recipient"] == rid for e in only) and len(only) == 4
        theirs = api.get("/audit/access", auditor, recipient=other, include_population="false").json()["entries"]
        assert [(e["officer"], e["operation"]) for e in theirs] == [("h-7", "recipient_statement")]
        assert api.get("/audit/access", api.auth("d-7", "district_officer"), recipient=rid).status_code == 403


def test_district_and_system_commands_over_http(database_url):
    with api_on(database_url) as api:
        district, system = api.auth("d-1", "district_officer"), api.auth("push", "system")
        handler = api.auth("h-1", "street_handler", STREET)
        rid = api.recipient(81)

        # one-stop at the point of care (system), then the same receipt claimed: DUPLICATE (R-PH-7)
        onestop = api.expense(rid, "OS-1")
        assert api.post(f"/expenses/{onestop}/one-stop", system).status_code == 200
        assert api.post(f"/recipients/{rid}/claims", handler, {"expenses": [onestop]}).json()["code"] == "DUPLICATE"

        # 免申即享 (R-PH-3): consent at the street office, the system's monthly batch claims the rest
        assert api.post(f"/recipients/{rid}/consent", handler, {"signed": True}).status_code == 200
        auto = api.expense(rid, "AU-1")
        month = date.today().strftime("%Y-%m")
        batch = api.post("/auto-claims", system, {"month": month})
        assert batch.status_code == 200 and len(batch.json()["ids"]["claims"]) == 1
        # R-PH-4: the batch only lodges. The service cannot review its own batch (role), nor can its
        # subject under another spelling holding a reviewer token (SAME_OFFICER).
        bid = batch.json()["ids"]["batch"]
        [cid] = batch.json()["ids"]["claims"]
        assert api.get(f"/claims/{cid}", district).json()["status"] == "lodged"
        assert api.post(f"/auto-claims/{bid}/review", system).status_code == 403
        alias = api.post(f"/auto-claims/{bid}/review", api.auth("PUSH", "reviewer"))
        assert (alias.json()["code"], alias.json()["rule"]) == ("SAME_OFFICER", "R-PH-4")
        assert api.post(f"/auto-claims/{bid}/review", api.auth("r-9", "reviewer")).status_code == 200
        assert api.post(f"/auto-claims/{bid}/approve", api.auth("R-9", "approver")).json()["code"] == "SAME_OFFICER"
        assert api.post(f"/auto-claims/{bid}/approve", api.auth("a-9", "approver")).status_code == 200
        assert api.post(f"/auto-claims/{bid}/pay", district).status_code == 200
        signed = api.get(f"/claims/{cid}", district).json()
        assert (signed["status"], signed["handler"], signed["reviewer"], signed["approver"]) == ("paid", "push", "r-9", "a-9")
        statement = api.get(f"/recipients/{rid}", district).json()
        assert {e["id"]: e["channel"] for e in statement["expenses"]} == {onestop: "one_stop", auto: "auto"}

        # district actions: a suspension that is not there, one-time social help (R-4L-5)
        lift = api.post(f"/recipients/{rid}/suspension/lift", district, {})
        assert (lift.status_code, lift.json()["code"], lift.json()["rule"]) == (409, "NOT_SUSPENDED", "R-4L-4")
        assert api.post(f"/recipients/{rid}/social-help", district, {"amount": "500.00", "organisation": "慈善基金会"}).status_code == 200
        second = api.post(f"/recipients/{rid}/social-help", district, {"amount": "100.00"})
        assert (second.status_code, second.json()["code"]) == (409, "ALREADY_GRANTED")
        assert api.post(f"/recipients/{rid}/supplementary/pay", district).json()["ids"]["paid"] == "0.00"

        # a retroactive parameter (R-CLR-1(d)): city aid only at a non-district hospital is 60% of
        # self-pay; a cap lowered below it opens a clearing case for the difference
        city_only = {"kind": "hospital", "level": 3, "district_designated": False}
        other = api.recipient(82)
        eid = api.expense(other, "H-1", in_scope="120.00", insurance="30.00", facility=city_only)
        claim = api.post(f"/recipients/{other}/claims", handler, {"expenses": [eid]}).json()["ids"]["claim"]
        api.post(f"/claims/{claim}/review", api.auth("r-1", "reviewer"))
        api.post(f"/claims/{claim}/approve", api.auth("a-1", "approver"))
        api.post(f"/claims/{claim}/pay", district)
        year = date.today().year
        unknown = api.post("/policy/parameters", district, {"name": "shanghai.medical_aid.no_such_thing", "value": "1", "effective_from": f"{year}-01-01"})
        assert unknown.status_code == 422
        lowered = api.post("/policy/parameters", district, {"name": "shanghai.medical_aid.annual_cap.outpatient.dibao", "value": "10.00", "effective_from": f"{year}-01-01"})
        assert lowered.status_code == 200, lowered.text
        [case] = api.get(f"/recipients/{other}/clearing", district).json()["clearing_cases"]
        assert case["trigger"] == "parameter_change"
        assert Decimal(case["amount"]) == (Decimal("90.00") * CITY_RATE - Decimal("10.00"))
