"""The consumer's side of at-least-once delivery (ADR 0011): ``infra.contract.consumer`` hands each
public message to a handler once, in position order, whatever the broker repeats; and the AsyncAPI
document says what a consumer may rely on.

The deliveries below are the shapes a relay restart produces: a run of repeats from the relay's
last recorded position, a ``--from N`` re-publication, a replay followed by the live queue."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker
from faststream.nats.testing import TestNatsBroker
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.testing import TestRabbitBroker
from pydantic import ValidationError

from infra.contract import asyncapi
from infra.contract import messages as pm
from infra.contract.consumer import Deduplicator, FilePositions, MemoryPositions, Outcome, SqlPositions
from infra.contract.mapping import replay_completed
from infra.relay import _headers
from infra.settings import Settings

NS = uuid.UUID("0b9d3c61-2f0e-4b8a-9a59-5d0f1f6e7c21")


def event(position: int, recipient: str = "r-1") -> pm.SocialHelpGranted:
    """A public message at ``position``; the same position always has the same event id."""
    return pm.SocialHelpGranted(
        event_id=uuid.uuid5(NS, str(position)),
        position=position,
        recipient_key=recipient,
        recorded_at=datetime(2026, 5, 1, 2, position % 60, tzinfo=timezone.utc),
        payload=pm.SocialHelpGrantedPayload(amount=f"{position}.00", organisation=None, period="2026-01-01..2026-12-31"),
    )


def body(position: int, recipient: str = "r-1") -> dict[str, Any]:
    return event(position, recipient).model_dump(mode="json")


# Positions have gaps (skipped internal events). Relay killed after 13 was out but only 5 recorded:
# the restart sends 8, 13 again; then someone re-publishes with --from 3; then one broker redelivery.
LOG = [3, 5, 8, 13, 21, 34]
DELIVERIES = [3, 5, 8, 13, 8, 13, 21, 3, 5, 8, 13, 21, 34, 34]


# ---------------------------------------------------------------------------------- faststream
def _subscribe(kind: str, broker: Any, handler: Any) -> None:
    if kind == "rabbit":
        broker.subscriber(RabbitQueue("events"), ack_policy=AckPolicy.NACK_ON_ERROR)(handler)
    else:
        broker.subscriber("ledger.events.>", stream=JStream("LEDGER_EVENTS", declare=False), ack_policy=AckPolicy.NACK_ON_ERROR)(handler)


async def _publish(kind: str, broker: Any, data: dict[str, Any]) -> None:
    if kind == "rabbit":
        await broker.publish(data, queue="events", message_id=data["event_id"])
    else:
        await broker.publish(data, f"ledger.events.{data['type']}", headers={"Nats-Msg-Id": data["event_id"]})


@pytest.mark.parametrize("kind", ["rabbit", "nats"])
def test_a_faststream_handler_sees_each_position_once_in_log_order(kind):
    broker = RabbitBroker() if kind == "rabbit" else NatsBroker()
    test_broker = TestRabbitBroker if kind == "rabbit" else TestNatsBroker
    dedup = Deduplicator(MemoryPositions(), stream="district-a")
    seen: list[tuple[int, uuid.UUID, str]] = []

    @dedup
    async def on_event(message: pm.Envelope) -> None:
        seen.append((message.position, message.event_id, type(message).__name__))

    _subscribe(kind, broker, on_event)

    async def run() -> None:
        async with test_broker(broker):
            for p in DELIVERIES:
                await _publish(kind, broker, body(p))

    asyncio.run(run())
    assert [p for p, _, _ in seen] == LOG
    assert [e for _, e, _ in seen] == [uuid.uuid5(NS, str(p)) for p in LOG]
    assert {name for _, _, name in seen} == {"SocialHelpGranted"}  # parsed into the contract's model
    assert dedup.stats.delivered == len(DELIVERIES)
    assert dedup.stats.processed == len(LOG)
    assert dedup.stats.repeats == len(DELIVERIES) - len(LOG)
    assert dedup.last() == dedup.last("district-a") == 34
    assert dedup.store.last("district-b") is None


def test_a_failing_handler_leaves_the_position_so_the_redelivery_is_processed():
    broker = RabbitBroker()
    dedup = Deduplicator()
    seen: list[int] = []
    fail_once = {8}

    @dedup
    def on_event(message: pm.Envelope) -> None:  # a plain def works too
        if message.position in fail_once:
            fail_once.discard(message.position)
            raise RuntimeError("downstream database unavailable")
        seen.append(message.position)

    _subscribe("rabbit", broker, on_event)

    async def run() -> None:
        async with TestRabbitBroker(broker):
            await _publish("rabbit", broker, body(3))
            await _publish("rabbit", broker, body(5))
            with pytest.raises(RuntimeError):
                await _publish("rabbit", broker, body(8))  # nacked: the broker redelivers it
            assert dedup.last() == 5
            for p in (8, 13):
                await _publish("rabbit", broker, body(p))

    asyncio.run(run())
    assert seen == [3, 5, 8, 13]
    assert dedup.stats.processed == 4 and dedup.stats.repeats == 0


# ---------------------------------------------------------------------------------- SQL store
@pytest.fixture
def consumer_engine(database_url):
    engine = sa.create_engine(Settings(database_url=database_url).sqlalchemy_url())
    yield engine
    engine.dispose()


def _work_table(engine: sa.Engine) -> sa.Table:
    metadata = sa.MetaData()
    table = sa.Table(
        "consumer_work",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("worker", sa.String(20), nullable=False),
    )
    metadata.create_all(engine)
    return table


def _work(engine: sa.Engine, table: sa.Table) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(table.c.position).order_by(table.c.id))]


def test_sql_positions_commit_and_roll_back_with_the_consumers_own_work(consumer_engine):
    """SQLite and PostgreSQL: the handler's row and the position are one transaction; a consumer
    restarted over the same database drops what it already did."""
    work = _work_table(consumer_engine)
    broker = RabbitBroker()
    dedup = Deduplicator(SqlPositions(consumer_engine), stream="ledger")
    explode_after_writing = {13}

    @dedup.transactional
    def on_event(message: pm.Envelope, conn: sa.Connection) -> None:
        conn.execute(work.insert().values(position=message.position, worker="a"))
        if message.position in explode_after_writing:
            explode_after_writing.discard(message.position)
            raise RuntimeError("crash after the consumer's own write")

    _subscribe("rabbit", broker, on_event)

    async def run(positions: list[int]) -> None:
        async with TestRabbitBroker(broker):
            for p in positions:
                try:
                    await _publish("rabbit", broker, body(p))
                except RuntimeError:
                    assert p == 13
                    assert _work(consumer_engine, work) == [3, 5, 8]  # its row rolled back with the position
                    assert dedup.last() == 8

    asyncio.run(run(DELIVERIES[:4]))  # 3 5 8 13(fails)
    asyncio.run(run(DELIVERIES[4:]))  # 8 13(redelivered) 21 3 5 8 13 21 34 34
    assert _work(consumer_engine, work) == LOG

    # The consumer restarts: a new deduplicator over the same table continues where it was.
    again = Deduplicator(SqlPositions(consumer_engine), stream="ledger")
    assert again.last() == 34
    outcomes = [again.process_in_transaction(body(p), lambda m, conn: conn.execute(work.insert().values(position=m.position, worker="b"))) for p in (21, 34, 55)]
    assert outcomes == [Outcome.REPEAT, Outcome.REPEAT, Outcome.PROCESSED]
    assert _work(consumer_engine, work) == [*LOG, 55]


def test_two_workers_on_one_stream_never_both_take_a_message(consumer_engine):
    """Two consumers racing over the same deliveries (SQLite and PostgreSQL): the conditional
    update lets exactly one of them take each position. A lost race on a lock is an error the
    broker would redeliver; here the worker simply tries again."""
    work = _work_table(consumer_engine)
    deliveries = [body(p) for p in range(1, 41)]
    errors: list[BaseException] = []
    processed: dict[str, int] = {}

    def worker(name: str) -> None:
        try:
            # Each worker as its own process would: its own store object over the same table.
            dedup = Deduplicator(SqlPositions(consumer_engine), stream="ledger")
            for data in deliveries:
                for _ in range(50):
                    try:
                        dedup.process_in_transaction(data, lambda m, conn: conn.execute(work.insert().values(position=m.position, worker=name)))
                        break
                    except (sa.exc.OperationalError, sa.exc.IntegrityError):
                        continue  # "database is locked" / a concurrent first insert: redelivered
                else:
                    raise AssertionError(f"{name}: position {data['position']} never got through")
            processed[name] = dedup.stats.processed
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    done = _work(consumer_engine, work)
    assert sorted(done) == list(range(1, 41))  # each once, none lost
    assert sum(processed.values()) == 40


# ---------------------------------------------------------------------------------- other stores
def test_file_positions_survive_a_restart_and_keep_the_old_content_on_failure(tmp_path):
    path = tmp_path / "positions.json"
    first = Deduplicator(FilePositions(path), stream="ledger")
    seen: list[int] = []
    for p in (3, 5, 8):
        assert first.process(body(p), lambda m: seen.append(m.position)) is Outcome.PROCESSED
    assert json.loads(path.read_text(encoding="utf-8")) == {"ledger": 8}

    def broken(message: pm.Envelope) -> None:
        raise RuntimeError("handler failed")

    restarted = Deduplicator(FilePositions(path), stream="ledger")
    with pytest.raises(RuntimeError):
        restarted.process(body(13), broken)
    assert json.loads(path.read_text(encoding="utf-8")) == {"ledger": 8}
    assert [restarted.process(body(p), lambda m: seen.append(m.position)) for p in (5, 8, 13)] == [Outcome.REPEAT, Outcome.REPEAT, Outcome.PROCESSED]
    assert seen == [3, 5, 8, 13]
    assert restarted.last() == 13
    assert [f.name for f in tmp_path.iterdir()] == ["positions.json"]  # no temporary file left


def test_the_replay_marker_reaches_the_handler_and_covers_the_live_repeats():
    """Catch-up: the live queue buffers from position 5 on, the replay covers the log up to the
    head (21, an unpublished event) and closes with the marker; then the live queue drains."""
    dedup = Deduplicator()
    seen: list[Any] = []
    handle = lambda m: seen.append("marker" if isinstance(m, pm.ReplayCompleted) else m.position)  # noqa: E731
    replay = [body(p) for p in (3, 5, 8, 13)] + [replay_completed("reports", 21).model_dump(mode="json")]
    live = [body(p) for p in (5, 8, 13, 34)]
    for data in replay + live:
        dedup.process(data, handle)
    assert seen == [3, 5, 8, 13, "marker", 34]
    assert dedup.stats.repeats == 3
    # A marker at or below the last position (the head was a published event) still gets through.
    dedup.process(replay_completed("reports", 34).model_dump(mode="json"), handle)
    assert seen[-1] == "marker" and dedup.last() == 34


def test_a_body_outside_the_contract_is_dropped_and_counted_or_raised_when_strict():
    bad = {**body(5), "type": "social_help.revoked"}
    dedup = Deduplicator()
    assert dedup.process(bad, lambda m: pytest.fail("handled")) is Outcome.INVALID
    assert dedup.stats.invalid == 1 and dedup.last() is None
    assert dedup.process(body(5), lambda m: None) is Outcome.PROCESSED
    with pytest.raises(ValidationError):
        Deduplicator(strict=True).process(bad, lambda m: None)


def test_a_stream_per_key_for_a_transport_ordered_only_per_key():
    """Kafka keeps the log order per key (the relay's key is the recipient), not across keys."""
    arrival = [body(1, "a"), body(4, "a"), body(2, "b"), body(4, "a"), body(3, "b"), body(2, "b")]
    per_key = Deduplicator(stream=lambda m: m.recipient_key or "none")
    seen: list[int] = []
    for data in arrival:
        per_key.process(data, lambda m: seen.append(m.position))
    assert seen == [1, 4, 2, 3]
    assert per_key.store.last("a") == 4 and per_key.store.last("b") == 3
    with pytest.raises(TypeError):
        per_key.last()
    # One stream for the same arrival would drop 2 and 3: the reason for the per-key name.
    one = Deduplicator()
    assert [one.process(d, lambda m: None) for d in arrival].count(Outcome.PROCESSED) == 2


def test_an_async_handler_cannot_be_transactional():
    async def handler(message: pm.Envelope, conn: Any) -> None: ...

    with pytest.raises(TypeError):
        Deduplicator().transactional(handler)


# ---------------------------------------------------------------------------------- the document
def test_the_asyncapi_document_states_the_delivery_guarantee():
    doc = json.loads(asyncapi.DOCUMENT.read_text(encoding="utf-8"))
    info = doc["info"]["description"]
    for phrase in ("at least once", "message_id", "deduplication key", "Positions strictly increase", "never a gap"):
        assert phrase in info, phrase
    sent = list(_headers(event(1)))
    assert sent == list(asyncapi.HEADERS)  # every header the relay sets is described, none more
    messages = doc["components"]["messages"]
    assert len(messages) == len(doc["channels"]) > 20
    for key, message in messages.items():
        type_ = key.split(":", 1)[0]
        assert "message_id" in message["description"] and "position" in message["description"]
        assert "deduplication key" in message["correlationId"]["description"]
        headers = message["headers"]
        assert headers["required"] == sent
        assert all(spec["description"] for spec in headers["properties"].values())
        assert headers["properties"]["Ledger-Type"]["const"] == type_
        assert "deduplication key" in headers["properties"]["Ledger-Event-Id"]["description"]
        assert "strictly increasing" in headers["properties"]["Ledger-Position"]["description"]
    envelope = doc["components"]["schemas"]["SocialHelpGranted"]["properties"]
    assert "deduplication key" in envelope["event_id"]["description"]
    assert "strictly increasing" in envelope["position"]["description"]
