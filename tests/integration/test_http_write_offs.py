"""Repayments and write-offs over HTTP on SQLite and PostgreSQL (R-CLR-3): the repayment records the
calling officer, voucher, day and method; write-off proposals are ledger events the approver sees
with the person's name, masked id number and the amount; a refusal keeps its reason."""

from __future__ import annotations

import uuid

from http_helpers import STREET, api_on, id_number


def _owing(api) -> str:
    rid = api.recipient(41)
    eid = api.expense(rid, "WO-1", in_scope="1000.00", insurance="0.00")
    claim = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [eid]}).json()["ids"]["claim"]
    api.post(f"/claims/{claim}/review", api.auth("r-1", "reviewer"))
    api.post(f"/claims/{claim}/approve", api.auth("a-1", "approver"))
    api.post(f"/claims/{claim}/pay", api.auth("d-1", "district_officer"))
    assert api.post(f"/expenses/{eid}/insurance-settlements", api.auth("push", "system"), {"scheme": "union_mutual_aid", "amount": "400.00"}).status_code == 200
    return rid


def test_repayment_and_write_off_proposals_over_http(database_url):
    with api_on(database_url) as api:
        rid = _owing(api)
        clearing = api.auth("c-1", "clearing_officer")
        owed = api.get(f"/recipients/{rid}/clearing", clearing).json()["open_balance"]
        r = api.post(f"/recipients/{rid}/repayments", clearing, {"amount": "10.00", "voucher": "RCPT-7", "method": "bank_transfer", "received_on": "2026-05-02"})
        assert r.status_code == 200, r.text
        # the body cannot name another officer: the caller is the officer
        assert api.post(f"/recipients/{rid}/repayments", clearing, {"amount": "1.00", "officer": "someone-else"}).status_code == 422
        # a repayment names its voucher and how it was paid, and one voucher is one repayment (R-CLR-3)
        missing = api.post(f"/recipients/{rid}/repayments", clearing, {"amount": "1.00", "method": "cash"})
        assert (missing.status_code, missing.json()["field"], missing.json()["rule"]) == (422, "voucher", "R-CLR-3")
        again = api.post(f"/recipients/{rid}/repayments", clearing, {"amount": "10.00", "voucher": " ｒｃｐｔ-7", "method": "cash"})
        assert (again.status_code, again.json()["code"], again.json()["field"]) == (409, "VOUCHER_RECORDED", "voucher")
        assert api.get(f"/recipients/{rid}/clearing", clearing).json()["open_balance"] == f"{float(owed) - 10:.2f}"
        case = api.get(f"/clearing/cases/{rid}:case:1", clearing).json()
        [paid] = [h for h in case["history"] if h["kind"] == "repayment"]
        assert (paid["officer"], paid["voucher"], paid["method"], paid["received_on"]) == ("c-1", "RCPT-7", "bank_transfer", "2026-05-02")

        proposal = api.post(f"/recipients/{rid}/write-offs", clearing, {"reason": "hardship"})
        assert proposal.status_code == 201, proposal.text
        p = proposal.json()
        left = f"{float(owed) - 10:.2f}"
        assert (p["status"], p["officer"], p["reason"], p["amount"]) == ("pending", "c-1", "hardship", left)
        assert p["name"] and "*" in p["id_number"] and p["id_number"] != id_number(41)
        pid = p["id"]
        refused = api.post(f"/write-offs/{pid}/refuse", api.auth("ap-1", "approver"), {"reason": "check income first"})
        assert refused.status_code == 200, refused.text
        assert (refused.json()["status"], refused.json()["decided_by"], refused.json()["refusal"]) == ("refused", "ap-1", "check income first")
        again = api.post(f"/write-offs/{pid}/approve", api.auth("ap-2", "approver"))
        assert (again.status_code, again.json()["code"]) == (409, "PROPOSAL_CLOSED")

        second = api.post(f"/recipients/{rid}/write-offs", clearing, {"reason": "hardship, income checked"}).json()["id"]
        [pending] = api.get("/write-offs", api.auth("ap-2", "approver"), status="pending").json()
        assert (pending["id"], pending["amount"], pending["name"]) == (second, left, p["name"])
        done = api.post(f"/write-offs/{second}/approve", api.auth("ap-2", "approver"))
        assert done.status_code == 200 and done.json()["ids"]["written_off"] == left
        assert api.get(f"/recipients/{rid}/clearing", clearing).json()["open_balance"] == "0.00"
        assert {x["id"]: x["status"] for x in api.get("/write-offs", clearing).json()} == {pid: "refused", second: "approved"}
        assert api.post(f"/write-offs/{uuid.uuid4()}/approve", api.auth("ap-2", "approver")).status_code in (404, 422)
