"""Process each public event once, on top of the relay's at-least-once delivery (ADR 0011).

The relay re-sends after a crash or a broker outage, from its last recorded position: a consumer
sees some messages twice, never a gap, and (on one RabbitMQ queue, one JetStream consumer, one
Redis stream) always in the ledger's log order. So one number per stream is enough to drop the
repeats: the last ``position`` processed. A message at or below it has been processed already
(it is also a repeat by ``event_id``, the transport's message id); a message above it is new.

:class:`Deduplicator` keeps that number in a small :class:`PositionStore`:

- :class:`MemoryPositions`: in the process only (tests, a consumer that rebuilds from a replay on
  every start);
- :class:`FilePositions`: a JSON file, replaced atomically; the position is written after the
  handler returns, so a crash between the two runs the handler again for that one message;
- :class:`SqlPositions`: a table in SQLite or PostgreSQL (any SQLAlchemy engine). With
  :meth:`Deduplicator.transactional` the handler receives the connection and its own writes
  commit in the same transaction as the position: exactly-once effects.

Use it as a faststream handler decorator (it is broker-agnostic: it reads only the body)::

    dedup = Deduplicator(SqlPositions(engine), stream="ledger")

    @broker.subscriber(queue, exchange, channel=Channel(prefetch_count=1), ack_policy=AckPolicy.NACK_ON_ERROR)
    @dedup.transactional
    def on_event(message: Envelope, conn: sqlalchemy.Connection) -> None:
        conn.execute(...)  # commits with the position, or rolls back with it

What the position check needs from the consumer: one message at a time (prefetch 1 / max ack
pending 1) and a failed message retried before any later one (raise from the handler; faststream
nacks and the broker redelivers it first). On a transport without one order per stream (Kafka
across partitions) name the stream per ordering key (``stream=lambda m: m.recipient_key or
"none"``: the relay's Kafka key, so one partition and log order per key) or keep an event-id
inbox instead.

``relay.replay_completed`` (the marker closing a replay) is always handed to the handler and
moves the position to the replay's ``up_to_position``: with the same stream name for the replay
and the live destination, the live messages the replay covered are dropped as repeats.
``chain.checkpoint_sealed`` (ADR 0016) is always handed over too: its position is the last event
it seals, so it follows that event at the same position; keep it by its number.

Dependencies: the standard library and the contract's pydantic models; SQLAlchemy only for
:class:`SqlPositions`; faststream not at all.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from infra.contract.messages import SCHEMA_VERSION, ChainCheckpointSealed, Envelope, ReplayCompleted, parse_message

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger("ledger.contract.consumer")

__all__ = [
    "Deduplicator",
    "DedupStats",
    "FilePositions",
    "MemoryPositions",
    "Outcome",
    "PositionStore",
    "SqlPositions",
]


# ---------------------------------------------------------------------------------- stores
class PositionStore(Protocol):
    """Where a consumer keeps the last position it processed, per stream.

    ``begin()`` opens one unit of work and commits it when the block ends without an exception
    (rolls it back otherwise); ``advance`` records ``position`` in it if it is above the stream's
    last one and says whether it was (the check and the write are one step, so two workers on
    the same stream cannot both take a message).
    """

    def begin(self) -> AbstractContextManager[Any]: ...

    def advance(self, tx: Any, stream: str, position: int) -> bool: ...

    def last(self, stream: str) -> int | None: ...


class _DictPositions:
    """Positions in a dict, staged per unit of work and kept only when it ends well."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _load(self) -> dict[str, int]:
        raise NotImplementedError

    def _save(self, positions: dict[str, int]) -> None:
        raise NotImplementedError

    @contextmanager
    def begin(self) -> Iterator[dict[str, int]]:
        with self._lock:
            staged = self._load()
            before = dict(staged)
            yield staged
            if staged != before:
                self._save(staged)

    def advance(self, tx: dict[str, int], stream: str, position: int) -> bool:
        last = tx.get(stream)
        if last is not None and position <= last:
            return False
        tx[stream] = position
        return True

    def last(self, stream: str) -> int | None:
        with self._lock:
            return self._load().get(stream)


class MemoryPositions(_DictPositions):
    """In this process only: lost when it ends."""

    def __init__(self) -> None:
        super().__init__()
        self._positions: dict[str, int] = {}

    def _load(self) -> dict[str, int]:
        return dict(self._positions)

    def _save(self, positions: dict[str, int]) -> None:
        self._positions = dict(positions)


