"""The integrity chain's checkpoints on the event stream (ADR 0016, ADR 0011): the relay publishes
each numbered checkpoint as ``chain.checkpoint_sealed`` once the events it seals are out, so that
subscribers hold copies; through faststream's in-memory RabbitMQ broker, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.testing import TestRabbitBroker

from commands import models as m
from infra import integrity
from infra.contract import parse_message
from infra.contract.consumer import Deduplicator, Outcome
from infra.contract.messages import ChainCheckpointSealed
from infra.relay import Relay, Sender, Topology, build_broker
from infra.settings import Settings
from infra.wiring import build_app
from integrity_story import id_number, ok, tell
from relay_support import expected_messages

URL = "amqp://guest:guest@localhost:5672/"


def _relay_once(settings: Settings, app: Any, built: tuple[Any, dict], topology: Topology) -> Relay:
    async def run() -> Relay:
        async with TestRabbitBroker(built[0]):
            relay = Relay(settings, topology, app=app, batch_size=7, sender_factory=lambda t: Sender(t, built=built))
            try:
                await relay.run(once=True)
            finally:
                relay.tracking.dispose()
            return relay

    return asyncio.run(run())


def test_the_relay_publishes_every_checkpoint_once_after_the_events_it_seals(database_url):
    settings = Settings(database_url=database_url)
    app = build_app(settings)
    chain = integrity.chain_for(app)
    chain.checkpoint_every = 20  # periodic checkpoints inside the saves …
    tell(app)
    chain.signed_head()  # … and one on demand
    topology = Topology("rabbit", URL)
    built = build_broker(topology)
    received: list[tuple[dict, str, str]] = []

    @built[0].subscriber(RabbitQueue("capture", routing_key="#"), RabbitExchange(topology.exchange, type=ExchangeType.TOPIC, durable=True))
    async def _(body: dict, msg: RabbitMessage) -> None:
        received.append((body, msg.message_id, msg.raw_message.routing_key))

    try:
        relay = _relay_once(settings, app, built, topology)
        cps = chain.store.chain_checkpoints()
        assert [k.kind for k in cps] == [integrity.PERIODIC, integrity.PERIODIC, integrity.ON_DEMAND]
        events = expected_messages(app)
        sealed = [parse_message(b) for b, _, _ in received if b["type"] == "chain.checkpoint_sealed"]
        assert relay.stats.published == len(events) and relay.stats.checkpoints == len(cps)
        assert [(s.payload.number, s.position, s.payload.hash, s.payload.signature, s.payload.previous_signature, s.payload.kind) for s in sealed] == [
            (k.number, k.position, k.hash, k.seal, k.previous, k.kind) for k in cps
        ]
        # each one after every event message at or before its position, before any later one
        order = [(b["type"], b["position"]) for b, _, _ in received]
        for s in sealed:
            at = order.index(("chain.checkpoint_sealed", s.position))
            assert all(p <= s.position for t, p in order[:at] if t != "chain.checkpoint_sealed")
            assert all(p > s.position for t, p in order[at + 1 :] if t != "chain.checkpoint_sealed")
        ids = {mid for b, mid, _ in received if b["type"] == "chain.checkpoint_sealed"}
        assert len(ids) == len(cps) and {k for _, _, k in received if "checkpoint" in k} == {"recipient.none.chain.checkpoint_sealed"}

        # nothing new: nothing published; a checkpoint sealed on demand later: only it
        before = len(received)
        assert _relay_once(settings, app, built, topology).stats.checkpoints == 0 and len(received) == before
        ok(app.run(m.Enrol(id_number=id_number("31010519880101505"), name="又一位", street="华阳路街道")))
        newest = chain.signed_head()
        again = _relay_once(settings, app, built, topology)
        assert again.stats.checkpoints == 1 and again.stats.published == 1
        assert [parse_message(b).payload.number for b, _, _ in received[before:] if b["type"] == "chain.checkpoint_sealed"] == [newest.checkpoint]

        # a position-keeping consumer hands the checkpoint over although its position repeats
        dedup = Deduplicator()
        kept: list[int] = []
        for body, _, _ in received[:before]:
            dedup.process(body, lambda msg: kept.append(msg.payload.number) if isinstance(msg, ChainCheckpointSealed) else None)
        assert kept == [k.number for k in cps]
        assert dedup.process(received[0][0], lambda msg: None) is Outcome.REPEAT
    finally:
        app.close()
