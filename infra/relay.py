"""The relay: the notification log → public messages → the broker, at least once (ADR 0011).

The event store is already an outbox. The relay reads the log from its own tracked position
(table ``relay_tracking`` in the ledger's database), maps each event to its public message
(:mod:`infra.contract`), publishes it through faststream and waits for the broker's confirmation
(RabbitMQ publisher confirms, the JetStream ``PubAck``, Kafka's acks, Redis' ``XADD`` id); only
then does it record the position. A crash or a broker outage therefore re-sends, never loses; the
message id is the event id, so consumers drop the repeats.

Destinations, chosen by ``LEDGER_BROKER`` and ``LEDGER_BROKER_URL`` only:

==========  ====================================================================================
rabbit      topic exchange ``ledger.events``, routing key ``recipient.<recipient key>.<type>``,
            persistent messages, ``message_id`` = event id
nats        JetStream stream ``LEDGER_EVENTS`` on subjects ``ledger.events.<type>``; header
            ``Nats-Msg-Id`` = event id (server-side dedup), recipient in ``Ledger-Recipient-Key``
redis       stream ``ledger.events``
kafka       topic ``ledger.events``, key = recipient key (one recipient, one partition)
==========  ====================================================================================

Messages are published one at a time, each confirmed before the next, so every destination sees
them in log order (RabbitMQ and JetStream keep that order per queue / stream; Kafka per key).

A replay (``replay()``) re-reads the log from any position into one subscriber's own replay
destination and closes it with a ``relay.replay_completed`` marker: that is how a new subscriber
catches up (ADR 0011).

The integrity chain's numbered checkpoints (ADR 0016) go out too, as ``chain.checkpoint_sealed``,
each right after the last event it seals, so that every subscriber holds a copy outside the
ledger's database. They are tracked by number in their own row (``<name>:checkpoints``).

faststream has no synchronous API: the relay is a coroutine; the CLI runs it with
``asyncio.run``; the store is read in a worker thread so the loop keeps the broker's heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import sqlalchemy as sa
from pydantic import PydanticUserError, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra import integrity
from infra.contract import mapping
from infra.contract import messages as pm
from infra.settings import Settings, get_settings
from ledger.values import CST

log = logging.getLogger("ledger.relay")

DEFAULT_URLS = {
    "rabbit": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379",
    "kafka": "127.0.0.1:9092",
}
PUBLISH_TIMEOUT_S = 10.0
PIPELINE = 256  # RabbitMQ publishes awaiting their confirms at once (order kept: Sender.send_all)


class RelaySettings(BaseSettings):
    """Names of the destinations (``LEDGER_RELAY_…``); the broker itself is ``LEDGER_BROKER``."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_RELAY_", extra="ignore")

    exchange: str = "ledger.events"  # rabbit exchange, NATS subject prefix, Redis stream, Kafka topic
    stream: str = "LEDGER_EVENTS"  # JetStream stream
    name: str = "main"  # the tracking row: two relays with different names track separately
    batch_size: int = 200
    poll_interval: float = 0.5


@dataclass(frozen=True)
class Topology:
    """Where the public messages go: the broker and the names of the destinations."""

    kind: str = "rabbit"
    url: str = DEFAULT_URLS["rabbit"]
    exchange: str = "ledger.events"
    stream: str = "LEDGER_EVENTS"

    @classmethod
    def from_settings(cls, settings: Settings | None = None, relay: RelaySettings | None = None) -> "Topology":
        settings = settings or get_settings()
        relay = relay or RelaySettings()
        url = settings.broker_url
        if settings.broker != "rabbit" and url == Settings.model_fields["broker_url"].default:
            url = DEFAULT_URLS[settings.broker]  # the default URL is RabbitMQ's
        return cls(settings.broker, url, relay.exchange, relay.stream)

    # names ------------------------------------------------------------------------------
    def subject(self, type_: str) -> str:
        return f"{self.exchange}.{type_}"

    @property
    def replay_prefix(self) -> str:
        """Sibling of the live prefix (``ledger.events`` → ``ledger.replay``), so that a replay
        stream never overlaps the live stream's subjects."""
        head, _, _ = self.exchange.rpartition(".")
        return f"{head}.replay" if head else f"{self.exchange}_replay"

    def replay_queue(self, destination: str) -> str:
        return f"{destination}.replay"

    def replay_stream(self, destination: str) -> str:
        return f"{self.stream}_REPLAY_{safe_name(destination)}"

    def replay_subject(self, destination: str, type_: str = ">") -> str:
        return f"{self.replay_prefix}.{safe_name(destination)}.{type_}"

    def replay_topic(self, destination: str) -> str:
        return f"{self.exchange}.replay.{destination}"


