"""The public event contract (ADR 0011): mapping, privacy, stable ids, money format, and the
AsyncAPI document. The ledger is driven by the public acceptance scenarios; the money checks
compare the messages with those scenarios' expected outputs (an independent source)."""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic
from pydantic import ValidationError

from infra.contract import BY_TYPE, EVENT_TYPES, MAPPED_TOPICS, SKIPPED_TOPICS, parse_message
from infra.contract import asyncapi
from infra.contract.mapping import EVENT_NAMESPACE, event_id
from infra.relay import StoreReader, routing_key
from infra.scenario import Runner, _parse_at, _stringify_dates, load
from ledger import aggregates

SCENARIOS = Path(__file__).resolve().parents[1] / "acceptance"
SCENARIO_FILES = sorted(SCENARIOS.glob("*.yaml"))
assert SCENARIO_FILES, f"no acceptance scenarios in {SCENARIOS}"
D = Decimal


def run(path: Path) -> tuple[Runner, dict, list]:
    data = load(path.read_text(encoding="utf-8"))
    steps = [_stringify_dates(s) for s in data["steps"]]
    runner = Runner(data["jurisdiction"], _parse_at(steps[0]["at"]))
    for i, step in enumerate(steps, start=1):
        runner.step(i, step)
    reader = StoreReader(runner.app)
    page = reader.read(0, 100_000)
    return runner, data, page.messages


@pytest.fixture(scope="module", params=SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def scenario(request):
    return request.param, *run(request.param)


def test_every_internal_event_class_is_mapped_or_deliberately_skipped():
    """A new internal event must be a decision: published (mapping) or listed as skipped, with why."""
    classes = []
    for agg in (aggregates.Recipient, aggregates.Claim, aggregates.PolicyLedger, aggregates.CommandRecord, aggregates.Receipt, aggregates.ClaimBatch, aggregates.ClearingLog):
        for _, member in inspect.getmembers(agg, inspect.isclass):
            # ``Created`` and ``Event`` are the library's per-aggregate base classes, never recorded.
            if issubclass(member, Aggregate.Event) and member.__qualname__.startswith(agg.__name__ + ".") and member.__name__ not in ("Created", "Event"):
                classes.append(get_topic(member))
    assert classes
    undecided = [t for t in classes if t not in MAPPED_TOPICS and t not in SKIPPED_TOPICS]
    assert undecided == []
    assert not set(MAPPED_TOPICS) & set(SKIPPED_TOPICS)


def test_scenario_events_all_map_or_are_skipped_and_parse_back(scenario):
    _, runner, _, messages = scenario
    topics = {n.topic for n in runner.app.recorder.select_notifications(1, 100_000)}
    assert topics <= set(MAPPED_TOPICS) | set(SKIPPED_TOPICS)
    assert messages
    for m in messages:
        assert m.type in EVENT_TYPES
        assert parse_message(m.model_dump_json()) == m
        assert parse_message(m.model_dump(mode="json")) == m


def test_no_personal_data_in_any_message(scenario):
    """Recipient keys are aggregate ids: no id number, no name, no proxy id number anywhere."""
    path, runner, data, messages = scenario
    secrets = set()
    for step in data["steps"]:
        for key in ("id_number", "name", "proxy_id_number"):
            if step.get(key):
                secrets.add(str(step[key]))
    assert secrets
    text = "\n".join(m.model_dump_json() for m in messages)
    for secret in secrets:
        assert secret not in text
    enrolled = [m for m in messages if m.type == "recipient.enrolled"]
    assert {m.recipient_key for m in enrolled} == set(runner.recipients.values())
    assert all(set(m.payload.model_dump()) == {"street"} for m in enrolled)


def test_event_ids_are_uuid5_of_originator_and_version_and_positions_increase(scenario):
    _, runner, _, messages = scenario
    notifications = {n.id: n for n in runner.app.recorder.select_notifications(1, 100_000)}
    for m in messages:
        n = notifications[m.position]
        assert m.event_id == event_id(n.originator_id, n.originator_version)
        assert m.event_id.version == 5
    assert len({m.event_id for m in messages}) == len(messages)
    positions = [m.position for m in messages]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    # Mapping the same stored events again gives the same ids (stable across relays and replays).
    again = StoreReader(runner.app).read(0, 100_000).messages
    assert [m.event_id for m in again] == [m.event_id for m in messages]
    assert str(EVENT_NAMESPACE) not in {str(m.event_id) for m in messages}


def test_money_is_two_decimal_strings_everywhere(scenario):
    _, _, _, messages = scenario
    money_keys = {"total", "amount", "to_person", "self_pay", "in_scope", "basic_insurance_paid", "previous_total", "home_insurance_deductible"}
    found = 0

    def walk(x, key=None):
        nonlocal found
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, k)
                if k in ("by_scheme", "by_fund"):
                    for amount in v.values():
                        assert re.fullmatch(r"-?\d+\.\d{2}", amount), amount
                        found += 1
        elif isinstance(x, list):
            for v in x:
                walk(v, key)
        elif key in money_keys and x is not None:
            assert isinstance(x, str) and re.fullmatch(r"-?\d+\.\d{2}", x), (key, x)
            found += 1

    for m in messages:
        walk(m.model_dump(mode="json")["payload"])
    assert found > 0


