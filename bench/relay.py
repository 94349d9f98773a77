"""Relay throughput to RabbitMQ: events per second through the relay (store → mapping → publish
→ publisher confirm → tracked position), beside faststream publishing the same payloads through
the same publishers with confirms and no store in between, and the ratio (ADR 0011).

    .venv/bin/python -m bench.relay [--recipients 40] [--months 3] [--database-url URL]
                                    [--broker-url amqp://guest:guest@127.0.0.1:5672/]

Without ``--database-url`` the ledger is generated through the commands into a temporary SQLite
file. The exchange and the queue bound to it are named uniquely and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra.relay import Relay, Sender, StoreReader, Topology  # noqa: E402
from infra.sample_ledger import START, build  # noqa: E402
from infra.settings import Settings  # noqa: E402
from infra.wiring import build_app, ensure_policy  # noqa: E402


def ledger(database_url: str | None, recipients: int, months: int) -> tuple[Settings, object]:
    if database_url is None:
        database_url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-relay-')) / 'ledger.db'}"
        settings = Settings(database_url=database_url)
        app = build_app(settings, publish_policy=False)
        ensure_policy(app, START - timedelta(days=1))
        t0 = time.perf_counter()
        build(app, recipients, months=months)
        print(f"generated {app.recorder.max_notification_id()} events through the commands in {time.perf_counter() - t0:.1f}s")
        return settings, app
    settings = Settings(database_url=database_url)
    return settings, build_app(settings, publish_policy=False)


async def bind_queue(topology: Topology, queue: str) -> None:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    broker = RabbitBroker(topology.url, log_level=logging.DEBUG)
    async with broker:
        await broker.connect()
        ex = await broker.declare_exchange(RabbitExchange(topology.exchange, type=ExchangeType.TOPIC, durable=True))
        q = await broker.declare_queue(RabbitQueue(queue, durable=True))
        await q.bind(ex, routing_key="#")


async def cleanup(topology: Topology, queues: list[str]) -> None:
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(topology.url, log_level=logging.DEBUG)
    async with broker:
        await broker.connect()
        channel = await broker._connection.channel()  # noqa: SLF001 - plain aio-pika for deletes
        for q in queues:
            await channel.queue_delete(q)
        await channel.exchange_delete(topology.exchange)
        await channel.close()


async def publish_only(topology: Topology, messages: list) -> float:
    """faststream alone: the same messages, the same publishers, one confirm each."""
    sender = Sender(topology, connection_name="ledger-bench")
    await sender.start()
    try:
        t0 = time.perf_counter()
        await sender.send_all(messages)
        return time.perf_counter() - t0
    finally:
        await sender.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipients", type=int, default=40)
    p.add_argument("--months", type=int, default=3)
    p.add_argument("--database-url", default=None)
    p.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--batch-size", type=int, default=200)
    args = p.parse_args()

    settings, app = ledger(args.database_url, args.recipients, args.months)
    tag = f"bench{secrets.token_hex(3)}"
    topology = Topology("rabbit", args.broker_url, exchange=f"{tag}.events")
    queue = f"{tag}.sink"
    asyncio.run(bind_queue(topology, queue))
    try:
        relay = Relay(settings, topology, app=app, name=tag, batch_size=args.batch_size)
        t0 = time.perf_counter()
        stats = asyncio.run(relay.run(once=True, start=0))
        relay_s = time.perf_counter() - t0
        relay.tracking.dispose()

        reader, messages, position = StoreReader(app), [], 0
        while True:
            page = reader.read(position, 1000)
            if page.last == position:
                break
            messages.extend(page.messages)
            position = page.last
        plain_s = asyncio.run(publish_only(topology, messages))
    finally:
        asyncio.run(cleanup(topology, [queue]))

    n = stats.published
    relay_rate = n / relay_s
    plain_rate = len(messages) / plain_s
    print(f"relay (SQLite store → RabbitMQ, confirms, tracked per {args.batch_size}): {n} events in {relay_s:.2f}s = {relay_rate:,.0f} events/s")
    print(f"faststream alone (same payloads, same publishers, confirms):    {len(messages)} events in {plain_s:.2f}s = {plain_rate:,.0f} events/s")
    print(f"ratio relay / faststream alone: {relay_rate / plain_rate:.2f}")


if __name__ == "__main__":
    main()