def safe_name(name: str) -> str:
    """A name usable as a JetStream stream or consumer name (no dots, no wildcards)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def routing_key(message: pm.Envelope) -> str:
    """RabbitMQ routing key: ``recipient.<recipient key>.<type>`` (``none`` for policy events)."""
    return f"recipient.{message.recipient_key or 'none'}.{message.type}"


def _headers(message: pm.Envelope) -> dict[str, str]:
    return {
        "Ledger-Event-Id": str(message.event_id),
        "Ledger-Position": str(message.position),
        "Ledger-Recipient-Key": message.recipient_key or "",
        "Ledger-Type": message.type,
        "Ledger-Schema-Version": str(message.schema_version),
    }


def _describe(cls: type[pm.Envelope]) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc or f"{cls.model_fields['type'].default}, schema version {pm.SCHEMA_VERSION}"


# ---------------------------------------------------------------------------------- broker
class Sender:
    """One faststream broker with one documented publisher per message type."""

    def __init__(self, topology: Topology, *, connection_name: str = "ledger-relay", built: tuple[Any, dict[str, Any]] | None = None):
        self.topology = topology
        self.kind = topology.kind
        # A broker built elsewhere (faststream's in-memory test brokers) is not started or stopped here.
        self.owned = built is None
        self.broker, self.publishers = built or build_broker(topology, connection_name=connection_name)
        self._replay_ready: set[str] = set()

    async def start(self) -> None:
        if not self.owned:
            return
        await self.broker.start()
        if self.kind == "rabbit":
            from faststream.rabbit import ExchangeType, RabbitExchange

            await self.broker.declare_exchange(RabbitExchange(self.topology.exchange, type=ExchangeType.TOPIC, durable=True))

    async def stop(self) -> None:
        if not self.owned:
            return
        try:
            await asyncio.wait_for(self.broker.stop(), 5)
        except Exception as exc:  # noqa: BLE001 - a broken connection may not close cleanly
            log.debug("broker stop: %r", exc)

    async def send(self, message: pm.Envelope) -> None:
        """Publish one message and wait for the broker's confirmation (raises if none)."""
        body = message.model_dump(mode="json")
        eid = str(message.event_id)
        pub = self.publishers[message.type]
        headers = _headers(message)
        if self.kind == "rabbit":
            frame = await pub.publish(
                body,
                routing_key=routing_key(message),
                message_id=eid,
                correlation_id=eid,
                message_type=message.type,
                timestamp=message.recorded_at,
                headers=headers,
                timeout=PUBLISH_TIMEOUT_S,
            )
            self._confirmed(frame)
        elif self.kind == "nats":
            ack = await pub.publish(body, headers={**headers, "Nats-Msg-Id": eid}, correlation_id=eid, timeout=PUBLISH_TIMEOUT_S)
            if ack is None and self.owned:
                raise RuntimeError("JetStream returned no PubAck")
        elif self.kind == "redis":
            await asyncio.wait_for(pub.publish(body, headers=headers, correlation_id=eid), PUBLISH_TIMEOUT_S)
        else:  # kafka
            await asyncio.wait_for(
                pub.publish(body, key=(message.recipient_key or "none").encode(), headers=headers, correlation_id=eid),
                PUBLISH_TIMEOUT_S,
            )

    async def send_all(self, messages: list[pm.Envelope]) -> None:
        """Publish ``messages`` in order and return once every one is confirmed (raises if any is not).

        RabbitMQ: up to ``PIPELINE`` publishes in flight on the one channel, still in log order on
        the wire: the next publish starts only once the previous one holds its delivery tag, and
        aiormq hands out tags and writes frames under one lock, so tag order is wire order. Were
        the publishers ever on another channel, the tag would not move and this degrades to one
        confirm at a time. Other brokers: one confirm at a time.
        """
        if self.kind != "rabbit" or not self.owned or PIPELINE <= 1:
            for m in messages:
                await self.send(m)
            return
        channel = await self.broker._channel.get_underlay_channel()  # noqa: SLF001 - the publishers' channel
        in_flight: deque[asyncio.Task[None]] = deque()
        try:
            for m in messages:
                tag = channel.delivery_tag
                task = asyncio.create_task(self.send(m))
                while channel.delivery_tag == tag and not task.done():
                    await asyncio.sleep(0)
                in_flight.append(task)
                while in_flight and (len(in_flight) >= PIPELINE or in_flight[0].done()):
                    await in_flight.popleft()
            while in_flight:
                await in_flight.popleft()
        except BaseException:
            for t in in_flight:
                t.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise

    def _confirmed(self, frame: Any) -> None:
        """RabbitMQ publisher confirms: only a ``Basic.Ack`` counts (an in-memory test broker has none)."""
        from pamqp.commands import Basic

        if self.owned and not isinstance(frame, Basic.Ack):
            raise RuntimeError(f"RabbitMQ did not confirm the message: {frame!r}")

    async def prepare_replay(self, destination: str) -> None:
        """Create the replay destination so that nothing published into it is dropped."""
        if destination in self._replay_ready or not self.owned:
            return
        if self.kind == "rabbit":
            from faststream.rabbit import RabbitQueue

            await self.broker.declare_queue(RabbitQueue(self.topology.replay_queue(destination), durable=True))
        elif self.kind == "nats":
            await ensure_stream(self.broker, self.topology.replay_stream(destination), [self.topology.replay_subject(destination)])
        self._replay_ready.add(destination)

    async def send_replay(self, destination: str, message: pm.Envelope) -> None:
        body = message.model_dump(mode="json")
        eid = str(message.event_id)
        headers = _headers(message)
        t = self.topology
        if self.kind == "rabbit":
            frame = await self.broker.publish(
                body,
                queue=t.replay_queue(destination),
                message_id=eid,
                correlation_id=eid,
                message_type=message.type,
                persist=True,
                mandatory=False,
                headers=headers,
                timeout=PUBLISH_TIMEOUT_S,
            )
            self._confirmed(frame)
        elif self.kind == "nats":
            ack = await self.broker.publish(
                body,
                t.replay_subject(destination, message.type),
                headers={**headers, "Nats-Msg-Id": eid},
                correlation_id=eid,
                stream=t.replay_stream(destination),
                timeout=PUBLISH_TIMEOUT_S,
            )
            if ack is None and self.owned:
                raise RuntimeError("JetStream returned no PubAck")
        elif self.kind == "redis":
            await self.broker.publish(body, stream=t.replay_topic(destination), headers=headers, correlation_id=eid)
        else:
            await self.broker.publish(body, t.replay_topic(destination), key=(message.recipient_key or "none").encode(), headers=headers, correlation_id=eid)


