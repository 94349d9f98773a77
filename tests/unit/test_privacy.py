"""Personal data at rest (ADR 0015) on the in-memory store: the mapper, the keys, erasure."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import replace
from decimal import Decimal

import pytest
from eventsourcing.utils import get_topic

from commands import models as m
from commands.app import LedgerApp
from commands.repository import LargeStateCompressor
from infra import integrity, privacy
from infra.wiring import memory_app
from ledger import errors
from ledger.aggregates import NAMESPACE, Recipient
from ledger.values import ERASED
from integrity_story import id_number, money_figures, ok, tell

JUR = "shanghai.changning"


def _forms(text: str) -> list[bytes]:
    """How a string could show up in stored JSON: raw UTF-8 or \\u-escaped."""
    return [text.encode("utf-8"), json.dumps(text).strip('"').encode("ascii")]


def _stored(app: LedgerApp) -> list:
    events = list(app.recorder._stored_events)  # noqa: SLF001 - the raw POPO store
    if app.snapshots is not None:
        events += list(app.snapshots.recorder._stored_events)  # noqa: SLF001
    return events


@pytest.fixture
def story_app():
    app = memory_app(JUR)
    return app, tell(app)


def _snapshotted(app: LedgerApp) -> tuple[str, str, str]:
    """A recipient with a snapshot (snapshots carry the aggregate's attributes, name included)."""
    number, name = id_number("31010619850202301"), "李四 Snapshot"
    rid = ok(app.run(m.Enrol(id_number=number, name=name))).ids["recipient"]
    ok(app.run(m.ConsentAutoClaim(recipient=rid, signed=True)))
    app.take_snapshot(uuid.UUID(rid))
    return rid, number, name


def test_no_personal_value_is_stored_in_plaintext(story_app):
    app, story = story_app
    _, number, name = _snapshotted(app)
    story.secrets.extend([number, name])
    stored = _stored(app)
    assert any(s.topic == get_topic(Recipient.Snapshot) for s in stored)
    plain = LargeStateCompressor()  # large states are stored compressed: look inside them
    for secret in story.secrets:
        for form in _forms(secret):
            hits = [s.topic for s in stored if form in plain.decompress(bytes(s.state))]
            assert not hits, f"{secret!r} stored in plaintext in {hits}"


def test_the_domain_still_reads_plaintext(story_app):
    app, story = story_app
    for p in story.people:
        r = app.recipient(p.rid)
        assert (r.id_number, r.name, r.street) == (p.id_number, p.name, p.street)
    rid, number, name = _snapshotted(app)
    assert app.snapshots.recorder.select_events(uuid.UUID(rid))
    r = app.recipient(rid)
    assert (r.id_number, r.name, r.consent) == (number, name, True)
    claims = [n for n in app.recorder.select_notifications(start=1, limit=1000) if n.topic.endswith("Claim.Lodged")]
    lodged = app.mapper.to_domain_event(claims[-1])
    assert lodged.proxy_id_number == story.proxy_id_number


def test_recipient_id_is_a_keyed_hash_of_the_id_number(story_app):
    app, story = story_app
    p = story.people[0]
    keys = privacy.key_store(app)
    expected = hmac.new(keys.master.index_key, p.id_number.encode(), hashlib.sha256).hexdigest()
    assert p.rid == str(uuid.uuid5(NAMESPACE, f"recipient:{expected}"))
    assert p.rid != str(uuid.uuid5(NAMESPACE, f"recipient:{p.id_number}")), "guessable from the number"
    assert app.recipient_id_for(p.id_number.lower()) == uuid.UUID(p.rid)  # the check letter's case
    # another master key, another id: the id says nothing without the key
    other = memory_app(JUR)
    assert other.recipient_id_for(p.id_number) != uuid.UUID(p.rid)
    # and enrolling the same number twice is still refused (the search goes through the hash)
    with pytest.raises(errors.InvalidInput):
        app.run(m.Enrol(id_number=p.id_number, name="someone else"))


def test_the_search_hash_sits_beside_the_ciphertext(story_app):
    app, story = story_app
    p = story.people[1]
    [enrolled] = [n for n in app.recorder.select_notifications(start=1, limit=1000) if n.topic.endswith("Recipient.Enrolled") and str(n.originator_id) == p.rid]
    state = json.loads(enrolled.state)
    assert state["id_number"]["ix"] == privacy.key_store(app).master.search_hash(p.id_number)
    assert "ix" not in state["name"]
    assert state["street"] == p.street  # the street office is not personal data


def test_ciphertext_is_bound_to_its_recipient(story_app):
    app, story = story_app
    a, b = story.people
    enrolled = {
        str(n.originator_id): n for n in app.recorder.select_notifications(start=1, limit=1000) if n.topic.endswith("Recipient.Enrolled")
    }
    stolen = replace(enrolled[a.rid], originator_id=uuid.UUID(b.rid))
    with pytest.raises(privacy.PersonalDataError):
        app.mapper.to_domain_event(stolen)


def test_an_unbound_mapper_refuses_to_store_plaintext():
    app = LedgerApp({"PERSISTENCE_MODULE": "eventsourcing.popo", "MAPPER_TOPIC": privacy.MAPPER_TOPIC}, jurisdiction=JUR)
    with pytest.raises(privacy.PersonalDataError):
        app.run(m.Enrol(id_number=id_number("31010519580312201"), name="王秀英"))
    assert not app.recorder.max_notification_id()


def test_erase_shreds_personal_data_and_keeps_the_money(story_app):
    app, story = story_app
    a, b = story.people
    before = money_figures(app, story)
    chain = integrity.chain_for(app)
    chain.run()

    outcome = privacy.erase(app, a.rid, reason="request 2026-17")
    assert outcome["erased"] and outcome["state"] == "erased" and outcome["reason"] == "request 2026-17"

    r = app.recipient(a.rid)
    assert (r.id_number, r.name) == (ERASED, ERASED)
    assert r.street == a.street
    assert (app.recipient(b.rid).id_number, app.recipient(b.rid).name) == (b.id_number, b.name)
    # the proxy's number on the erased recipient's claims is under the same key: gone too
    assert money_figures(app, story) == before
    assert integrity.verify(chain).ok
    assert privacy.erase(app, a.rid)["already_erased"]


def test_erase_reaches_snapshots():
    app = memory_app(JUR)
    rid, number, name = _snapshotted(app)
    privacy.erase(app, rid)
    r = app.recipient(rid)  # from the snapshot
    assert (r.id_number, r.name, r.consent) == (ERASED, ERASED, True)
    ok(app.run(m.ConsentAutoClaim(recipient=rid, signed=False)))
    app.take_snapshot(uuid.UUID(rid))  # an erased recipient can still be snapshotted
    assert app.recipient(rid).name == ERASED


def test_nothing_personal_can_be_recorded_for_an_erased_recipient(story_app):
    app, story = story_app
    a, b = story.people
    privacy.erase(app, b.rid)
    r = app.recipient(b.rid)
    assert r.name == ERASED
    count = app.recorder.max_notification_id()
    # a proxy's id number would need the erased key: refused, with a code, and nothing recorded
    res = app.run(
        m.RecordExpense.model_validate(
            {
                "recipient": b.rid,
                "visit_type": "outpatient",
                "facility": {"kind": "community_health_centre", "level": 1},
                "service_date": "2026-11-01",
                "invoice_date": "2026-11-01",
                "invoice_no": "X-1",
                "total": "10.00",
                "in_scope": "10.00",
                "basic_insurance_paid": "0.00",
            }
        )
    )
    assert res.status == "accepted"  # no personal field: the account goes on
    count = app.recorder.max_notification_id()
    refused = app.run(m.LodgeClaim(recipient=b.rid, expenses=[res.ids["expense"]], handler="h", proxy_id_number=id_number("31010419700101123")))
    assert (refused.status, refused.code) == ("rejected", "PERSONAL_DATA_ERASED")
    assert app.recorder.max_notification_id() == count
    # R-INS-2 needs the age of a low-income member: it cannot be known any more
    ok(app.run(m.RevokeCategory.model_validate({"recipient": b.rid, "category": "dibao", "from": "2025-01-01"})))
    ok(app.run(m.GrantCategory.model_validate({"recipient": b.rid, "category": "low_income", "from": "2025-01-01"})))
    count = app.recorder.max_notification_id()
    refused = app.run(m.Insure.model_validate({"recipient": b.rid, "scheme": "resident", "from": "2026-01-01"}))
    assert (refused.status, refused.code, refused.rule) == ("rejected", "PERSONAL_DATA_ERASED", "R-INS-2")
    assert app.recorder.max_notification_id() == count
    # a repayment carries nothing personal
    owed = app.recipient(a.rid).open_balance()
    ok(app.run(m.Repay(recipient=a.rid, amount=min(owed, Decimal("1.00")))))


def test_unknown_recipient_cannot_be_erased():
    app = memory_app(JUR)
    with pytest.raises(errors.UnknownEntity):
        privacy.erase(app, uuid.uuid4())


def test_development_key_is_fixed_and_announced(caplog):
    privacy._warned = False  # noqa: SLF001 - announce again for this test
    with caplog.at_level(logging.WARNING, logger="ledger.privacy"):
        dev = privacy.MasterKey.from_setting(None)
    assert dev.development and "LEDGER_DATA_KEY" in caplog.text
    again = privacy.MasterKey.from_setting(None)
    assert (again.wrap_key, again.index_key, again.seal_key) == (dev.wrap_key, dev.index_key, dev.seal_key)
    real = privacy.MasterKey.from_setting("a real secret from the vault")
    assert not real.development and real.wrap_key != dev.wrap_key
    assert len({real.wrap_key, real.index_key, real.seal_key}) == 3  # one sub-key per purpose
    assert real.search_hash("31010519580312201x") == real.search_hash(" 31010519580312201X")
