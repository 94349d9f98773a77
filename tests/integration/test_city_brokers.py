"""The city stream on a real broker (ADR 0020): each district's relay publishes to its own
JetStream stream on the NATS server at 127.0.0.1:4222 (started by ``.ci/run``) and the city view
follows both streams through faststream, exactly once across a stop, a restart and a relay that
re-sends everything; the same code on Kafka through faststream's in-memory test broker (keyed by
recipient, the position kept per district and key).

Streams and consumers are named uniquely per test and deleted afterwards."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.testing import TestKafkaBroker

from infra.city import CityView, run_city_view
from infra.contract import messages as pm
from infra.districts import District
from infra.relay import Relay, Sender, _describe, build_broker
from infra.settings import Settings
from relay_support import BackgroundLoop, wait_until
from test_city_view import build_districts, district_facts, stream_of

NATS_URL = "nats://127.0.0.1:4222"


def fund_facts(apps: dict[str, Any], codes: dict[str, str]) -> dict[tuple[str, str], Any]:
    return {(codes[name], fund): amount for name, app in apps.items() for fund, amount in district_facts(app)["funds"].items()}


async def _delete_streams(names: list[str]) -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for name in names:
            try:
                await js.delete_stream(name)
            except Exception:  # noqa: BLE001 - not created
                pass
    finally:
        await nc.close()


async def _create_streams(districts: list[District]) -> None:
    from faststream.nats import NatsBroker

    from infra.relay import ensure_stream

    broker = NatsBroker(NATS_URL, connect_timeout=2)
    async with broker:
        await broker.connect()
        for d in districts:
            await ensure_stream(broker, d.stream, [f"{d.subject_prefix}.>"])


async def _stream_counts(districts: list[District]) -> dict[str, int]:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        return {d.stream: (await js.stream_info(d.stream)).state.messages for d in districts}
    finally:
        await nc.close()


async def _delete_consumers(districts: list[District], name: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for d in districts:
            await js.delete_consumer(d.stream, f"{name}_{d.code}")
    finally:
        await nc.close()


def publish(app: Any, district: District, *, start: int | None = None) -> int:
    """District ``district``'s relay, once up to its head (from ``start``: a re-send)."""
    relay = Relay(Settings(database_url=district.database_url), district.topology("nats", NATS_URL), app=app, name=f"city-test-{district.code}", batch_size=40)
    try:
        return asyncio.run(relay.run(once=True, start=start)).published
    finally:
        relay.tracking.dispose()


def test_two_districts_through_jetstream_into_the_city_view_exactly_once(tmp_path):
    tag = "t" + secrets.token_hex(3)
    apps, _ = build_districts(tmp_path)
    districts = {name: District(f"{tag}{name[:2]}", f"sqlite:///{tmp_path / f'{name}.db'}") for name in apps}
    codes = {name: d.code for name, d in districts.items()}
    heads = {codes[name]: stream_of(app)[-1].position for name, app in apps.items()}
    view = CityView(f"sqlite:///{tmp_path / 'city.db'}")
    try:
        asyncio.run(_create_streams(list(districts.values())))
        loop = BackgroundLoop(lambda stop: run_city_view(view, NATS_URL, districts.values(), stop=stop, name=f"city_{tag}"))
        # the two districts' relays publish while the view follows
        for name, app in apps.items():
            assert publish(app, districts[name]) > 0
        wait_until(lambda: view.positions() == heads, 30, "the city view to reach both districts' heads")
        loop.join()
        first = view.fund_totals()
        assert first == fund_facts(apps, codes)
        assert len(view.conflicts()) > 0

        # a relay that lost its position re-sends the whole log: JetStream drops the repeats by
        # message id (the event id) within its duplicate window
        counts = asyncio.run(_stream_counts(list(districts.values())))
        for name, app in apps.items():
            publish(app, districts[name], start=1)
        assert asyncio.run(_stream_counts(list(districts.values()))) == counts
        # the view's broker-side consumers are lost: new ones deliver every stream from its start,
        # and the view drops all of it by its own positions (committed with its rows)
        asyncio.run(_delete_consumers(list(districts.values()), f"city_{tag}"))
        repeats_before = {c: view.deduplicator(c).stats.repeats for c in codes.values()}
        loop = BackgroundLoop(lambda stop: run_city_view(view, NATS_URL, districts.values(), stop=stop, name=f"city_{tag}"))
        sent = {d.code: counts[d.stream] - sum(1 for msg in stream_of(apps[name]) if msg.type == "chain.checkpoint_sealed") for name, d in districts.items()}
        wait_until(lambda: all(view.deduplicator(c).stats.repeats - repeats_before[c] >= sent[c] for c in codes.values()), 30, "the redelivered messages to arrive")
        loop.join()
        assert view.fund_totals() == first and view.positions() == heads
    finally:
        view.close()
        asyncio.run(_delete_streams([d.stream for d in districts.values()]))