class FilePositions(_DictPositions):
    """A JSON file ``{"<stream>": <position>}``, written to a temporary file, flushed to disk and
    renamed over the old one, so a crash leaves the old or the new content, never half.

    For one consumer process (the lock is a thread lock, not a file lock). The file cannot share
    a transaction with the consumer's own work: a crash after the handler and before the write
    runs the handler again for that message, so keep the handler idempotent or use
    :class:`SqlPositions`.
    """

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__()
        self.path = Path(path)

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def _save(self, positions: dict[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(positions, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class SqlPositions:
    """A table ``(stream primary key, position)`` in SQLite or PostgreSQL, created if missing.

    ``begin()`` is the engine's transaction; :meth:`Deduplicator.transactional` hands its
    connection to the handler, so the consumer's writes and the position commit or roll back
    together. ``advance`` is one conditional ``UPDATE … WHERE position < :new`` (PostgreSQL locks
    the row until commit, SQLite the database), so two workers never both take a message.
    """

    def __init__(self, bind: "str | sa.Engine", table: str = "consumer_positions"):
        import sqlalchemy as sa

        self._owned = isinstance(bind, str)
        self.engine: sa.Engine = sa.create_engine(bind) if isinstance(bind, str) else bind
        metadata = sa.MetaData()
        self.table = sa.Table(
            table,
            metadata,
            sa.Column("stream", sa.String(200), primary_key=True),
            sa.Column("position", sa.BigInteger, nullable=False),
        )
        try:
            metadata.create_all(self.engine)
        except sa.exc.DBAPIError:
            # Another consumer process created it at the same moment.
            if not sa.inspect(self.engine).has_table(table):
                raise

    def begin(self) -> "AbstractContextManager[sa.Connection]":
        return self.engine.begin()

    def advance(self, tx: "sa.Connection", stream: str, position: int) -> bool:
        import sqlalchemy as sa

        t = self.table
        if tx.execute(t.update().where(t.c.stream == stream, t.c.position < position).values(position=position)).rowcount:
            return True
        if tx.execute(sa.select(t.c.position).where(t.c.stream == stream)).first() is not None:
            return False
        # First message of this stream. A concurrent first insert fails on the primary key: the
        # handler does not run, the message is redelivered and then found to be a repeat or not.
        tx.execute(t.insert().values(stream=stream, position=position))
        return True

    def last(self, stream: str) -> int | None:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table.c.position).where(self.table.c.stream == stream)).first()
        return None if row is None else int(row[0])

    def close(self) -> None:
        """Dispose of the engine if this store created it (from a URL)."""
        if self._owned:
            self.engine.dispose()


# ---------------------------------------------------------------------------------- deduplicator
class Outcome(str, Enum):
    PROCESSED = "processed"  # handed to the handler (a replay marker included)
    REPEAT = "repeat"  # at or below the stream's last position: dropped
    INVALID = "invalid"  # not a message of this contract version: dropped, logged


@dataclass
class DedupStats:
    delivered: int = 0
    processed: int = 0
    repeats: int = 0
    invalid: int = 0


Handler = Callable[[Envelope], "Awaitable[None] | None"]
TxHandler = Callable[[Envelope, Any], None]


class Deduplicator:
    """Hands each public message to a handler once per stream, in position order.

    ``stream``: the name under which the position is kept, or a function of the message giving
    it. One ledger store is one stream (its positions strictly increase); a consumer of several
    ledgers uses one name per ledger. ``strict``: raise on a body outside the contract instead of
    logging and dropping it (with a nack-on-error subscriber it would then be redelivered).
    """

    def __init__(self, store: PositionStore | None = None, *, stream: str | Callable[[Envelope], str] = "ledger", strict: bool = False):
        self.store: PositionStore = store if store is not None else MemoryPositions()
        self._stream = stream
        self.strict = strict
        self.stats = DedupStats()
        self._lock = threading.Lock()

    def stream_of(self, message: Envelope) -> str:
        return self._stream(message) if callable(self._stream) else self._stream

    def last(self, stream: str | None = None) -> int | None:
        """The last position processed on ``stream`` (the fixed stream name by default)."""
        if stream is None:
            if callable(self._stream):
                raise TypeError("the stream is a function of the message: name the stream")
            stream = self._stream
        return self.store.last(stream)

    # -- synchronous ------------------------------------------------------------------------
    def process(self, data: Envelope | dict[str, Any] | bytes | str, handler: Callable[[Envelope], None]) -> Outcome:
        """Parse ``data``; if it is new, call ``handler(message)``, then record its position.

        The position is recorded only after the handler returned: an exception leaves it where it
        was, so the redelivered message is handled again.
        """
        message = self._parse(data)
        if message is None:
            return Outcome.INVALID
        stream = self.stream_of(message)
        if self._is_repeat(message, stream):
            return self._count(Outcome.REPEAT, message)
        handler(message)
        self._record(message, stream)
        return self._count(Outcome.PROCESSED, message)

    def process_in_transaction(self, data: Envelope | dict[str, Any] | bytes | str, handler: TxHandler) -> Outcome:
        """Like :meth:`process`, with ``handler(message, tx)`` inside the store's unit of work: the
        position and whatever the handler writes through ``tx`` commit together (SqlPositions:
        ``tx`` is the SQLAlchemy connection)."""
        message = self._parse(data)
        if message is None:
            return Outcome.INVALID
        stream = self.stream_of(message)
        with self.store.begin() as tx:
            marker = isinstance(message, _ALWAYS)
            fresh = self.store.advance(tx, stream, _target(message))
            if not fresh and not marker:
                outcome = Outcome.REPEAT
            else:
                handler(message, tx)
                outcome = Outcome.PROCESSED
        return self._count(outcome, message)

    # -- asynchronous / faststream ----------------------------------------------------------
    async def aprocess(self, data: Envelope | dict[str, Any] | bytes | str, handler: Handler) -> Outcome:
        """:meth:`process` for an async handler (a plain def runs in a worker thread, as the store
        does, so the event loop keeps the broker's heartbeats)."""
        message = self._parse(data)
        if message is None:
            return Outcome.INVALID
        stream = self.stream_of(message)
        if await asyncio.to_thread(self._is_repeat, message, stream):
            return self._count(Outcome.REPEAT, message)
        if _is_async(handler):
            await handler(message)  # type: ignore[misc]
        else:
            result = await asyncio.to_thread(handler, message)
            if inspect.isawaitable(result):
                await result
        await asyncio.to_thread(self._record, message, stream)
        return self._count(Outcome.PROCESSED, message)

    def __call__(self, handler: Handler) -> Callable[[Any], Awaitable[None]]:
        """Decorate ``handler(message)`` (sync or async) into a faststream subscriber handler that
        takes the raw body and hands over only new messages, parsed."""

        async def consume(body: Any) -> None:
            await self.aprocess(body, handler)

        return _named_after(consume, handler)

    def transactional(self, handler: TxHandler) -> Callable[[Any], Awaitable[None]]:
        """Decorate a synchronous ``handler(message, tx)`` into a faststream subscriber handler
        that runs it in a worker thread inside the store's transaction (see
        :meth:`process_in_transaction`)."""
        if _is_async(handler):
            raise TypeError("a transactional handler runs inside a blocking transaction: make it a plain def")

        async def consume(body: Any) -> None:
            await asyncio.to_thread(self.process_in_transaction, body, handler)

        return _named_after(consume, handler)

    # -- inside -------------------------------------------------------------------------------
    def _parse(self, data: Envelope | dict[str, Any] | bytes | str) -> Envelope | None:
        with self._lock:
            self.stats.delivered += 1
        if isinstance(data, Envelope):
            return data
        try:
            return parse_message(data)
        except ValidationError as exc:
            if self.strict:
                raise
            log.warning("a message outside event contract v%s was dropped: %s", SCHEMA_VERSION, exc.errors()[:1])
            with self._lock:
                self.stats.invalid += 1
            return None

    def _is_repeat(self, message: Envelope, stream: str) -> bool:
        if isinstance(message, _ALWAYS):
            return False
        last = self.store.last(stream)
        return last is not None and message.position <= last

    def _record(self, message: Envelope, stream: str) -> None:
        with self.store.begin() as tx:
            self.store.advance(tx, stream, _target(message))

    def _count(self, outcome: Outcome, message: Envelope) -> Outcome:
        with self._lock:
            if outcome is Outcome.PROCESSED:
                self.stats.processed += 1
            else:
                self.stats.repeats += 1
        if outcome is Outcome.REPEAT:
            log.debug("repeat dropped: position %s, event %s", message.position, message.event_id)
        return outcome


#: Handed to the handler even at or below the last position: the replay marker, and the integrity
#: chain's checkpoint, whose position is the last event it seals (ADR 0016; keep it by number).
_ALWAYS = (ReplayCompleted, ChainCheckpointSealed)


def _target(message: Envelope) -> int:
    """The position a message moves the stream to (a replay marker: the replay's end)."""
    if isinstance(message, ReplayCompleted):
        return max(message.position, message.payload.up_to_position)
    return message.position


def _is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


def _named_after(wrapper: Callable[[Any], Awaitable[None]], handler: Callable[..., Any]) -> Callable[[Any], Awaitable[None]]:
    # Name and doc only: no ``__wrapped__``, or faststream would read the body with the
    # handler's own signature instead of the wrapper's ``(body: Any)``.
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(handler, attr, None)
        if value is not None:
            setattr(wrapper, attr, value)
    return wrapper
