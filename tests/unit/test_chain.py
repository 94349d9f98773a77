"""The tamper-evident chain (ADR 0016) on the in-memory store: the hash, the links the recorder
writes in each save, the seals and the numbered checkpoints, and what ``verify`` says when any
of them is touched."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import replace

import pytest

from infra import integrity
from infra.wiring import memory_app
from integrity_story import tell

JUR = "shanghai.changning"


def _documented_chain(notifications) -> dict[int, str]:
    """The chain as ADR 0016 defines it, computed here from its definition."""
    out, prev = {}, bytes(32)
    for n in notifications:
        h = hashlib.sha256(b"ledger-chain-v1" + prev)
        for part in (str(n.id).encode(), n.topic.encode(), str(n.originator_id).encode(), str(n.originator_version).encode(), n.state):
            h.update(len(part).to_bytes(8, "big") + part)
        prev = h.digest()
        out[n.id] = prev.hex()
    return out


def _notifications(app):
    return app.recorder.select_notifications(start=1, limit=10_000)


@pytest.fixture
def app():
    app = memory_app(JUR)
    integrity.chain_for(app).checkpoint_every = 10
    tell(app)
    return app


def test_every_save_chains_its_events_with_the_documented_hash(app):
    chain = integrity.chain_for(app)
    notifications = _notifications(app)
    expected = _documented_chain(notifications)
    # chained by the saves themselves: nothing was run
    assert chain.head() == (notifications[-1].id, expected[notifications[-1].id])
    assert {r.position: r.hash for r in chain.store.chain_rows(0, 10_000)} == expected
    middle = notifications[len(notifications) // 2].id
    assert integrity.chain_head(middle, app) == (middle, expected[middle])
    assert integrity.chain_head(0, app) is None


def test_every_part_of_an_event_is_covered():
    base = dict(previous=bytes(32), position=7, topic="a:B", originator_id=uuid.UUID(int=1), version=3, state=b'{"x":1}')
    h = integrity.link_hash(**base)
    for key, other in [
        ("previous", b"\x01" * 32),
        ("position", 8),
        ("topic", "a:C"),
        ("originator_id", uuid.UUID(int=2)),
        ("version", 4),
        ("state", b'{"x":2}'),
    ]:
        assert integrity.link_hash(**{**base, key: other}) != h, key
    # parts are length-prefixed: moving a byte from one part to the next changes the hash
    assert integrity.link_hash(**{**base, "topic": "a:Bx", "state": b'"x":1}'}) != h


def test_seals_and_numbered_checkpoints_as_the_saves_write_them(app):
    chain = integrity.chain_for(app)
    rows = chain.store.chain_rows(0, 10_000)
    cps = chain.store.chain_checkpoints()
    # every 10th event, numbered 1, 2, 3, …, each naming the previous signature
    assert [r.seq for r in rows if r.position in {k.position for k in cps}] == list(range(10, 10 * len(cps) + 1, 10))
    assert [k.number for k in cps] == list(range(1, len(cps) + 1)) and len(cps) >= 4
    assert [k.previous for k in cps] == [""] + [k.seal for k in cps[:-1]]
    assert {k.kind for k in cps} == {integrity.PERIODIC}
    # the link under each checkpoint is sealed naming it; the head is sealed naming the last one
    at = {r.position: r for r in rows}
    assert all(at[k.position].checkpoint == k.number and at[k.position].seal for k in cps)
    assert rows[-1].seal and rows[-1].checkpoint == cps[-1].number
    # one save of several events: only its last link is sealed (or one carrying a checkpoint)
    assert 0 < sum(1 for r in rows if r.seal) < len(rows)
    report = integrity.verify(chain)
    assert report.ok, report.as_dict()
    assert report.checked == len(_notifications(app)) and report.last_checkpoint == len(cps)


def test_a_checkpoint_on_demand_seals_the_head_and_reseals_its_link(app):
    chain = integrity.chain_for(app)
    before = chain.store.chain_checkpoints()
    signed = chain.signed_head()
    assert (signed.position, signed.hash) == chain.head()
    assert signed.checkpoint == before[-1].number + 1 and signed.signature == chain.store.chain_last_checkpoint().seal
    assert chain.store.chain_head().checkpoint == signed.checkpoint
    assert chain.signed_head() == signed  # the head has one: no second checkpoint
    assert integrity.SignedHead.parse(signed.to_json()) == signed
    assert integrity.verify(chain, expect=signed).ok


def _tamper(app, position: int, **change) -> None:
    events = app.recorder._stored_events  # noqa: SLF001 - the raw POPO store
    events[position - 1] = replace(events[position - 1], **change)


def test_one_changed_byte_breaks_the_chain_at_that_position(app):
    chain = integrity.chain_for(app)
    target = [n for n in _notifications(app) if n.topic.endswith("AidPaid")][0]
    state = bytearray(target.state)
    state[state.index(b'"to_person"') + 14] ^= 0x01
    _tamper(app, target.id, state=bytes(state))
    report = integrity.verify(chain)
    assert not report.ok
    assert report.first.position == target.id and report.first.kind == "altered"
    assert [p.kind for p in report.problems] == ["altered"]  # later links still agree
    assert any("to_person" in d for d in report.first.details), report.first.details


def test_a_changed_version_is_named(app):
    chain = integrity.chain_for(app)
    _tamper(app, 3, originator_version=99)
    report = integrity.verify(chain)
    assert report.first.position == 3
    assert any("version" in d for d in report.first.details)


def test_links_computed_again_without_the_key_are_caught(app):
    """Someone rewrites an event and recomputes every later link, digests included (the hash is
    public): the seals they cannot compute and the signed checkpoints give it away."""
    chain = integrity.chain_for(app)
    rows = chain.store._chain_rows  # noqa: SLF001 - the raw in-memory chain
    target = 8
    state = bytearray(app.recorder._stored_events[target - 1].state)  # noqa: SLF001
    state[-3] ^= 0x01
    _tamper(app, target, state=bytes(state))
    links = _documented_chain(_notifications(app))
    for i, r in enumerate(rows):
        if r.position >= target:
            n = app.recorder.select_notifications(start=r.position, limit=1)[0]
            rows[i] = r._replace(hash=links[r.position], digests=integrity.field_digests(n.topic, n.originator_id, n.originator_version, n.state))
    report = integrity.verify(chain)
    kinds = {(p.kind, p.position) for p in report.problems}
    first_checkpoint = next(k for k in chain.store.chain_checkpoints() if k.position >= target)
    assert ("checkpoint", first_checkpoint.position) in kinds  # it disagrees with the recomputed chain
    assert any(k == "seal" for k, _ in kinds)  # the old seals do not match the new links
    assert not any(k == "altered" for k, _ in kinds)  # the links themselves were made to match
    assert report.first.position >= target


def test_a_renumbered_or_missing_checkpoint_is_named(app):
    chain = integrity.chain_for(app)
    cps = chain.store._chain_cps  # noqa: SLF001
    second = cps[1]
    del cps[1]
    report = integrity.verify(chain)
    assert [(p.kind, p.position) for p in report.problems] == [("checkpoint", second.position), ("checkpoint", cps[1].position)]
    assert "#2 is missing" in report.problems[0].message and "#2 is missing" in report.problems[1].message
    # renumber the rest to close the gap: the signatures no longer match
    cps[1:] = [k._replace(number=k.number - 1) for k in cps[1:]]
    report = integrity.verify(chain)
    assert {p.position for p in report.problems if "bad signature" in p.message} == {k.position for k in cps[1:]}


def test_an_event_stored_without_a_link_is_named(app):
    """Written beside the recorder (no link): evidence, not "not chained yet"; and the next
    ordinary save does not adopt it."""
    chain = integrity.chain_for(app)
    recorder = app.recorder
    forged = replace(recorder._stored_events[-1], originator_version=recorder._stored_events[-1].originator_version + 1)  # noqa: SLF001
    integrity.POPOApplicationRecorder._insert_events(recorder, [forged])  # the library's insert, without the chain
    position = recorder.max_notification_id()
    report = integrity.verify(chain)
    assert [(p.kind, p.position) for p in report.problems] == [("unchained", position)]
    from commands import models as m
    from integrity_story import id_number

    assert app.run(m.Enrol(id_number=id_number("31010519700101554"), name="李四", street="华阳路街道")).status == "accepted"
    assert recorder.max_notification_id() > position
    report = integrity.verify(chain)
    assert [(p.kind, p.position) for p in report.problems] == [("unchained", position)]
    assert json.loads(json.dumps(report.as_dict()))["first_broken"]["position"] == position


def test_a_recorder_without_its_sealer_refuses_to_store():
    recorder = integrity.ChainedPOPOApplicationRecorder()
    with pytest.raises(integrity.ChainNotInstalled):
        recorder.insert_events([integrity.StoredEvent(uuid.uuid4(), 1, "a:B", b"{}")])
    assert not recorder.max_notification_id()
