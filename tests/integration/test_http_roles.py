"""Role matrix over HTTP: every role × every endpoint is either allowed or refused 403.

The expected matrix below is the specification (ADR 0013), written out here independently of
``infra.http.app.PERMISSIONS``; the endpoints are taken from the served OpenAPI document, so an
endpoint added without a row here fails the test.
"""

from __future__ import annotations

import uuid

from http_helpers import OTHER_STREET, STREET, Api, api_on, id_number

ROLES = ["street_handler", "reviewer", "approver", "district_officer", "clearing_officer", "auditor", "regulator", "system"]
PERSONAL_READERS = {"street_handler", "reviewer", "approver", "district_officer", "clearing_officer", "auditor"}

EXPECTED: dict[str, set[str]] = {
    # writes
    "enrol": {"street_handler", "district_officer"},
    "grant_category": {"district_officer"},
    "revoke_category": {"district_officer"},
    "insure": {"district_officer", "system"},
    "end_insurance": {"district_officer", "system"},
    "join_mutual_aid": {"district_officer"},
    "consent_auto_claim": {"street_handler", "district_officer"},
    "record_expense": {"street_handler", "system"},
    "settle_insurance": {"system"},
    "one_stop": {"system"},
    "lodge_claim": {"street_handler", "district_officer"},
    "review_claim": {"reviewer"},
    "approve_claim": {"approver"},
    "pay_claim": {"district_officer"},
    "auto_claims": {"system", "district_officer"},
    # R-PH-4: a 免申即享 batch is signed once per role by officers, never by the service
    "review_batch": {"reviewer"},
    "approve_batch": {"approver"},
    "pay_batch": {"district_officer"},
    "set_parameter": {"district_officer"},
    "lift_suspension": {"district_officer"},
    "social_help": {"district_officer"},
    "pay_supplementary": {"district_officer"},
    "repay": {"clearing_officer"},
    "propose_write_off": {"clearing_officer"},
    "approve_write_off": {"approver", "district_officer"},
    "refuse_write_off": {"approver", "district_officer"},
    "run_clearing": {"clearing_officer", "district_officer"},
    "transfer": {"district_officer"},  # a person moves district (R-CAP-4, ADR 0020)
    # a month's settlement file (docs/import.md); a street handler's rows: their own street only
    "import_expenses": {"street_handler", "system", "district_officer"},
    # reads
    "recipient_statement": PERSONAL_READERS,
    "recipient_caps": PERSONAL_READERS,
    "recipient_clearing": PERSONAL_READERS,
    "claim_status": PERSONAL_READERS,
    "explain_expense": PERSONAL_READERS,
    "replay_expense": PERSONAL_READERS,
    "clearing_cases": {"approver", "district_officer", "clearing_officer", "auditor"},
    "clearing_case": {"approver", "district_officer", "clearing_officer", "auditor"},
    "write_off_proposals": {"approver", "district_officer", "clearing_officer", "auditor"},
    "duplicate_index": {"reviewer", "approver", "district_officer", "clearing_officer", "auditor"},
    "snapshot": {"regulator", "auditor", "district_officer"},
    "projections_status": {"district_officer", "clearing_officer", "auditor", "system"},
    "access_log": {"auditor"},
    "whoami": set(ROLES),
    # finding (ADR 0019): a street handler lists their own street only
    "list_recipients": PERSONAL_READERS,
    "list_expenses": PERSONAL_READERS,
    "list_claims": PERSONAL_READERS,
    "list_payments": PERSONAL_READERS,
}
PUBLIC = {"health", "ready"}
_READS = {"recipient_statement", "recipient_caps", "recipient_clearing", "claim_status", "explain_expense", "replay_expense",
          "clearing_cases", "clearing_case", "write_off_proposals", "duplicate_index", "snapshot", "projections_status",
          "access_log", "whoami", "list_recipients", "list_expenses", "list_claims", "list_payments"}
QUERY = {"snapshot": {"valid_on": "2026-06-30", "format": "csv"}, "access_log": {}}


def _operations(api: Api) -> dict[str, tuple[str, str]]:
    doc = api.client.get("/openapi.json").json()
    return {o["operationId"]: (method.upper(), path) for path, item in doc["paths"].items() for method, o in item.items()}


def _setup(api: Api) -> dict[str, str]:
    rid = api.recipient(1, STREET)
    eid = api.expense(rid, "M-1")
    r = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [eid]})
    assert r.status_code == 201, r.text
    return {"recipient_id": rid, "expense_id": eid, "claim_id": r.json()["ids"]["claim"], "proposal_id": str(uuid.uuid4()),
            "case_id": f"{rid}:case:1", "batch_id": str(uuid.uuid4())}


def _call(api: Api, method: str, path: str, ids: dict[str, str], headers: dict[str, str], op: str):
    url = path.format(**{k: v for k, v in ids.items() if "{" + k + "}" in path})
    params = dict(QUERY.get(op, {}))
    if op == "access_log":
        params["recipient"] = ids["recipient_id"]
    if method == "GET":
        return api.client.get(url, headers=headers, params=params)
    return api.client.post(url, headers=headers, json={}, params=params)