def test_claim_events_carry_the_recipient_of_their_claim():
    seen = set()
    for path in SCENARIO_FILES:
        runner, _, messages = run(path)
        for m in messages:
            if m.type.startswith("claim."):
                claim = runner.app.repository.get(uuid.UUID(m.payload.claim_id))
                assert m.payload.recipient_id == claim.recipient_id == m.recipient_key
                seen.add(m.type)
    assert {"claim.lodged", "claim.reviewed", "claim.approved", "claim.paid", "claim.rejected"} <= seen


def test_paid_amounts_in_the_messages_equal_the_scenarios_expected_output(scenario):
    """Σ aid.paid per expense = the acceptance file's ``paid``; the latest decision or
    reassessment = its ``due``; clearing balances follow repayments and offsets."""
    path, runner, _, messages = scenario
    expected = json.loads(path.with_suffix("").with_suffix(".expected.json").read_text(encoding="utf-8"))
    handle_of = {v: k for k, v in runner.expenses.items()}
    paid: dict[str, dict] = defaultdict(lambda: {"total": D(0), "by_scheme": defaultdict(D), "by_fund": defaultdict(D)})
    due: dict[str, str] = {}
    cases: dict[str, Decimal] = {}
    for m in messages:
        if m.type == "aid.paid":
            for p in m.payload.payments:
                e = paid[handle_of[p.expense_id]]
                e["total"] += D(p.total)
                for k, v in p.by_scheme.items():
                    e["by_scheme"][k] += D(v)
                for k, v in p.by_fund.items():
                    e["by_fund"][k] += D(v)
            for o in m.payload.offsets:
                cases[o.case_id] -= D(o.amount)
        elif m.type == "aid.decided":
            for d in m.payload.decisions:
                due[handle_of[d.expense_id]] = d.total
        elif m.type == "aid.reassessed":
            for r in m.payload.results:
                due[handle_of[r.expense_id]] = r.total
        elif m.type == "clearing.case_opened":
            cases[m.payload.case_id] = D(m.payload.amount)
        elif m.type in ("clearing.repayment_received", "clearing.written_off"):
            for a in m.payload.allocations:
                cases[a.case_id] -= D(a.amount)
    checked = 0
    for handle, exp in expected.get("expenses", {}).items():
        if "paid" in exp:
            got = paid[handle]
            assert f"{got['total']:.2f}" == exp["paid"]["total"], handle
            for k, v in exp["paid"].get("by_scheme", {}).items():
                assert f"{got['by_scheme'][k]:.2f}" == v, (handle, k)
            for k, v in exp["paid"].get("by_fund", {}).items():
                assert f"{got['by_fund'][k]:.2f}" == v, (handle, k)
            checked += 1
        if "due" in exp and "total" in exp["due"]:
            assert due.get(handle, "0.00") == exp["due"]["total"], handle
    assert checked
    balances = sorted(f"{b:.2f}" for b in cases.values())
    assert balances == sorted(c["balance"] for c in expected.get("clearing_cases", []))


def test_routing_keys_name_the_recipient_and_the_type(scenario):
    _, _, _, messages = scenario
    for m in messages:
        key = routing_key(m)
        if m.recipient_key:
            assert key == f"recipient.{m.recipient_key}.{m.type}"
        else:
            assert key == f"recipient.none.{m.type}"


def test_parse_rejects_unknown_types_and_bad_money():
    good = {
        "event_id": "2b0f8d7e-5a41-4f0c-9a57-6f3c1c7e4b90",
        "position": 3,
        "recipient_key": "r",
        "recorded_at": "2026-05-01T10:00:00+08:00",
        "type": "social_help.granted",
        "payload": {"amount": "100.00", "organisation": None, "period": "2024-01-01..2028-12-31"},
    }
    assert parse_message(good).payload.amount == "100.00"
    with pytest.raises(ValidationError):
        parse_message({**good, "type": "social_help.revoked"})
    with pytest.raises(ValidationError):
        parse_message({**good, "payload": {**good["payload"], "amount": "100.5"}})
    with pytest.raises(ValidationError):
        parse_message({**good, "payload": {**good["payload"], "id_number": "310105195803122013"}})


def test_committed_asyncapi_document_equals_a_fresh_generation():
    committed = asyncapi.DOCUMENT.read_text(encoding="utf-8")
    assert committed == asyncapi.generate(), "docs/asyncapi.json is stale: run `ledger relay asyncapi`"
    doc = json.loads(committed)
    assert doc["asyncapi"].startswith("3.")
    assert set(doc["channels"]) == set(EVENT_TYPES)
    for t in EVENT_TYPES:
        assert doc["channels"][t]["address"] == "recipient.{recipient_key}." + t
        assert doc["channels"][t]["bindings"]["amqp"]["exchange"] == {"autoDelete": False, "durable": True, "name": "ledger.events", "type": "topic", "vhost": "/"}
    schema_names = set(doc["components"]["schemas"])
    assert {cls.__name__ for t, cls in BY_TYPE.items() if t in EVENT_TYPES} <= schema_names