async def ensure_stream(broker: Any, name: str, subjects: list[str]) -> None:
    """Create a JetStream stream (file storage, 2-minute dedup window) unless it exists."""
    from nats.js.errors import BadRequestError

    js = broker.connection.jetstream()
    try:
        await js.add_stream(name=name, subjects=subjects, duplicate_window=120)
    except BadRequestError:
        await js.stream_info(name)


def build_broker(topology: Topology, *, connection_name: str = "ledger-relay", specification_url: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The faststream broker for ``topology`` and one publisher per public message type.

    The same function builds the broker the relay publishes through and the one the AsyncAPI
    document is generated from, so the document describes exactly what is sent.
    """
    quiet = logging.DEBUG
    kind = topology.kind
    publishers: dict[str, Any] = {}
    classes = [c for c in pm.MESSAGE_CLASSES if c is not pm.ReplayCompleted]
    if kind == "rabbit":
        from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange

        broker = RabbitBroker(
            topology.url,
            client_properties={"connection_name": connection_name},
            reconnect_interval=1.0,
            log_level=quiet,
            specification_url=specification_url,
            description="Public events of the medical-aid ledger (医疗救助台账), schema version 1.",
        )
        exchange = RabbitExchange(topology.exchange, type=ExchangeType.TOPIC, durable=True)
        for cls in classes:
            t = cls.model_fields["type"].default
            publishers[t] = broker.publisher(
                exchange=exchange,
                routing_key="recipient.{recipient_key}." + t,
                persist=True,
                mandatory=False,
                title=t,
                description=_describe(cls),
                schema=cls,
            )
    elif kind == "nats":
        from faststream.nats import JStream, NatsBroker

        broker = NatsBroker(
            topology.url,
            name=connection_name,
            connect_timeout=2,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            log_level=quiet,
            specification_url=specification_url,
        )
        stream = JStream(topology.stream, subjects=[topology.subject(">")], duplicate_window=120)
        for cls in classes:
            t = cls.model_fields["type"].default
            publishers[t] = broker.publisher(topology.subject(t), stream=stream, title=t, description=_describe(cls), schema=cls)
    elif kind == "redis":
        from faststream.redis import RedisBroker

        broker = RedisBroker(topology.url, log_level=quiet, specification_url=specification_url)
        for cls in classes:
            t = cls.model_fields["type"].default
            publishers[t] = broker.publisher(stream=topology.exchange, title=t, description=_describe(cls), schema=cls)
    elif kind == "kafka":
        from faststream.kafka import KafkaBroker

        broker = KafkaBroker(topology.url, log_level=quiet, specification_url=specification_url, acks="all", enable_idempotence=True)
        for cls in classes:
            t = cls.model_fields["type"].default
            publishers[t] = broker.publisher(topology.exchange, title=t, description=_describe(cls), schema=cls)
    else:
        raise ValueError(f"unknown broker {kind!r}: rabbit, nats, redis or kafka")
    return broker, publishers


# ---------------------------------------------------------------------------------- tracking
_metadata = sa.MetaData()
relay_tracking = sa.Table(
    "relay_tracking",
    _metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("published", sa.BigInteger, nullable=False, default=0),
    sa.Column("updated_at", sa.String(40), nullable=False),
)


class Tracking:
    """The relay's position, in a small table of the ledger's own database."""

    def __init__(self, url: str):
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        _metadata.create_all(self.engine)

    def load(self, name: str) -> int:
        return self.state(name)[0]

    def state(self, name: str) -> tuple[int, int]:
        """(position, messages published up to it, counted over this row's life)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(relay_tracking.c.position, relay_tracking.c.published).where(relay_tracking.c.name == name)).first()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def save(self, name: str, position: int, published: int) -> None:
        now = datetime.now(CST).isoformat()  # people's clock, +08:00
        with self.engine.begin() as conn:
            done = conn.execute(
                relay_tracking.update()
                .where(relay_tracking.c.name == name)
                .values(position=position, published=relay_tracking.c.published + published, updated_at=now)
            ).rowcount
            if not done:
                conn.execute(relay_tracking.insert().values(name=name, position=position, published=published, updated_at=now))

    def dispose(self) -> None:
        self.engine.dispose()


# ---------------------------------------------------------------------------------- store
@dataclass
class Page:
    last: int  # the last notification id read (published or not)
    messages: list[pm.Envelope]
    skipped: Counter = field(default_factory=Counter)


class StoreReader:
    """Reads the ledger's notification log and maps it to public messages."""

    def __init__(self, app: Any):
        self.app = app
        self._claims: dict[uuid.UUID, str] = {}
        self.skipped: Counter = Counter()

    def head(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def claim_recipient(self, claim_id: uuid.UUID) -> str | None:
        rid = self._claims.get(claim_id)
        if rid is None:
            rid = str(self.app.repository.get(claim_id).recipient_id)
            self._claims[claim_id] = rid
        return rid

    def checkpoints(self, after: int, up_to: int) -> list[pm.ChainCheckpointSealed]:
        """The chain's numbered checkpoints after number ``after`` that seal positions up to
        ``up_to`` (ADR 0016), as messages; none for an app without a chain."""
        try:
            chain = integrity.chain_for(self.app)
        except RuntimeError:
            return []
        return [
            mapping.checkpoint_sealed(k.number or 0, k.position, k.hash, k.recorded_at, k.kind or "", k.seal, k.previous or "")
            for k in chain.store.chain_checkpoints_after(after, up_to)
        ]

    def read(self, after: int, limit: int, stop: int | None = None) -> Page:
        notifications = self.app.recorder.select_notifications(start=after + 1, limit=limit, stop=stop)
        page = Page(last=notifications[-1].id if notifications else after, messages=[])
        for n in notifications:
            if n.topic not in mapping.MAPPED_TOPICS:
                # Deliberately skipped (mapping.SKIPPED) or unknown to this schema version.
                page.skipped[n.topic] += 1
                continue
            event = self.app.mapper.to_domain_event(n)
            if n.topic.endswith(":Claim.Lodged"):
                self._claims[event.originator_id] = event.recipient_id
            message = mapping.to_public(event, n.id, self.claim_recipient)
            if message is not None:
                page.messages.append(message)
        for topic, count in page.skipped.items():
            if topic not in mapping.SKIPPED_TOPICS and topic not in self.skipped:
                log.warning("relay: %s is not in the public contract; skipped (add it to infra/contract/mapping.py)", topic)
            self.skipped[topic] += count
        return page


def reader_app(settings: Settings) -> Any:
    """The ledger application over the configured store, wired exactly as the ledger's own (same
    mapper), for reading only: it publishes no policy."""
    from infra.wiring import build_app

    return build_app(settings, publish_policy=False)


# ---------------------------------------------------------------------------------- the relay
@dataclass
class RelayStats:
    published: int = 0  # event messages
    checkpoints: int = 0  # chain.checkpoint_sealed messages (ADR 0016)
    batches: int = 0
    reconnects: int = 0
    position: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.published / elapsed if elapsed > 0 else 0.0


class Relay:
    """Follows the notification log and publishes every public message, at least once."""

    def __init__(
        self,
        settings: Settings | None = None,
        topology: Topology | None = None,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        max_rate: float | None = None,
        app: Any = None,
        sender_factory: Callable[[Topology], Sender] | None = None,
    ):
        relay_settings = RelaySettings()
        self.settings = settings or get_settings()
        self.topology = topology or Topology.from_settings(self.settings, relay_settings)
        self.name = name or relay_settings.name
        self.batch_size = batch_size or relay_settings.batch_size
        self.poll_interval = poll_interval if poll_interval is not None else relay_settings.poll_interval
        self.max_rate = max_rate
        self.app = app if app is not None else reader_app(self.settings)
        self.reader = StoreReader(self.app)
        self.tracking = Tracking(self.settings.sqlalchemy_url())
        self.sender_factory = sender_factory or (lambda t: Sender(t, connection_name=f"ledger-relay:{self.name}"))
        self.stats = RelayStats()

    def position(self) -> int:
        return self.tracking.load(self.name)

    @property
    def checkpoints_name(self) -> str:
        return f"{self.name}:checkpoints"

    async def _pending_checkpoints(self, up_to: int) -> list[pm.ChainCheckpointSealed]:
        """The checkpoints not published yet that seal positions up to ``up_to``."""
        done = await asyncio.to_thread(self.tracking.load, self.checkpoints_name)
        return await asyncio.to_thread(self.reader.checkpoints, done, up_to)

    async def _published_checkpoints(self, sent: list[pm.ChainCheckpointSealed]) -> None:
        if sent:
            await asyncio.to_thread(self.tracking.save, self.checkpoints_name, sent[-1].payload.number, len(sent))
            self.stats.checkpoints += len(sent)

    async def _checkpoints(self, sender: Sender, up_to: int) -> None:
        """Publish the checkpoints sealed (on demand) after the events they cover went out."""
        pending = await self._pending_checkpoints(up_to)
        if pending:
            await sender.send_all(list(pending))
            await self._published_checkpoints(pending)

    async def run(self, *, once: bool = False, start: int | None = None, stop: threading.Event | None = None) -> RelayStats:
        """Publish from the tracked position (or from ``start``); with ``once``, stop at the log's
        head as it was when the run began; otherwise follow the log until ``stop`` is set."""
        stop = stop or threading.Event()
        if start is not None:  # --from N: the first position published is N (0: the beginning)
            await asyncio.to_thread(self.tracking.save, self.name, max(0, start - 1), 0)
        head = await asyncio.to_thread(self.reader.head) if once else None
        backoff = 0.5
        while not stop.is_set():
            sender = self.sender_factory(self.topology)
            try:
                await sender.start()
                backoff = 0.5
                position = await asyncio.to_thread(self.position)
                done = await self._pump(sender, position, head, stop)
                if done:
                    break
            except _FATAL:
                raise
            except Exception as exc:  # noqa: BLE001 - broker or store down: back off, resume from the tracked position
                self.stats.reconnects += 1
                log.warning("relay %s: %s: %s; resuming from the tracked position in %.1fs", self.name, type(exc).__name__, exc, backoff)
                await _sleep(backoff, stop)
                backoff = min(backoff * 2, 5.0)
            finally:
                await sender.stop()
        self.stats.position = await asyncio.to_thread(self.position)
        return self.stats

    async def _pump(self, sender: Sender, position: int, head: int | None, stop: threading.Event) -> bool:
        while not stop.is_set():
            if head is not None and position >= head:
                await self._checkpoints(sender, position)
                return True
            page = await asyncio.to_thread(self.reader.read, position, self.batch_size, head)
            if not page.messages and page.last == position:
                await self._checkpoints(sender, position)  # one sealed on demand since
                if head is not None:
                    return True
                await _sleep(self.poll_interval, stop)
                continue
            # Each checkpoint right after the last event it seals (ADR 0016).
            checkpoints = await self._pending_checkpoints(page.last)
            outgoing = interleave(page.messages, checkpoints)
            if self.max_rate:
                for message in outgoing:
                    t0 = time.monotonic()
                    await sender.send(message)
                    await asyncio.sleep(max(0.0, 1.0 / self.max_rate - (time.monotonic() - t0)))
            else:
                await sender.send_all(outgoing)
            # Only now, every message of the page confirmed: record the position.
            await asyncio.to_thread(self.tracking.save, self.name, page.last, len(page.messages))
            await self._published_checkpoints(checkpoints)
            position = page.last
            self.stats.published += len(page.messages)
            self.stats.batches += 1
            self.stats.position = position
        return False

    async def replay(self, destination: str, *, start: int = 0, up_to: int | None = None) -> int:
        """Publish the log from ``start`` up to the head (as now) into ``destination``'s replay
        destination, then the ``relay.replay_completed`` marker. Returns the position replayed to.
        Not tracked: a failed replay is simply run again (the subscriber drops repeats)."""
        head = up_to if up_to is not None else await asyncio.to_thread(self.reader.head)
        sender = self.sender_factory(self.topology)
        try:
            await sender.start()
            await sender.prepare_replay(destination)
            position = max(0, start - 1)
            sealed = 0  # the checkpoints too, each after the events it seals (ADR 0016)
            while position < head:
                page = await asyncio.to_thread(self.reader.read, position, self.batch_size, head)
                if page.last == position:
                    break
                checkpoints = await asyncio.to_thread(self.reader.checkpoints, sealed, page.last)
                sealed = checkpoints[-1].payload.number if checkpoints else sealed
                checkpoints = [k for k in checkpoints if k.position >= start]
                for message in interleave(page.messages, checkpoints):
                    await sender.send_replay(destination, message)
                position = page.last
                self.stats.published += len(page.messages)
                self.stats.checkpoints += len(checkpoints)
            await sender.send_replay(destination, mapping.replay_completed(destination, head))
        finally:
            await sender.stop()
        return head

    def close(self) -> None:
        self.tracking.dispose()
        try:
            self.app.close()
        except Exception:  # noqa: BLE001
            pass


def interleave(events: list[pm.Envelope], checkpoints: list[pm.ChainCheckpointSealed]) -> list[pm.Envelope]:
    """The page's event messages with each checkpoint right after the last one it seals."""
    out: list[pm.Envelope] = []
    pending = list(checkpoints)
    for message in events:
        while pending and pending[0].position < message.position:
            out.append(pending.pop(0))
        out.append(message)
    return out + pending


#: Errors that a retry cannot cure (a bug, a message outside the contract): the relay stops.
_FATAL = (asyncio.CancelledError, ImportError, NameError, AttributeError, TypeError, AssertionError, ValidationError, PydanticUserError)


async def _sleep(seconds: float, stop: threading.Event) -> None:
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))


def run_relay(settings: Settings | None = None, **kwargs: Any) -> RelayStats:
    """Synchronous entry point (the CLI): an event loop around :meth:`Relay.run`."""
    once = kwargs.pop("once", False)
    start = kwargs.pop("start", None)
    stop = kwargs.pop("stop", None)
    relay = Relay(settings, **kwargs)
    try:
        return asyncio.run(relay.run(once=once, start=start, stop=stop))
    finally:
        relay.close()
