"""Operating the HTTP service (infra/http/operations.py): ``/metrics`` in the Prometheus format,
``/ready`` failing while a read model is stalled, one JSON log line per request with
``LEDGER_LOG_FORMAT=json`` (never the text searched), the API documents with their assets served
here (no CDN), the favicon, and the clearing workbench's settled cases."""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime
from decimal import Decimal
from html import unescape

from clearing_story import Story, app_on
from console_story import ID_WANG, tell
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from commands import models as m
from infra import integrity
from infra.http import create_app, operations
from infra.http.auth import issue
from infra.http.console import COOKIE
from infra.relay import Tracking
from infra.settings import Settings
from ledger.values import CST
from projections.runner import Failure, Status

SECRET = "operations-test-secret"


def _client(database_url: str):
    settings = Settings(database_url=database_url, token_secret=SECRET)
    ledger = app_on(settings)
    story = tell(Story(ledger))
    return settings, ledger, story, TestClient(create_app(settings, ledger=ledger))


def _bearer(role: str = "auditor", officer: str = "ops-officer") -> dict[str, str]:
    return {"Authorization": "Bearer " + issue(SECRET, officer, role)}


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_metrics_in_the_prometheus_format(database_url):
    settings, ledger, story, client = _client(database_url)
    try:
        with client:
            unknown = uuid.uuid4()
            assert client.get("/me", headers=_bearer()).status_code == 200
            assert client.get(f"/claims/{unknown}", headers=_bearer()).status_code == 404
            assert client.get("/me").status_code == 401
            head = int(ledger.recorder.max_notification_id())
            Tracking(settings.sqlalchemy_url()).save("ops-relay", head - 3, 10)  # a relay three events behind
            integrity.chain_for(ledger).seal_head()
            r = client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert str(unknown) not in r.text  # a path's id never becomes a label
            s = _samples(r.text)
            counts = {(x.labels["route"], x.labels["method"], x.labels["status"]): x.value for x in s["ledger_http_request_duration_seconds_count"]}
            assert counts[("/me", "GET", "200")] == 1 and counts[("/me", "GET", "401")] == 1
            assert counts[("/claims/{claim_id}", "GET", "404")] == 1
            assert any(x.labels["le"] == "0.1" for x in s["ledger_http_request_duration_seconds_bucket"])
            assert s["ledger_events_appended"][0].value == head
            lag = {x.labels["view"]: x.value for x in s["ledger_projection_lag_events"]}
            assert "clearing_cases" in lag and all(0 <= v <= head for v in lag.values())
            assert all(x.value == 0 for x in s["ledger_projection_stalled"])
            relay = {x.labels["relay"]: x.value for x in s["ledger_relay_lag_events"]}
            assert relay["ops-relay"] == 3
            seconds = {x.labels["relay"]: x.value for x in s["ledger_relay_lag_seconds"]}
            oldest = ledger.mapper.to_domain_event(ledger.recorder.select_notifications(head - 2, 1)[0]).timestamp
            assert abs(seconds["ops-relay"] - (datetime.now(CST) - oldest).total_seconds()) < 60
            assert 0 <= s["ledger_checkpoint_age_seconds"][0].value < 60

            # the read model caught up by a request: its lag falls to 0
            assert client.get("/clearing/cases", headers=_bearer()).status_code == 200
            after = {x.labels["view"]: x.value for x in _samples(client.get("/metrics").text)["ledger_projection_lag_events"]}
            assert after["clearing_cases"] == 0
    finally:
        ledger.close()


