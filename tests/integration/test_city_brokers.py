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
        "LEDGER_CITY_BATCH_SIZE": "2",  # small batches: the kill lands mid-stream, between two of them
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
        assert partial != heads, "the view was killed before it had applied everything"
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: view.positions() == heads, 60, "the restarted city view to reach both heads")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc = None
        assert view.fund_totals() == fund_facts(apps, codes)
        used, _ = view.cap_usage(moved, 2026)
        assert {c: used[codes[n]] for n, c in codes.items()} == {c: district_facts(apps[n])["due"][(moved, 2026)] for n, c in codes.items()}
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        view.close()
        asyncio.run(_delete_streams([d.stream for d in districts.values()]))


INGEST = """
import sys
from datetime import timedelta
from infra.sample_ledger import START, build
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
app = build_app(Settings(database_url=sys.argv[1]), publish_policy=False)
ensure_policy(app, START - timedelta(days=1))
build(app, int(sys.argv[2]), seed=int(sys.argv[3]), months=3)
app.close()
"""


def _snapshot_paid(url: str) -> dict[str, Any]:
    """A district's own (V, T) snapshot (commands.snapshot): aid paid per fund, every payment in."""
    from datetime import date
    from decimal import Decimal

    from commands.snapshot import take_snapshot
    from infra.wiring import build_app

    app = build_app(Settings(database_url=url), publish_policy=False)
    try:
        paid: dict[str, Decimal] = {}
        for row in take_snapshot(app, valid=date(2030, 12, 31)).rows:
            if row["aid_paid"]:
                paid[row["fund"]] = paid.get(row["fund"], Decimal("0.00")) + row["aid_paid"]
        return paid
    finally:
        app.close()


def _public_head(url: str) -> int:
    from infra.relay import StoreReader, reader_app

    app = reader_app(Settings(database_url=url))
    try:
        reader, position, newest = StoreReader(app), 0, 0
        while (page := reader.read(position, 1000)).last != position:
            newest = max([newest, *(m.position for m in page.messages)])
            position = page.last
        return newest
    finally:
        app.close()


def test_kill_9_of_a_district_its_relay_and_the_city_view_during_ingest_loses_nothing_and_counts_nothing_twice(another_pg_database, monkeypatch, tmp_path):
    """Two districts on PostgreSQL ingest at once, each in a process of its own, while their relays
    (``ledger --district X relay run``) publish to JetStream and ``ledger city run`` folds both
    streams into a city view on PostgreSQL. Mid-ingest, SIGKILL of district one's ingest process,
    its relay and the city view; the relay and the view are started again and district one ingests
    more people. Then the city's aid paid per district and fund equals each district's own
    snapshot to the fen, and the view stands at each district's newest public event."""
    tag = "p" + secrets.token_hex(3)
    monkeypatch.setenv("LEDGER_DATA_KEY", "city-kill-key")
    with another_pg_database() as one_url, another_pg_database() as two_url, another_pg_database() as city_url:
        urls = {f"{tag}one": one_url, f"{tag}two": two_url}
        victim, other = urls
        districts = [District(code, url) for code, url in urls.items()]
        env = {
            **os.environ,
            "LEDGER_DISTRICTS": ",".join(urls),
            "LEDGER_CITY_DATABASE_URL": city_url,
            "LEDGER_BROKER": "nats",
            "LEDGER_BROKER_URL": NATS_URL,
            "LEDGER_RELAY_NAME": "city",
            "LEDGER_RELAY_POLL_INTERVAL": "0.1",
            **{f"LEDGER_DISTRICT_{code.upper()}_DATABASE_URL": url for code, url in urls.items()},
        }
        cli = [sys.executable, "-c", "from infra.cli import main; main()"]

        logs = iter(range(100))

        def start(*args: str) -> subprocess.Popen:  # each process's stderr in tmp_path, for a failure's diagnosis
            with open(tmp_path / f"{next(logs):02d}-{args[-1]}.log", "w") as err:
                return subprocess.Popen([*args], env=env, stdout=subprocess.DEVNULL, stderr=err)

        def ingest(code: str, recipients: int, seed: int) -> subprocess.Popen:
            return start(sys.executable, "-c", INGEST, urls[code], str(recipients), str(seed))

        def relay(code: str) -> subprocess.Popen:
            return start(*cli, "--district", code, "relay", "run")

        procs: dict[str, subprocess.Popen] = {}
        view = None

        def running(*names: str) -> bool:  # a process that died on its own fails the test at once, with its stderr
            for name in names:
                if procs[name].poll() is not None:
                    raise AssertionError(f"{name} exited {procs[name].returncode}: {[f.read_text()[-500:] for f in sorted(tmp_path.glob('*.log'))]}")
            return True

        try:
            asyncio.run(_create_streams(districts))
            procs = {"ingest": ingest(victim, 40, 3), "other": ingest(other, 12, 4), "relay": relay(victim), "relay2": relay(other), "view": start(*cli, "city", "run")}
            view = CityView(city_url)
            wait_until(lambda: running("relay", "relay2", "view") and min(view.positions().get(c, 0) for c in urls) > 100, 120, "the city view to apply some of both districts")
            assert procs["ingest"].poll() is None, "district one should still be ingesting when it is killed"
            for name in ("ingest", "relay", "view"):
                procs[name].send_signal(signal.SIGKILL)
                procs[name].wait(10)
            partial = view.positions()
            procs["relay"], procs["view"] = relay(victim), start(*cli, "city", "run")
            procs["ingest"] = ingest(victim, 6, 9)  # district one goes on: more people after the restart
            for name in ("ingest", "other"):
                assert procs[name].wait(300) == 0
            heads = {code: _public_head(url) for code, url in urls.items()}
            assert partial[victim] < heads[victim]
            wait_until(lambda: running("relay", "relay2", "view") and view.positions() == heads, 120, "the restarted city view to reach both districts' newest public events")
            for name in ("relay", "relay2", "view"):
                procs[name].send_signal(signal.SIGTERM)
                assert procs[name].wait(30) == 0

            totals = view.fund_totals()
            for code, url in urls.items():
                paid = _snapshot_paid(url)
                assert paid, f"district {code} should have paid aid"
                assert {f: v for (d, f), v in totals.items() if d == code} == paid
            assert set(d for d, _ in totals) == set(urls)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            if view is not None:
                view.close()
            asyncio.run(_delete_streams([d.stream for d in districts]))
