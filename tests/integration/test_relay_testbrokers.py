"""The relay and the report subscriber through faststream's in-memory test brokers (ADR 0011), on
a ledger stored in SQLite and in PostgreSQL: what is published (ids, keys, order), at least once
across a failed publish, and the report against the ledger's own totals per street and month."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.testing import TestKafkaBroker
from faststream.nats.annotations import NatsMessage
from faststream.nats.testing import TestNatsBroker
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.testing import TestRabbitBroker
from faststream.redis.annotations import RedisMessage
from faststream.redis.testing import TestRedisBroker

from infra.relay import Relay, Sender, Topology, build_broker
from infra.reports import ReportStore, ReportSubscriber
from relay_support import expected_messages, ledger_totals, ledger_with_data, months_of, report_totals, reports_of

TEST_BROKERS = {"rabbit": TestRabbitBroker, "nats": TestNatsBroker, "redis": TestRedisBroker, "kafka": TestKafkaBroker}
URLS = {"rabbit": "amqp://guest:guest@localhost:5672/", "nats": "nats://localhost:4222", "redis": "redis://localhost:6379", "kafka": "localhost:9092"}


def capture(kind: str, broker: Any, topology: Topology, into: list) -> None:
    """A second subscriber that records what arrives, with the transport's own metadata."""
    if kind == "rabbit":
        from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue

        @broker.subscriber(RabbitQueue("capture", routing_key="#"), RabbitExchange(topology.exchange, type=ExchangeType.TOPIC, durable=True))
        async def _(body: dict, msg: RabbitMessage) -> None:
            into.append((body, {"id": msg.message_id, "key": msg.raw_message.routing_key, "type": msg.raw_message.type}))

    elif kind == "nats":
        from faststream.nats import JStream

        @broker.subscriber(topology.subject(">"), stream=JStream(topology.stream, declare=False))
        async def _(body: dict, msg: NatsMessage) -> None:
            into.append((body, {"id": msg.headers.get("Nats-Msg-Id"), "key": msg.headers.get("Ledger-Recipient-Key"), "subject": msg.raw_message.subject}))

    elif kind == "redis":

        @broker.subscriber(stream=topology.exchange)
        async def _(body: dict, msg: RedisMessage) -> None:
            into.append((body, {"id": msg.correlation_id, "key": msg.headers.get("Ledger-Recipient-Key")}))

    else:
        @broker.subscriber(topology.exchange)
        async def _(body: dict, msg: KafkaMessage) -> None:
            into.append((body, {"id": msg.correlation_id, "key": msg.raw_message.key.decode()}))


def test_every_broker_gets_every_message_once_in_log_order_and_the_report_equals_the_ledger(database_url, tmp_path):
    """On a dataset generated through the commands: each broker receives every public message
    once, in log order, with the event id as message id and the recipient as key; the report the
    subscriber builds from them equals the ledger's own totals per street and month (computed
    from the Recipient aggregates, not from the messages)."""
    settings, app = ledger_with_data(database_url, recipients=6, months=2, seed=2)
    expected = expected_messages(app)
    months = months_of(expected)
    theirs = ledger_totals(app)
    assert len(expected) > 100 and len(months) >= 3
    assert len({street for street, _ in theirs}) >= 5
    assert any(Decimal(t["offsets"]) > 0 for t in theirs.values()), "the dataset should exercise clearing offsets"
    for kind, test_broker in TEST_BROKERS.items():
        topology = Topology(kind, URLS[kind])
        built = build_broker(topology)
        received: list = []
        capture(kind, built[0], topology, received)
        store = ReportStore(f"sqlite:///{tmp_path / f'{kind}.db'}")
        if kind in ("rabbit", "nats"):
            ReportSubscriber(store, topology).attach(built[0])

        async def run() -> Any:
            async with test_broker(built[0]):
                relay = Relay(settings, topology, app=app, name=kind, batch_size=25, sender_factory=lambda t: Sender(t, built=built))
                try:
                    stats = await relay.run(once=True)
                    again = await relay.run(once=True)  # from the tracked position: nothing new
                    return stats, again.published - stats.published, relay
                finally:
                    relay.tracking.dispose()

        stats, republished, relay = asyncio.run(run())
        assert republished == 0
        assert stats.published == len(expected)
        assert stats.position == app.recorder.max_notification_id()
        assert [b["event_id"] for b, _ in received] == [str(m.event_id) for m in expected], kind
        for (body, meta), m in zip(received, expected):
            assert meta["id"] == str(m.event_id), kind
            if kind == "rabbit":
                assert meta["key"] == f"recipient.{m.recipient_key or 'none'}.{m.type}" and meta["type"] == m.type
            elif kind == "nats":
                assert meta["subject"] == f"ledger.events.{m.type}" and meta["key"] == (m.recipient_key or "")
            elif kind == "kafka":
                assert meta["key"] == (m.recipient_key or "none")
            else:
                assert meta["key"] == (m.recipient_key or "")
        if kind in ("rabbit", "nats"):
            assert sorted(store.event_ids()) == sorted(str(m.event_id) for m in expected)
            assert report_totals(reports_of(store, months)) == theirs, kind
        if kind == "rabbit":
            # --from N publishes again from position N; the subscriber drops what it has.
            async def from_position(n: int) -> int:
                async with test_broker(built[0]):
                    before = relay.stats.published
                    await relay.run(once=True, start=n)
                    return relay.stats.published - before

            assert asyncio.run(from_position(expected[-5].position)) == 5
            assert [b["event_id"] for b, _ in received[-5:]] == [str(m.event_id) for m in expected[-5:]]
            assert store.state()["repeats"] == 5 and store.state()["applied"] == len(expected)
        store.close()
    app.close()