def test_ready_fails_while_a_read_model_is_stalled(database_url):
    _, ledger, _, client = _client(database_url)
    try:
        with client:
            assert client.get("/ready").status_code == 200
            service = client.app.state.service
            head = int(ledger.recorder.max_notification_id())
            stalled = Failure("caps", 7, "ledger.aggregates:Recipient.AidDecided", None, 1, "ValueError: x", 3,
                              "2026-01-01T00:00:00+08:00", "2026-01-01T00:00:00+08:00", "failed")
            statuses = [Status("caps", 1, 1, 6, head, None, [stalled]), Status("funds", 1, 1, head, head, None, [])]

            class Stalled:
                def status(self):  # noqa: ANN202
                    return statuses

            service.projections = lambda: Stalled()
            r = client.get("/ready")
            assert r.status_code == 503 and r.json()["status"] == "not_ready"
            assert r.json()["checks"]["projections"].startswith("stalled: caps at 7")
            statuses[0] = Status("caps", 1, 1, 7, head, None, [Failure(*[*stalled.__dict__.values()][:11], "skipped")])
            assert client.get("/ready").status_code == 200  # skipped by an operator: the view goes on
    finally:
        ledger.close()


def test_json_logs_one_object_a_line_with_no_personal_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LEDGER_LOG_FORMAT", "json")
    _, ledger, story, client = _client(f"sqlite:///{tmp_path / 'ledger.db'}")
    buffer = io.StringIO()
    try:
        with client:
            operations.configure_logging(buffer)
            assert client.get("/me", headers={**_bearer("auditor", "aud-json"), "X-Request-ID": "req-42"}).status_code == 200
            client.cookies.set(COOKIE, issue(SECRET, "dist-json", "district_officer"))
            assert client.get("/console/recipients", params={"q": ID_WANG, "by": "id_number"}).status_code == 200
            assert client.get("/console/recipients", params={"q": "王秀英"}).status_code == 200
    finally:
        ledger.close()
        monkeypatch.delenv("LEDGER_LOG_FORMAT")
        operations.configure_logging()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    requests = [x for x in lines if x.get("route")]
    me = next(x for x in requests if x["route"] == "/me")
    assert me["request_id"] == "req-42" and me["officer"] == "aud-json" and me["status"] == 200 and me["duration_ms"] >= 0
    assert me["time"].endswith("+08:00")
    searches = [x for x in requests if x["route"] == "/console/recipients"]
    assert len(searches) == 2 and {x["officer"] for x in searches} == {"dist-json"}
    text = buffer.getvalue()
    assert ID_WANG not in text and "王秀英" not in text and "\\u738b" not in text.lower()


def test_api_documents_render_from_assets_served_here(tmp_path):
    _, ledger, _, client = _client(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with client:
            for page, asset in (("/docs", "/docs-assets/swagger-ui-bundle.js"), ("/redoc", "/docs-assets/redoc.standalone.js")):
                html = client.get(page)
                assert html.status_code == 200 and asset in html.text
                assert "cdn" not in html.text.lower() and "fonts.googleapis" not in html.text
                js = client.get(asset)
                assert js.status_code == 200 and len(js.content) > 100_000
            assert client.get("/docs-assets/swagger-ui.css").status_code == 200
            icon = client.get("/favicon.ico")
            assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml") and b"<svg" in icon.content
            login = client.get("/console/login")
            assert 'rel="icon" href="/console/static/favicon.svg"' in login.text
            assert client.get("/console/static/favicon.svg").status_code == 200
    finally:
        ledger.close()


def test_the_clearing_workbench_shows_settled_cases_on_request(tmp_path):
    _, ledger, story, client = _client(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        rid = story.recipient("R1").id
        owed = ledger.recipient(rid).open_balance()
        assert owed > Decimal(0)
        with client:
            client.cookies.set(COOKIE, issue(SECRET, "clr-ui", "clearing_officer"))
            shown = unescape(client.get("/console/clearing").text)
            assert f'data-recipient="{rid}"' in shown
            assert ledger.run(m.Repay(recipient=str(rid), amount=owed)).status == "accepted"
            open_now = unescape(client.get("/console/clearing").text)
            assert f'data-recipient="{rid}"' not in open_now
            settled = unescape(client.get("/console/clearing", params={"show": "settled"}).text)
            assert f'data-recipient="{rid}"' in settled and '<option value="settled" selected>' in settled
            every = unescape(client.get("/console/clearing", params={"show": "all"}).text)
            assert f'data-recipient="{rid}"' in every
            assert client.get("/console/clearing", params={"show": "anything"}).status_code == 422
    finally:
        ledger.close()
