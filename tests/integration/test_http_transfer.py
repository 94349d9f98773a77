"""``POST /transfers`` on a district's service (R-CAP-4 [001; 000 第七条], ADR 0020): the handler
``ledger transfer`` runs, the target district's store opened through ``infra.districts``. The city
scheme's cap usage goes with the person, the old district refuses their new claims, a retry
records nothing twice; an unknown district, the same district and an unknown person are 422
naming the field and the rule, a move to a third district after the first is 409.

Changning and Xuhui are PostgreSQL databases of their own (Jingan, only refused, a SQLite file)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from http_helpers import STREET, api_on, id_number
from infra.cli.ops import execute
from infra.settings import Settings
from infra.wiring import build_app

CITY = "shanghai.medical_aid"
KEYS = ("LEDGER_DISTRICTS", "LEDGER_DISTRICT", "LEDGER_DATABASE_URL", "LEDGER_CITY_BASE_URL", "LEDGER_RELAY_EXCHANGE", "LEDGER_RELAY_STREAM")


@pytest.fixture
def districts(another_pg_database, monkeypatch, tmp_path):
    """The service is Changning's; Xuhui and Jingan are configured beside it."""
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LEDGER_DATA_KEY", "http-transfer-test-key")
    with another_pg_database() as changning, another_pg_database() as xuhui:
        monkeypatch.setenv("LEDGER_DISTRICTS", "changning,xuhui,jingan")
        monkeypatch.setenv("LEDGER_DISTRICT_CHANGNING_DATABASE_URL", changning)
        monkeypatch.setenv("LEDGER_DISTRICT_XUHUI_DATABASE_URL", xuhui)
        monkeypatch.setenv("LEDGER_DISTRICT_JINGAN_DATABASE_URL", f"sqlite:///{tmp_path / 'jingan.db'}")
        monkeypatch.setenv("LEDGER_DISTRICT", "changning")  # as `ledger --district changning serve` sets it
        yield changning, xuhui


def aided(api: Any, n: int) -> tuple[str, str, Decimal]:
    """A person of Changning with one expense aided there: (recipient, expense, city-scheme aid)."""
    rid = api.recipient(n)
    eid = api.expense(rid, f"MV-{n}")
    ledger = api.client.app.state.service.ledger
    code, answer = execute(ledger, "aid", {"recipient": rid, "expenses": [eid]})
    assert code == 0, answer
    city = Decimal(ledger.recipient(rid).expenses[eid].decided["by_scheme"][CITY])
    assert city > 0
    return rid, eid, city


def test_a_district_officer_moves_a_person_over_http_with_the_city_cap_usage(districts):
    _, xuhui_url = districts
    with api_on(districts[0]) as api:
        officer = api.auth("district-1", "district_officer")
        rid, _, city_aid = aided(api, 1)
        ledger = api.client.app.state.service.ledger

        moved = api.post("/transfers", officer, {"recipient": id_number(1), "to_district": "xuhui", "command_id": "move-1"})
        assert moved.status_code == 201, moved.text
        ids = moved.json()["ids"]
        assert (ids["from_district"], ids["to_district"], ids["source_recipient"]) == ("changning", "xuhui", rid)
        assert moved.headers["Location"] == f"/recipients/{ids['recipient']}"

        # the person is held in Xuhui now, their city-scheme usage carried (R-CAP-4)
        xuhui = build_app(Settings(database_url=xuhui_url))
        try:
            there = xuhui.recipient(ids["recipient"])
            assert there.transferred_in["from_district"] == "changning"
            year = next(iter(there.knowledge().carried_caps))[1]
            assert there.knowledge().carried_caps[(CITY, year, "outpatient")] == city_aid
            heads = (int(ledger.recorder.max_notification_id() or 0), int(xuhui.recorder.max_notification_id() or 0))

            # a retry under the same command_id is the same move: nothing recorded twice
            again = api.post("/transfers", officer, {"recipient": id_number(1), "to_district": "xuhui", "command_id": "move-1"})
            assert again.status_code == 201 and again.json()["ids"] == ids
            keyed = api.post("/transfers", officer, {"recipient": rid, "to_district": "xuhui"}, key="move-1b")
            assert keyed.status_code == 201 and keyed.json()["ids"]["recipient"] == ids["recipient"]
            replayed = api.post("/transfers", officer, {"recipient": rid, "to_district": "xuhui"}, key="move-1b")
            assert replayed.status_code == 201 and replayed.headers.get("Idempotent-Replayed") == "true"
            assert (int(ledger.recorder.max_notification_id() or 0), int(xuhui.recorder.max_notification_id() or 0)) == heads
        finally:
            xuhui.close()

        # Changning refuses a new claim for the person (R-CAP-4)
        late = api.expense(rid, "MV-1-late", days_ago=3)
        refused = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [late]})
        assert refused.status_code == 409, refused.text
        assert (refused.json()["code"], refused.json()["rule"]) == ("TRANSFERRED_OUT", "R-CAP-4")

        # moved already: a move to a third district conflicts
        third = api.post("/transfers", officer, {"recipient": rid, "to_district": "jingan"})
        assert third.status_code == 409, third.text
        assert (third.json()["code"], third.json()["field"]) == ("TRANSFERRED_OUT", "to_district")


def test_transfer_refusals_name_the_field_and_the_rule(districts):
    with api_on(districts[0]) as api:
        officer = api.auth("district-1", "district_officer")
        rid = api.recipient(2)
        ledger = api.client.app.state.service.ledger
        head = int(ledger.recorder.max_notification_id() or 0)
        cases = [
            ({"recipient": rid, "to_district": "pudong"}, "to_district", "ADR 0020", "not a configured district"),
            ({"recipient": rid, "to_district": "changning"}, "to_district", "R-CAP-4", "already in district changning"),
            ({"recipient": id_number(99), "to_district": "xuhui"}, "recipient", "R-CAP-4", "held in district changning"),
            ({"recipient": "00000000-0000-0000-0000-000000000000", "to_district": "xuhui"}, "recipient", "R-CAP-4", "held in district changning"),
            ({"recipient": rid, "to_district": "Xuhui"}, "to_district", "", "pattern"),
        ]
        for body, field, rule, words in cases:
            r = api.post("/transfers", officer, body)
            assert r.status_code == 422, (body, r.text)
            problem = r.json()
            assert problem["field"] == field and problem["rule"].startswith(rule) and words in problem["message"], (body, problem)
        assert int(ledger.recorder.max_notification_id() or 0) == head  # nothing recorded
        assert api.post("/transfers", api.auth("h-1", "street_handler", STREET), {"recipient": rid, "to_district": "xuhui"}).status_code == 403