class FlakySender(Sender):
    """Fails once, after a number of confirmed messages, as a broker connection dropping would."""

    def __init__(self, *args: Any, fail_after: int, on_fail: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.left = fail_after
        self.on_fail = on_fail

    async def send(self, message: Any) -> None:
        if self.left == 0:
            self.on_fail(message)
            raise ConnectionError("connection reset by peer")
        self.left -= 1
        await super().send(message)


def test_a_failed_publish_resends_from_the_last_confirmed_batch(database_url, tmp_path):
    settings, app = ledger_with_data(database_url, recipients=3, months=2)
    expected = expected_messages(app)
    topology = Topology("rabbit", URLS["rabbit"])
    built = build_broker(topology)
    received: list = []
    capture("rabbit", built[0], topology, received)
    store = ReportStore(f"sqlite:///{tmp_path / 'flaky.db'}")
    ReportSubscriber(store, topology).attach(built[0])
    failures: list = []
    senders = iter([37, 11])  # the first connection drops after 37 messages, the second after 11 more

    def factory(t: Topology) -> Sender:
        fail_after = next(senders, -1)
        return FlakySender(t, built=built, fail_after=fail_after, on_fail=lambda m: failures.append((m.position, relay.position())))

    async def run() -> Any:
        async with TestRabbitBroker(built[0]):
            return await relay.run(once=True)

    relay = Relay(settings, topology, app=app, batch_size=10, sender_factory=factory)
    try:
        stats = asyncio.run(run())
    finally:
        relay.tracking.dispose()
    assert len(failures) == 2 and stats.reconnects == 2
    for failed_at, tracked in failures:
        # Nothing at or after the unconfirmed message was recorded as done.
        assert tracked < failed_at
    ids = [b["event_id"] for b, _ in received]
    assert len(ids) > len(expected)  # re-sent, never lost ...
    assert set(ids) == {str(m.event_id) for m in expected}
    positions = [b["position"] for b, _ in received]
    assert positions != sorted(positions)  # ... so some arrived again after later ones
    state = store.state()
    assert state["applied"] == len(expected) and state["repeats"] == len(ids) - len(expected)
    assert report_totals(reports_of(store, months_of(expected))) == ledger_totals(app)
    store.close()
    app.close()


def test_on_the_demo_dataset_the_report_equals_the_ledgers_own_totals(database_url, tmp_path):
    """The bar of the issue, at small scale: ``ledger demo``'s dataset (infra.demo), relayed to
    the report subscriber; per street and month its totals equal the ledger's own."""
    from datetime import date

    from infra.demo import demo_app, generate
    from infra.settings import Settings

    settings = Settings(database_url=database_url)
    app = demo_app(settings, start=date(2026, 1, 1))
    generate(app, recipients=25, years=(2026,), until=date(2026, 10, 31))
    topology = Topology("rabbit", URLS["rabbit"])
    built = build_broker(topology)
    store = ReportStore(f"sqlite:///{tmp_path / 'demo-reports.db'}")
    ReportSubscriber(store, topology).attach(built[0])

    async def run() -> Any:
        async with TestRabbitBroker(built[0]):
            relay = Relay(settings, topology, app=app, sender_factory=lambda t: Sender(t, built=built))
            try:
                return await relay.run(once=True)
            finally:
                relay.tracking.dispose()

    stats = asyncio.run(run())
    expected = expected_messages(app)
    assert stats.published == len(expected) == store.state()["applied"]
    months = months_of(expected)
    theirs = ledger_totals(app)
    assert len(months) >= 6 and len(theirs) >= 15
    assert report_totals(reports_of(store, months)) == theirs
    store.close()
    app.close()
