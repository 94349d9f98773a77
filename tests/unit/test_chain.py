"""The tamper-evident chain (ADR 0016) on the in-memory store."""

from __future__ import annotations

import hashlib
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


@pytest.fixture
def app():
    app = memory_app(JUR)
    tell(app)
    return app


def test_the_chain_is_the_documented_hash_over_the_stored_events(app):
    chain = integrity.chain_for(app)
    head = chain.run()
    notifications = app.recorder.select_notifications(start=1, limit=10_000)
    expected = _documented_chain(notifications)
    assert head == (notifications[-1].id, expected[notifications[-1].id])
    middle = notifications[len(notifications) // 2].id
    assert integrity.chain_head(middle, app) == (middle, expected[middle])
    assert integrity.chain_head(0, app) is None


def test_chain_head_chains_up_to_the_position_asked_for():
    app = memory_app(JUR)
    tell(app)
    chain = integrity.chain_for(app)
    assert chain.head() is None  # the memory app chains on demand
    link = integrity.chain_head(5, app)
    assert link.position == 5
    assert chain.head().position == 5  # no further than asked
    assert chain.run().position == app.recorder.max_notification_id()


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


def test_untouched_store_verifies_and_checkpoints_are_sealed(app):
    chain = integrity.chain_for(app)
    chain.checkpoint_every = 10
    chain.run()
    report = integrity.verify(chain)
    assert report.ok, report.as_dict()
    assert report.checked == len(app.recorder.select_notifications(start=1, limit=10_000))
    cps = chain.store.checkpoints()
    seqs = [r.seq for r in chain.store.rows(0, 10_000) if r.position in {c.position for c in cps}]
    assert seqs[:-1] == list(range(10, 10 * len(seqs), 10))  # every 10th event, plus the end of the run
    assert cps[-1].position == chain.head().position


def _tamper(app, position: int, **change) -> None:
    events = app.recorder._stored_events  # noqa: SLF001 - the raw POPO store
    events[position - 1] = replace(events[position - 1], **change)


def test_one_changed_byte_breaks_the_chain_at_that_position(app):
    chain = integrity.chain_for(app)
    chain.run()
    target = [n for n in app.recorder.select_notifications(start=1, limit=10_000) if n.topic.endswith("AidPaid")][0]
    state = bytearray(target.state)
    state[state.index(b'"to_person"') + 14] ^= 0x01
    _tamper(app, target.id, state=bytes(state))
    report = integrity.verify(chain)
    assert not report.ok
    assert report.first.position == target.id and report.first.kind == "altered"
    assert len([p for p in report.problems if p.kind == "altered"]) == 1  # later links still agree
    assert any("to_person" in d for d in report.first.details), report.first.details


def test_a_changed_version_or_topic_is_named(app):
    chain = integrity.chain_for(app)
    chain.run()
    _tamper(app, 3, originator_version=99)
    report = integrity.verify(chain)
    assert report.first.position == 3
    assert any("version" in d for d in report.first.details)


def test_a_forged_checkpoint_or_a_rewritten_chain_is_caught(app):
    chain = integrity.chain_for(app)
    chain.run()
    store = chain.store
    # someone rewrites an event and recomputes every later link, digests included
    target = 8
    state = bytearray(app.recorder._stored_events[target - 1].state)  # noqa: SLF001
    state[-3] ^= 0x01
    _tamper(app, target, state=bytes(state))
    forged = integrity.MemoryChainStore()
    for n, link in _documented_chain(app.recorder.select_notifications(start=1, limit=10_000)).items():
        src = next(r for r in store.rows(n - 1, 1))
        stored = app.recorder.select_notifications(start=n, limit=1)[0]
        forged._rows.append(integrity.Row(n, link, src.seq, integrity.field_digests(stored.topic, stored.originator_id, stored.originator_version, stored.state)))  # noqa: SLF001
    forged._checkpoints = store.checkpoints()  # noqa: SLF001 - the sealed checkpoints cannot be recomputed
    chain.store = forged
    report = integrity.verify(chain)
    assert [p.kind for p in report.problems] == ["checkpoint"]
    assert "rewritten" in report.first.message
    # and a checkpoint with a made-up hash fails its seal
    cp = forged._checkpoints[-1]  # noqa: SLF001
    forged._checkpoints[-1] = cp._replace(hash="00" * 32)  # noqa: SLF001
    assert any("seal" in p.message for p in integrity.verify(chain).problems)