def test_kafka_district_topics_keyed_by_recipient_into_the_city_view(tmp_path):
    apps, moved = build_districts(tmp_path)
    districts = {name: District(name, f"sqlite:///{tmp_path / f'{name}.db'}") for name in apps}
    first, *rest = districts.values()
    broker, publishers = build_broker(first.topology("kafka"))
    built = {first.code: (broker, publishers)}
    for d in rest:  # the other districts' topics on the same (test) broker
        topic = d.topology("kafka").exchange
        built[d.code] = (broker, {cls.model_fields["type"].default: broker.publisher(topic, title=cls.model_fields["type"].default, description=_describe(cls), schema=cls) for cls in pm.MESSAGE_CLASSES if cls is not pm.ReplayCompleted})
    keys: Counter = Counter()

    @broker.subscriber(first.topology("kafka").exchange, group_id="keys")
    async def _(body: dict, msg: KafkaMessage) -> None:
        keys[(body["recipient_key"] or "none") == msg.raw_message.key.decode()] += 1

    view = CityView(f"sqlite:///{tmp_path / 'city.db'}")
    view.attach(broker, "kafka", districts.values())

    async def run() -> None:
        async with TestKafkaBroker(broker):
            for d in districts.values():
                for start in (None, 1):  # the second time: everything re-sent
                    relay = Relay(Settings(database_url=d.database_url), d.topology("kafka"), app=apps[d.code], name="kafka", batch_size=40, sender_factory=lambda t, b=built[d.code]: Sender(t, built=b))
                    try:
                        await relay.run(once=True, start=start)
                    finally:
                        relay.tracking.dispose()

    try:
        asyncio.run(run())
        assert keys[True] > 0 and keys[False] == 0, "the Kafka key is the recipient key"
        assert view.fund_totals() == fund_facts(apps, {n: n for n in apps})
        used, _ = view.cap_usage(moved, 2026)
        assert set(used) == {"changning", "xuhui"}
        assert sum(view.deduplicator(c, per_key=True).stats.repeats for c in districts) > 0
    finally:
        view.close()



def test_kill_9_of_the_city_view_process_loses_nothing_and_counts_nothing_twice(tmp_path):
    """``ledger city run`` killed with SIGKILL while it applies the districts' streams, then
    started again: the city totals equal the districts' own to the fen, every head reached."""
    tag = "k" + secrets.token_hex(3)
    apps, moved = build_districts(tmp_path)
    districts = {name: District(f"{tag}{name[:2]}", f"sqlite:///{tmp_path / f'{name}.db'}") for name in apps}
    codes = {name: d.code for name, d in districts.items()}
    heads = {codes[name]: stream_of(app)[-1].position for name, app in apps.items()}
    city_url = f"sqlite:///{tmp_path / 'city.db'}"
    env = {
        **os.environ,
        "LEDGER_DISTRICTS": ",".join(codes.values()),
        "LEDGER_CITY_DATABASE_URL": city_url,
        "LEDGER_BROKER": "nats",
        "LEDGER_BROKER_URL": NATS_URL,
        **{f"LEDGER_DISTRICT_{d.code.upper()}_DATABASE_URL": d.database_url for d in districts.values()},
    }
    command = [sys.executable, "-c", "from infra.cli import main; main()", "city", "run"]
    view = CityView(city_url)
    proc = None
    try:
        asyncio.run(_create_streams(list(districts.values())))
        for name, app in apps.items():
            publish(app, districts[name])
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: sum(view.positions().values()) > 0, 30, "the city view process to apply something")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        partial = view.positions()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: view.positions() == heads, 60, "the restarted city view to reach both heads")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc = None
        assert partial != heads, "the view was killed before it had applied everything"
        assert view.fund_totals() == fund_facts(apps, codes)
        used, _ = view.cap_usage(moved, 2026)
        assert {c: used[codes[n]] for n, c in codes.items()} == {c: district_facts(apps[n])["due"][(moved, 2026)] for n, c in codes.items()}
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        view.close()
        asyncio.run(_delete_streams([d.stream for d in districts.values()]))
