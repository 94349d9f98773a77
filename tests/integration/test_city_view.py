"""The city view over two district ledgers (ADR 0020): receipts paid in two districts, a person's
city-scheme usage across districts, fund totals per district and fund, the manifest of stream
positions and chain heads, exactly once by stream position per district. Checked against the
districts' own Recipient aggregates, not against the messages.

The view's database runs on SQLite and PostgreSQL (``database_url``); the district stores are
SQLite files (each district has its own store either way)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from commands import models as m
from infra import integrity
from infra.city import CityView, city_snapshot, receipt_key
from infra.contract.consumer import Outcome
from infra.districts import District
from infra.sample_ledger import START, id_number
from ledger.policy.packs import SHANGHAI_MEDICAL_AID
from ledger.values import CST
from infra.relay import StoreReader, interleave
from relay_support import expected_messages, ledger_with_data

D = Decimal
ZERO = D("0.00")


def build_districts(tmp_path) -> tuple[dict[str, Any], str]:
    """Changning (seed 2) and Xuhui (seed 5): different people whose receipts share facility codes
    and invoice numbers (the same receipt paid in both); then Changning's first person moves to
    Xuhui and is aided there too. Returns the apps by district and the moved person's key."""
    _, changning = ledger_with_data(f"sqlite:///{tmp_path / 'changning.db'}", recipients=4, months=1, seed=2)
    _, xuhui = ledger_with_data(f"sqlite:///{tmp_path / 'xuhui.db'}", recipients=4, months=1, seed=5)
    t = START + timedelta(days=50)
    rid = xuhui.run(m.Enrol(id_number=id_number(1000 + 2 * 100), name="测试0000", street="徐家汇街道", at=t)).ids["recipient"]
    xuhui.run(m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2025, 1, 1), at=t + timedelta(seconds=1)))
    xuhui.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2020, 1, 1), at=t + timedelta(seconds=2)))
    day = t.date() + timedelta(days=1)
    eid = xuhui.run(
        m.RecordExpense(
            recipient=rid, visit_type="outpatient", facility={"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "XH-C1"},
            service_date=day, invoice_date=day, invoice_no="XH-0001", total=D("320.00"), in_scope=D("300.00"), basic_insurance_paid=D("90.00"),
            at=datetime.combine(day, datetime.min.time(), CST) + timedelta(hours=9),
        )
    ).ids["expense"]
    res = xuhui.aid(rid, [eid], datetime.combine(day, datetime.min.time(), CST) + timedelta(hours=10))
    assert res.status == "accepted", res
    assert rid in {str(r) for r in changning.recipient_ids()}, "the moved person has the same recipient key in both districts"
    for app in (changning, xuhui):
        integrity.chain_for(app).seal_head()  # a checkpoint for the manifest (ADR 0016)
    return {"changning": changning, "xuhui": xuhui}, rid


def stream_of(app: Any) -> list[Any]:
    """What the district's relay publishes: its public messages, each checkpoint after the events it seals."""
    messages = expected_messages(app)
    return interleave(messages, StoreReader(app).checkpoints(0, messages[-1].position))


def district_facts(app: Any) -> dict[str, Any]:
    """From the aggregates: paid per fund, paid receipts, city-scheme due per (person, year)."""
    funds: dict[str, Decimal] = defaultdict(lambda: ZERO)
    paid: set[str] = set()
    due: dict[tuple[str, int], Decimal] = defaultdict(lambda: ZERO)
    for rid in app.recipient_ids():
        r = app.recipient(rid)
        for acc in r.expenses.values():
            for fund, amount in acc.paid_by_fund.items():
                funds[fund] += amount
            if acc.channels:
                paid.add(receipt_key(acc.facts.facility.code, acc.facts.invoice_no))
            if acc.due:
                due[(str(rid), acc.facts.service_date.year)] += D(acc.due["by_scheme"].get(SHANGHAI_MEDICAL_AID, "0.00"))
    return {"funds": {k: v for k, v in funds.items() if v}, "paid": paid, "due": due}


def test_city_view_receipts_caps_funds_and_manifest_exactly_once(database_url, tmp_path):
    apps, moved = build_districts(tmp_path)
    facts = {code: district_facts(app) for code, app in apps.items()}
    streams = {code: stream_of(app) for code, app in apps.items()}
    shared = facts["changning"]["paid"] & facts["xuhui"]["paid"]
    assert shared, "the dataset should pay some receipt in both districts"

    view = CityView(database_url, [District(c, "") for c in apps])
    try:
        # the two streams interleaved, as a subscriber on two streams receives them
        a, b = streams["changning"], streams["xuhui"]
        outcomes = []
        for i in range(max(len(a), len(b))):
            for code, stream in (("changning", a), ("xuhui", b)):
                if i < len(stream):
                    outcomes.append(view.process(code, stream[i].model_dump(mode="json")))
        assert outcomes.count(Outcome.PROCESSED) == len(a) + len(b)

        # funds per district and fund equal the aggregates' payments
        totals = view.fund_totals()
        for code in apps:
            assert {f: v for (d, f), v in totals.items() if d == code} == facts[code]["funds"]

        # every receipt paid in both districts is one conflict, of the district that paid second
        conflicts = view.conflicts()
        assert {c["receipt"] for c in conflicts} == shared
        assert all({c["district"], c["first_district"]} == {"changning", "xuhui"} for c in conflicts)
        one = conflicts[0]
        code, number = one["receipt"].split("\x1f")
        answer = view.receipt(code, number, asking=one["district"])
        assert answer.aided_elsewhere and answer.district == one["first_district"]
        assert "R-CAP-4" in answer.explanation(one["district"]) and f"{one['first_district']} {answer.positions[one['first_district']]}" in answer.explanation(one["district"])
        assert not view.receipt("NOWHERE", "0", asking="xuhui").aided_elsewhere

        # the moved person's city-scheme usage, per district, equals each district's due
        used, positions = view.cap_usage(moved, 2026)
        assert set(used) == {"changning", "xuhui"}
        for code in apps:
            assert used[code] == facts[code]["due"][(moved, 2026)] > 0
        assert positions == {code: s[-1].position for code, s in streams.items()}

        # the manifest: each district's position and chain head (its sealed checkpoint)
        manifest = {r["district"]: r for r in view.manifest()["districts"]}
        for code, app in apps.items():
            head = integrity.chain_for(app).head()
            assert manifest[code]["checkpoint_position"] == head.position and manifest[code]["chain_head"] == head.hash

        # delivered again (a relay re-sending after a crash): nothing counted twice
        again = [view.process("changning", msg.model_dump(mode="json")) for msg in a]
        assert all(o is Outcome.REPEAT for o, msg in zip(again, a) if msg.type != "chain.checkpoint_sealed")
        assert view.fund_totals() == totals and len(view.conflicts()) == len(conflicts)
    finally:
        view.close()


def test_a_failed_transaction_leaves_the_position_and_is_applied_again(tmp_path):
    apps, _ = build_districts(tmp_path)
    stream = stream_of(apps["changning"])
    view = CityView(f"sqlite:///{tmp_path / 'city.db'}")
    try:
        paid = next(i for i, msg in enumerate(stream) if msg.type == "aid.paid")
        for msg in stream[:paid]:
            view.process("changning", msg.model_dump(mode="json"))
        before = view.positions()["changning"]
        original = view._add_fund

        def broken(*args: Any) -> None:
            raise RuntimeError("disk full")

        view._add_fund = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            view.process("changning", stream[paid].model_dump(mode="json"))
        assert view.positions()["changning"] == before and view.fund_totals() == {}
        view._add_fund = original  # type: ignore[method-assign]
        assert view.process("changning", stream[paid].model_dump(mode="json")) is Outcome.PROCESSED
        assert sum(view.fund_totals().values()) == sum((D(p.total) for p in stream[paid].payload.payments), ZERO)
    finally:
        view.close()


def test_city_snapshot_is_the_union_of_the_district_snapshots_with_one_manifest(tmp_path, monkeypatch):
    apps, _ = build_districts(tmp_path)
    districts = [District(code, f"sqlite:///{tmp_path / f'{code}.db'}") for code in apps]
    monkeypatch.setenv("LEDGER_DISTRICTS", ",".join(apps))
    for d in districts:
        monkeypatch.setenv(f"LEDGER_DISTRICT_{d.code.upper()}_DATABASE_URL", d.database_url)
    heads = {code: integrity.chain_for(app).head() for code, app in apps.items()}
    for app in apps.values():
        app.close()  # the snapshots run in processes of their own
    manifest = city_snapshot(districts, tmp_path / "city", valid="2026-06-30")
    assert [e["district"] for e in manifest["districts"]] == list(apps)
    for e in manifest["districts"]:
        assert e["store_position"] == heads[e["district"]].position
        assert e["chain_head"]["hash"] == heads[e["district"]].hash
        assert e["valid"] == "2026-06-30" and e["rows"] > 0
        rows = json.loads((tmp_path / "city" / e["district"] / next(iter(e["files"]))).read_text(encoding="utf-8"))
        assert rows  # the district's own snapshot file, as its manifest names it
    assert manifest["rows"] == sum(e["rows"] for e in manifest["districts"])
    assert json.loads((tmp_path / "city" / "city.manifest.json").read_text(encoding="utf-8")) == json.loads(json.dumps(manifest))


def test_the_district_that_paid_second_is_the_same_whichever_stream_arrives_first(tmp_path):
    apps, _ = build_districts(tmp_path)
    streams = {code: stream_of(app) for code, app in apps.items()}
    found = []
    for order in (("changning", "xuhui"), ("xuhui", "changning")):
        view = CityView(f"sqlite:///{tmp_path / ('city-' + '-'.join(order) + '.db')}")
        try:
            for code in order:
                for msg in streams[code]:
                    view.process(code, msg.model_dump(mode="json"))
            found.append(sorted(view.conflicts(), key=lambda c: c["receipt"]))
        finally:
            view.close()
    assert found[0] and found[0] == found[1]
    paid_at: dict[tuple[str, str], str] = {}  # each expense's first payment
    for code, s in streams.items():
        for msg in s:
            if msg.type == "aid.paid":
                for p in msg.payload.payments:
                    paid_at.setdefault((code, p.expense_id), msg.recorded_at.isoformat())
    for c in found[0]:
        assert (paid_at[(c["district"], c["expense_id"])], c["district"]) > (paid_at[(c["first_district"], c["first_expense_id"])], c["first_district"])
