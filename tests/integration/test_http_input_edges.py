"""Edges of the HTTP service found by attacking it, on SQLite and PostgreSQL: a lone surrogate in a
body is the command's to refuse (422 naming the field), a time past the calendar a 422, the access
log shown in +08:00, and a street office typed with spaces or full-width forms is still one street
office (R-PH-1 [002 4.1])."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from http_helpers import STREET, api_on, id_number


def test_a_lone_surrogate_in_a_body_is_refused_naming_its_field(database_url):
    with api_on(database_url) as api:
        district = api.auth("district-1", "district_officer")
        body = f'{{"id_number": "{id_number(91)}", "name": "\\ud800x", "street": "{STREET}"}}'.encode()
        r = api.client.post("/recipients", content=body, headers={**district, "Content-Type": "application/json"}).json()
        assert (r["code"], r["field"]) == ("INVALID_INPUT", "name"), r
        assert api.get("/recipients", district, q=id_number(91)).json()["items"] == []  # nothing recorded


def test_the_access_log_refuses_a_time_past_the_calendar_and_shows_plus_eight(database_url):
    with api_on(database_url) as api:
        rid = api.recipient(92)
        auditor = api.auth("aud-1", "auditor")
        assert api.get(f"/recipients/{rid}", auditor).status_code == 200
        bad = api.get("/audit/access", auditor, recipient=rid, since="0001-01-01T00:00:00+01:00")
        assert (bad.status_code, bad.json()["field"]) == (422, "since")
        entries = api.get("/audit/access", auditor, recipient=rid).json()["entries"]
        assert entries and all(e["at"].endswith("+08:00") for e in entries), entries
        assert all(datetime.fromisoformat(e["at"]).utcoffset().total_seconds() == 8 * 3600 for e in entries)


def test_a_street_typed_with_spaces_or_full_width_is_the_same_street_office(database_url):
    with api_on(database_url) as api:
        district = api.auth("district-1", "district_officer")
        r = api.post("/recipients", district, {"id_number": id_number(93), "name": "person 93", "street": f"\u3000{STREET} "})
        assert r.status_code == 201, r.text
        rid = r.json()["ids"]["recipient"]
        handler = api.auth("h-1", "street_handler", STREET)
        assert api.get(f"/recipients/{rid}", handler).status_code == 200
        spaced = api.auth("h-2", "street_handler", f" {STREET}\u3000")
        assert api.get(f"/recipients/{rid}", spaced).status_code == 200
        listed = api.get("/recipients", district, street=f" {STREET}").json()["items"]
        assert rid in {x["recipient"] for x in listed}, listed


def test_a_claim_names_expenses_by_handle_and_a_handle_names_one_expense(database_url):
    """ADR 0019: every command takes handles. A street office lodges a claim naming the receipt's
    handle as typed (another case, padded); a second expense of the same person cannot take a
    handle already given, so the claim never finds two."""
    with api_on(database_url) as api:
        rid = api.recipient(94)
        system = api.auth("push", "system")
        day = (date.today() - timedelta(days=10)).isoformat()
        body = {"visit_type": "outpatient", "facility": {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "C-94"},
                "service_date": day, "invoice_date": day, "invoice_no": "H-94-1", "total": "100.00", "in_scope": "100.00",
                "basic_insurance_paid": "0.00", "handle": "H-UNIQUE-94"}
        first = api.post(f"/recipients/{rid}/expenses", system, body)
        assert first.status_code == 201, first.text
        taken = api.post(f"/recipients/{rid}/expenses", system, {**body, "invoice_no": "H-94-2", "handle": " h-unique-94"})
        assert (taken.status_code, taken.json()["code"], taken.json()["field"]) == (422, "HANDLE_TAKEN", "handle")
        claim = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": ["h-unique-94 "]})
        assert claim.status_code == 201, claim.text
        cid = claim.json()["ids"]["claim"]
        assert api.get(f"/claims/{cid}", api.auth("aud-1", "auditor")).json()["expenses"] == [first.json()["ids"]["expense"]]


def test_a_body_that_is_not_json_and_a_parameter_refused_name_their_fields(database_url):
    with api_on(database_url) as api:
        district = api.auth("district-1", "district_officer")
        r = api.client.post("/recipients", content=b'{"id_number":"1101', headers={**district, "Content-Type": "application/json"}).json()
        assert (r["code"], r["field"], r["rule"]) == ("INVALID_INPUT", "body", "RFC 8259: a request body is one JSON object"), r
        unknown = api.post("/policy/parameters", district, {"name": "no.such.param", "value": "1", "effective_from": "2026-01-01"}).json()
        assert (unknown["code"], unknown["field"]) == ("UNKNOWN_PARAMETER", "name") and unknown["rule"], unknown
        bad = api.post("/policy/parameters", district, {"name": "shanghai.medical_aid.rate.outpatient.dibao", "value": "０.５",
                                                        "effective_from": "2026-01-01"}).json()
        assert (bad["code"], bad["field"]) == ("INVALID_VALUE", "value") and bad["rule"], bad