def test_every_role_on_every_endpoint_is_allowed_or_403(database_url):
    with api_on(database_url) as api:
        ops = _operations(api)
        assert set(ops) - PUBLIC == set(EXPECTED), "every endpoint needs a row in the role matrix"
        assert {op for op, (method, _) in ops.items() if method == "GET"} - PUBLIC == _READS
        ids = _setup(api)
        wrong = []
        for op, (method, path) in sorted(ops.items()):
            if op in PUBLIC:
                continue
            for role in ROLES:
                who = api.auth(f"{role}-m", role, STREET if role == "street_handler" else None)
                r = _call(api, method, path, ids, who, op)
                allowed = role in EXPECTED[op]
                if allowed and r.status_code in (401, 403):
                    wrong.append(f"{role} {op}: expected allowed, got {r.status_code} {r.text[:120]}")
                if not allowed and (r.status_code != 403 or r.json()["code"] != "FORBIDDEN"):
                    wrong.append(f"{role} {op}: expected 403 FORBIDDEN, got {r.status_code} {r.text[:120]}")
                assert r.status_code < 500, f"{role} {op}: {r.status_code} {r.text}"
        assert not wrong, "\n".join(wrong)


def test_no_token_or_a_bad_token_is_401_on_every_endpoint(database_url):
    with api_on(database_url) as api:
        ops = _operations(api)
        ids = {"recipient_id": str(uuid.uuid4()), "expense_id": f"{uuid.uuid4()}:1", "claim_id": str(uuid.uuid4()), "proposal_id": str(uuid.uuid4()),
               "case_id": f"{uuid.uuid4()}:case:1", "batch_id": str(uuid.uuid4())}
        good = api.auth("a-1", "auditor")["Authorization"]
        forged = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
        for op, (method, path) in ops.items():
            if op in PUBLIC:
                assert _call(api, method, path, ids, {}, op).status_code == 200
                continue
            for headers in ({}, {"Authorization": forged}, {"Authorization": "Basic dXNlcjpwYXNz"}):
                r = _call(api, method, path, ids, headers, op)
                assert r.status_code == 401, (op, headers, r.text)
                assert r.json()["code"] == "UNAUTHENTICATED"
                assert r.headers["www-authenticate"] == "Bearer"


def test_the_matrix_says_what_the_brief_says():
    """Auditor reads everything and writes nothing; the regulator reads snapshots only; the
    system pushes settlements and lodges the 免申即享 batch, which officers sign (R-PH-4); each signature has its own role."""
    writes = {op for op in EXPECTED if op not in _READS}
    assert {op for op, roles in EXPECTED.items() if "auditor" in roles} == _READS
    assert {op for op, roles in EXPECTED.items() if "regulator" in roles} == {"snapshot", "whoami"}
    assert {op for op in writes if "system" in EXPECTED[op]} == {"record_expense", "settle_insurance", "one_stop", "auto_claims", "insure", "end_insurance",
                                                                   "import_expenses"}
    assert {op for op in writes if "reviewer" in EXPECTED[op]} == {"review_claim", "review_batch"}
    assert {op for op in writes if "approver" in EXPECTED[op]} == {"approve_claim", "approve_batch", "approve_write_off", "refuse_write_off"}
    assert {op for op in writes if "street_handler" in EXPECTED[op]} == {"enrol", "consent_auto_claim", "record_expense", "lodge_claim",
                                                                           "import_expenses"}
    assert {"lift_suspension", "social_help", "set_parameter"} <= {op for op in writes if EXPECTED[op] == {"district_officer"}}


def test_a_street_handler_is_refused_on_another_streets_recipient(database_url):
    with api_on(database_url) as api:
        theirs = api.recipient(2, OTHER_STREET)
        eid = api.expense(theirs, "T-1")
        other_handler = api.auth("h-ts", "street_handler", OTHER_STREET)
        claim = api.post(f"/recipients/{theirs}/claims", other_handler, {"expenses": [eid]}).json()["ids"]["claim"]
        me = api.auth("h-hy", "street_handler", STREET)
        day = "2026-01-05"
        attempts = [
            ("POST", f"/recipients/{theirs}/claims", {"expenses": [eid]}),
            ("POST", f"/recipients/{theirs}/expenses", {"visit_type": "outpatient", "facility": {"kind": "hospital", "level": 2},
                                                         "service_date": day, "invoice_date": day, "invoice_no": "Z",
                                                         "total": "10.00", "in_scope": "10.00", "basic_insurance_paid": "0.00"}),
            ("POST", f"/recipients/{theirs}/consent", {"signed": True}),
            ("POST", "/recipients", {"id_number": id_number(99), "name": "x", "street": OTHER_STREET}),
            ("GET", f"/recipients/{theirs}", None),
            ("GET", f"/recipients/{theirs}/caps", None),
            ("GET", f"/recipients/{theirs}/clearing", None),
            ("GET", f"/claims/{claim}", None),
            ("GET", f"/expenses/{eid}/explain", None),
            ("GET", f"/expenses/{eid}/replay", None),
        ]
        for method, path, body in attempts:
            r = api.client.request(method, path, headers=me, json=body)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["code"] in ("OTHER_STREET",) and r.json()["rule"] == "R-PH-1", r.text
        # nothing was recorded for the refused writes, and the refused reads left no trace
        auditor = api.auth("aud-1", "auditor")
        statement = api.get(f"/recipients/{theirs}", auditor).json()
        assert len(statement["expenses"]) == 1 and statement["consent"] is False
        assert api.get(f"/claims/{claim}", auditor).json()["status"] == "lodged"
        log = api.get("/audit/access", auditor, recipient=theirs).json()["entries"]
        assert {e["officer"] for e in log if e["scope"] == "recipient"} == {"aud-1"}
        # the same handler on their own street's recipient is served
        mine = api.recipient(3, STREET)
        assert api.get(f"/recipients/{mine}", me).status_code == 200
