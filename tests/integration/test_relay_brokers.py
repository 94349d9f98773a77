"""The relay and the report subscriber against the REAL RabbitMQ and NATS JetStream of this machine
(ADR 0011): the relay killed with SIGKILL mid-stream and restarted; the broker stopped for a while
and started again; a new subscriber catching up from position 0 while the ledger keeps writing.
Each time the subscriber ends with every event exactly once and the same report as an
uninterrupted run.

Isolation: RabbitMQ tests run in their own virtual host (created and deleted here); the outage is a
connection limit of 0 on that virtual host plus closing its connections, so nothing else on the
broker notices. The NATS outage stops and restarts a private ``nats-server`` started with the
command in ``.ci/run`` (another port, a temporary store), so the shared server keeps serving; the
SIGKILL test uses the shared server with uniquely named streams, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from infra.relay import Relay, Topology, Tracking
from infra.reports import ReportStore, ReportSubscriber
from relay_support import BackgroundLoop, expected_messages, ledger_with_data, more_data, reference_reports, reports_of, wait_until

ROOT = Path(__file__).resolve().parents[2]
LEDGER = Path(sys.executable).parent / "ledger"
SHARED_NATS = "nats://127.0.0.1:4222"


# ---------------------------------------------------------------------------------- brokers
def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def _dead(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture(scope="module")
def rabbit_vhost():
    for vhost in rabbitmqctl("list_vhosts", "name").split():
        match = re.fullmatch(r"ledger_test_(\d+)_[0-9a-f]+", vhost)
        if match and _dead(match.group(1)):  # left by a killed run
            rabbitmqctl("delete_vhost", vhost)
    name = f"ledger_test_{os.getpid()}_{secrets.token_hex(3)}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def _die_with_parent() -> None:
    """Children of the test (a relay, a private nats-server) end when the test process does,
    even when it is killed (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def nats_command(port: int, store: Path) -> list[str]:
    """The NATS command of ``.ci/run``, on another port and another store directory."""
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(r"--exec (\S+) -- (.+)$", text, re.M)
    assert match, ".ci/run no longer starts nats-server with start-stop-daemon --exec"
    args = shlex.split(match.group(2))
    args[args.index("-p") + 1] = str(port)
    args[args.index("-sd") + 1] = str(store)
    assert "-js" in args
    return [match.group(1), *args]


class PrivateNats:
    def __init__(self, store: Path):
        self.port = _free_port()
        self.command = nats_command(self.port, store)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        wait_until(lambda: _port_open(self.port), 15, "the private nats-server")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        wait_until(lambda: not _port_open(self.port), 10, "nats-server to stop")


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory):
    server = PrivateNats(tmp_path_factory.mktemp("nats-store"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _delete_streams(url: str, prefix: str | None) -> None:
    """Delete the streams named ``prefix…``; with None, the test streams of killed runs."""
    import nats

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            match = re.fullmatch(r"T(\d+)X[0-9A-F]+_EVENTS(_REPLAY_.*)?", name)
            if (prefix is not None and name.startswith(prefix)) or (prefix is None and match and _dead(match.group(1))):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def _stream_messages(url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def topology_for(kind: str, rabbit_vhost: str | None, nats_url: str) -> Topology:
    tag = f"t{os.getpid()}x{secrets.token_hex(3)}"
    if kind == "rabbit":
        return Topology("rabbit", f"amqp://guest:guest@127.0.0.1:5672/{rabbit_vhost}", exchange=f"{tag}.events", stream="")
    return Topology("nats", nats_url, exchange=f"{tag}.events", stream=f"{tag.upper()}_EVENTS")


@pytest.fixture(scope="module")
def shared_nats():
    asyncio.run(_delete_streams(SHARED_NATS, None))
    return SHARED_NATS


@pytest.fixture
def cleanup_streams(shared_nats):
    created: list[tuple[str, str]] = []
    yield created
    for url, prefix in created:
        asyncio.run(_delete_streams(url, prefix))


# ---------------------------------------------------------------------------------- helpers
def relay_process(settings: Any, topology: Topology, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": settings.database_url,
        "LEDGER_BROKER": topology.kind,
        "LEDGER_BROKER_URL": topology.url,
        "LEDGER_RELAY_EXCHANGE": topology.exchange,
        "LEDGER_RELAY_STREAM": topology.stream,
    }
    return subprocess.Popen([str(LEDGER), "relay", "run", *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)


def subscribe(store: ReportStore, topology: Topology, name: str, *, catch_up: bool = False) -> tuple[ReportSubscriber, BackgroundLoop]:
    sub = ReportSubscriber(store, topology, name)
    asyncio.run(sub.prepare())
    return sub, BackgroundLoop(lambda stop: sub.run(catch_up=catch_up, stop=stop))


def assert_exactly_once(store: ReportStore, expected: list, reference: dict) -> dict:
    state = store.state()
    ids = store.event_ids()
    assert len(ids) == len(set(ids)) == len(expected) == state["applied"]
    assert set(ids) == {str(m.event_id) for m in expected}
    assert state["last_position"] >= expected[-1].position
    assert reports_of(store, list(reference)) == reference
    return state


# ---------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("kind", ["rabbit", "nats"])
def test_relay_killed_mid_stream_then_a_new_subscriber_catches_up_from_zero(kind, database_url, tmp_path, rabbit_vhost, cleanup_streams):
    settings, app = ledger_with_data(database_url, recipients=4, months=1, seed=5)
    topology = topology_for(kind, rabbit_vhost, SHARED_NATS)
    if kind == "nats":
        cleanup_streams.append((SHARED_NATS, topology.stream))
    head = app.recorder.max_notification_id()
    tracking = Tracking(settings.sqlalchemy_url())
    store_a = ReportStore(f"sqlite:///{tmp_path / 'a.db'}")
    sub_a, loop_a = subscribe(store_a, topology, f"{topology.exchange}.a")
    loop_b: BackgroundLoop | None = None
    loop_relay: BackgroundLoop | None = None
    relay = relay_process(settings, topology, "--batch-size", "8", "--max-rate", "40")

    def mid_batch() -> bool:
        # A few messages of the page are out and applied, the page is far from recorded as done.
        position, published = tracking.state("main")
        return position > 0 and 3 <= store_a.state()["applied"] - published <= 5

    try:
        wait_until(mid_batch, 60, "the relay to be mid-stream", 0.005)
        relay.send_signal(signal.SIGKILL)
        assert relay.wait(10) == -signal.SIGKILL
        tracked, seen = tracking.load("main"), store_a.last_position()
        assert 0 < tracked < seen < head, (tracked, seen, head)

        # Restarted (in this process, to save a start-up): it follows the log from the tracked position.
        restarted = Relay(settings, topology)
        loop_relay = BackgroundLoop(lambda stop: restarted.run(stop=stop))
        wait_until(lambda: store_a.last_position() >= expected_messages(app)[-1].position, 60, "subscriber A to catch up after the restart")

        # A new subscriber: its live destination first, then the replay from position 0, while
        # the ledger keeps writing and the relay keeps publishing.
        store_b = ReportStore(f"sqlite:///{tmp_path / 'b.db'}")
        sub_b = ReportSubscriber(store_b, topology, f"{topology.exchange}.b")
        asyncio.run(sub_b.prepare())
        writer = threading.Thread(target=more_data, args=(app,), kwargs={"recipients": 2, "seed": 11})
        writer.start()
        wait_until(lambda: app.recorder.max_notification_id() > head, 30, "the ledger to write again")
        replayer = Relay(settings, topology, name="replay")
        replayed_to = asyncio.run(replayer.replay(sub_b.name))
        replayer.close()
        loop_b = BackgroundLoop(lambda stop: sub_b.run(catch_up=True, stop=stop))
        writer.join(120)
        expected = expected_messages(app)
        last = expected[-1].position
        wait_until(lambda: store_a.last_position() >= last and store_b.last_position() >= last, 90, "both subscribers to reach the head")
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait(10)
        for loop in (loop_relay, loop_a, loop_b):
            if loop is not None:
                loop.join(30)
    reference = reference_reports(expected, tmp_path)
    state_a = assert_exactly_once(store_a, expected, reference)
    state_b = assert_exactly_once(store_b, expected, reference)
    assert state_b["replayed_to"] == replayed_to > head
    resent = sum(1 for m in expected if tracked < m.position <= seen)
    assert resent > 0
    # The restarted relay began at the tracked position: it published again what A already had.
    assert restarted.stats.published == sum(1 for m in expected if m.position > tracked)
    restarted.close()
    if kind == "rabbit":
        assert state_a["repeats"] >= resent  # dropped by the subscriber
    else:
        # JetStream dropped them itself (Nats-Msg-Id = event id): the stream holds each event once.
        assert asyncio.run(_stream_messages(topology.url, topology.stream)) == len(expected)
    store_a.close()
    store_b.close()
    tracking.dispose()


@pytest.mark.parametrize("kind", ["rabbit", "nats"])
def test_broker_stopped_for_a_while_and_started_again(kind, database_url, tmp_path, rabbit_vhost, private_nats):
    settings, app = ledger_with_data(database_url, recipients=4, months=1, seed=6)
    topology = topology_for(kind, rabbit_vhost, private_nats.url)
    store = ReportStore(f"sqlite:///{tmp_path / 'reports.db'}")
    sub, loop_sub = subscribe(store, topology, f"{topology.exchange}.reports")
    relay = Relay(settings, topology, batch_size=5, max_rate=60)
    loop_relay = BackgroundLoop(lambda stop: relay.run(stop=stop))
    try:
        wait_until(lambda: store.state()["applied"] >= 15, 60, "the first messages")
        outage_started = time.monotonic()
        if kind == "rabbit":
            rabbitmqctl("set_vhost_limits", "-p", rabbit_vhost, '{"max-connections": 0}')
            rabbitmqctl("close_all_connections", "-p", rabbit_vhost, "test outage")
        else:
            private_nats.stop()
        try:
            more_data(app, recipients=2, seed=12)  # the ledger keeps working while the broker is away
            time.sleep(max(0.0, 2.0 - (time.monotonic() - outage_started)))
            during = store.state()["applied"]
        finally:
            if kind == "rabbit":
                rabbitmqctl("clear_vhost_limits", "-p", rabbit_vhost)
            else:
                private_nats.start()
        expected = expected_messages(app)
        assert during < len(expected)
        wait_until(lambda: store.last_position() >= expected[-1].position, 90, "the subscriber to reach the head after the outage")
    finally:
        loop_relay.join(30)
        loop_sub.join(30)
        relay.close()
        if kind == "nats":
            asyncio.run(_delete_streams(private_nats.url, topology.stream))
    if kind == "rabbit":
        # The broker closed the relay's connection and refused new ones: the relay backed off and
        # resumed from its tracked position. (The NATS client reconnects by itself and re-sends
        # what it had buffered; a publish that timed out is re-sent by the relay and dropped by
        # JetStream through its Nats-Msg-Id.)
        assert relay.stats.reconnects >= 1
    assert_exactly_once(store, expected, reference_reports(expected, tmp_path))
    store.close()
