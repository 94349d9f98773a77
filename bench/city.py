"""The city scale (ADR 0020): district ledgers side by side on PostgreSQL, and the city view's lag.

    .venv/bin/python -m bench.city                          # 2 x 40 recipients, 3 months each
    .venv/bin/python -m bench.city --recipients 200 --months 6

Printed figures only (nothing is written):

1. **one district process** ingests a seeded district (``infra.sample_ledger``: enrolments,
   expenses, claims, signatures, payments, the 免申即享 batches, through the command handlers) into
   its own database: events/s;
2. **two district processes** ingest two such districts at the same time, each into its own
   database: total events/s and the ratio to (1). Meanwhile a sampler reads ``pg_stat_activity``
   every 20 ms: every backend of either district database waiting on a lock (``wait_event_type =
   'Lock'``) is counted by what it waits on. The eventsourcing recorder locks its events table on
   every insert; the two districts' tables are in two databases, so no waits on a ``relation``.
   The recorder also sends a ``NOTIFY`` in every insert, and PostgreSQL serialises the commits of
   notifying transactions on one server-wide queue lock (``object``): that short wait is shared
   by every database of one server (ADR 0020);
3. **the city view's lag**: during (2), each district's relay (``ledger --district X relay run``)
   publishes to its JetStream stream and the city view (``ledger city run``) follows both; every
   50 ms the sampler notes each district's head and the view's position; the lag of a sample is
   how long until the view reached that head: p50, p99, max.

Databases (``bench_city_<pid>_…``) and streams (``LEDGER_CHANGNING<pid>``, ``LEDGER_XUHUI<pid>``) are
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("LEDGER_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("LEDGER_BENCH_NATS_URL", "nats://127.0.0.1:4222")


def ingest(url: str, recipients: int, months: int, seed: int, ready: Any, go: Any, out: Any) -> None:
    """One district process: wire the ledger on ``url``, wait for the start, ingest, report."""
    os.environ.setdefault("LEDGER_DATA_KEY", "bench-city-key")
    from infra.sample_ledger import START, build
    from infra.settings import Settings
    from infra.wiring import build_app, ensure_policy

    app = build_app(Settings(database_url=url), publish_policy=False)
    ensure_policy(app, START - timedelta(days=1))
    before = int(app.recorder.max_notification_id() or 0)
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    build(app, recipients, seed=seed, months=months)
    seconds = time.perf_counter() - t0
    out.put((url, int(app.recorder.max_notification_id() or 0) - before, seconds))
    app.close()


def run_districts(urls: list[str], recipients: int, months: int, seed: int = 100) -> tuple[int, float]:
    """Ingest one district per process, started together; (events, wall seconds)."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies, procs = [], []
    for i, url in enumerate(urls):
        ready = ctx.Event()
        p = ctx.Process(target=ingest, args=(url, recipients, months, seed + i, ready, go, out))
        p.start()
        readies.append(ready)
        procs.append(p)
    for r in readies:
        r.wait(300)
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=3600) for _ in urls]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    return sum(r[1] for r in results), wall


class LockSampler(threading.Thread):
    """Counts backends of ``dbnames`` waiting on a lock, every ``interval`` s."""

    def __init__(self, dbnames: list[str], interval: float = 0.02):
        super().__init__(daemon=True)
        self.dbnames, self.interval = dbnames, interval
        self.samples = self.waiting = 0
        self.what: dict[tuple[str, ...], int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT datname, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_activity"
                    " WHERE datname = ANY(%s) AND wait_event_type = 'Lock'",
                    (self.dbnames,),
                ).fetchall()
                self.samples += 1
                self.waiting += len(rows)
                for r in rows:
                    self.what[tuple(r)] = self.what.get(tuple(r), 0) + 1
                time.sleep(self.interval)


class LagSampler(threading.Thread):
    """Every ``interval`` s: each district's head and the city view's positions."""

    def __init__(self, urls: dict[str, str], city_url: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.urls, self.city_url, self.interval = urls, city_url, interval
        self.heads: list[tuple[float, dict[str, int]]] = []
        self.views: list[tuple[float, dict[str, int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg
        import sqlalchemy as sa

        conns = {code: psycopg.connect(url, autocommit=True) for code, url in self.urls.items()}
        city = sa.create_engine(self.city_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                heads = {}
                for code, c in conns.items():
                    try:
                        heads[code] = int(c.execute("SELECT coalesce(max(notification_id), 0) FROM ledger_events").fetchone()[0])
                    except psycopg.Error:
                        heads[code] = 0
                self.heads.append((now, heads))
                try:
                    with city.connect() as cc:
                        rows = dict(cc.execute(sa.text("SELECT district, position FROM city_heads")).all())
                except sa.exc.DBAPIError:
                    rows = {}
                self.views.append((time.monotonic(), {k: int(v) for k, v in rows.items()}))
                time.sleep(self.interval)
        finally:
            for c in conns.values():
                c.close()
            city.dispose()

    def lags(self, public: dict[str, set[int]], since: float = 0.0, exclude: dict[str, set[int]] | None = None) -> list[float]:
        """For each sample of a head with a public event not yet applied, the time until the view
        had applied it (positions of events the relay does not publish do not count)."""
        out = []
        for t, heads in self.heads:
            if t < since:
                continue
            for code, head in heads.items():
                newest = max((p for p in public[code] - (exclude or {}).get(code, set()) if p <= head), default=0)
                if not newest:
                    continue
                reached = next((tv for tv, pos in self.views if tv >= t and pos.get(code, 0) >= newest), None)
                if reached is not None:
                    out.append(reached - t)
        return out


def public_positions(url: str) -> set[int]:
    os.environ.setdefault("LEDGER_DATA_KEY", "bench-city-key")
    from infra.relay import StoreReader, reader_app
    from infra.settings import Settings

    app = reader_app(Settings(database_url=url))
    try:
        reader, position, out = StoreReader(app), 0, set()
        while True:
            page = reader.read(position, 2000)
            if page.last == position:
                return out
            out |= {m.position for m in page.messages}
            position = page.last
    finally:
        app.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=40)
    parser.add_argument("--months", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("LEDGER_DATA_KEY", "bench-city-key")
    from infra import pg

    tag = f"bench_city_{os.getpid()}"
    cn, xh = f"changning{os.getpid()}", f"xuhui{os.getpid()}"  # district codes: streams LEDGER_<CODE>
    names = {code: f"{tag}_{code}" for code in ("solo", cn, xh)}
    city_name = f"{tag}_city"
    urls = {code: pg.create_database(ADMIN_URL, name) for code, name in names.items()}
    city_url = pg.create_database(ADMIN_URL, city_name)
    children: list[subprocess.Popen] = []
    try:
        print(f"city bench: {args.recipients} recipients x {args.months} months per district, PostgreSQL, 2 cores shared")
        events_1, wall_1 = run_districts([urls["solo"]], args.recipients, args.months)
        rate_1 = events_1 / wall_1
        print(f"  one district process:   {events_1:>7} events in {wall_1:6.1f} s = {rate_1:8.1f} events/s")

        pair = {c: urls[c] for c in (cn, xh)}
        locks = LockSampler([names[c] for c in pair])
        locks.start()
        events_2, wall_2 = run_districts(list(pair.values()), args.recipients, args.months)
        locks.stop.set()
        locks.join(5)
        rate_2 = events_2 / wall_2
        print(f"  two district processes: {events_2:>7} events in {wall_2:6.1f} s = {rate_2:8.1f} events/s, ratio {rate_2 / rate_1:.2f} (target >= 1.7 on 2 free cores)")
        on_tables = sum(n for (_, event, _), n in locks.what.items() if event == "relation")
        print(
            f"  lock waits of the district writers in {locks.samples} samples of pg_stat_activity: {on_tables} on a table "
            f"(each district locks only its own events table), {locks.waiting - on_tables} on anything else:"
        )
        for (db, event, query), n in sorted(locks.what.items(), key=lambda kv: -kv[1])[:5]:
            why = " (the server-wide NOTIFY queue, taken at COMMIT by the recorder's NOTIFY)" if event == "object" else ""
            print(f"    {n:>4} x {db} waiting on {event}{why}: {query}")

        # the city view under ingest: both districts' relays and the view run while they ingest again
        env = {
            **os.environ,
            "LEDGER_DISTRICTS": ",".join(pair),
            "LEDGER_BROKER": "nats",
            "LEDGER_BROKER_URL": NATS_URL,
            "LEDGER_CITY_DATABASE_URL": city_url,
            **{f"LEDGER_DISTRICT_{c.upper()}_DATABASE_URL": u for c, u in pair.items()},
        }
        ledger = str(ROOT / ".venv" / "bin" / "ledger")
        for c in pair:
            children.append(subprocess.Popen([ledger, "--district", c, "relay", "run"], env={**env, "LEDGER_RELAY_NAME": "city"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        children.append(subprocess.Popen([ledger, "city", "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lag = LagSampler(pair, city_url)
        lag.start()
        before = {c: public_positions(u) for c, u in pair.items()}
        deadline = time.monotonic() + 300  # the view first catches up with what is already there
        while time.monotonic() < deadline and not all(lag.views and lag.views[-1][1].get(c, 0) >= max(before[c]) for c in pair):
            time.sleep(0.2)
        t_start = time.monotonic()
        run_districts(list(pair.values()), args.recipients, args.months, seed=500)
        public = {c: public_positions(u) for c, u in pair.items()}
        newest = {c: max(p) for c, p in public.items()}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(lag.views and lag.views[-1][1].get(c, 0) >= newest[c] for c in pair):
            time.sleep(0.2)
        lag.stop.set()
        lag.join(5)
        lags = lag.lags(public, since=t_start, exclude=before)
        caught = all(lag.views and lag.views[-1][1].get(c, 0) >= newest[c] for c in pair)
        print(
            f"  city view lag behind the newest district event during ingest: p50 {pct(lags, 0.5):.2f} s, p99 {pct(lags, 0.99):.2f} s, "
            f"max {max(lags, default=float('nan')):.2f} s over {len(lags)} samples (target p99 < 2 s); caught up at the end: {caught}"
        )
        print(f"  load average: {os.getloadavg()[0]:.2f}")
    finally:
        for p in children:
            p.terminate()
        for p in children:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for name in [*names.values(), city_name]:
            pg.drop_database(ADMIN_URL, name)
        asyncio.run(_drop_streams([f"LEDGER_{cn.upper()}", f"LEDGER_{xh.upper()}"]))


async def _drop_streams(streams: list[str]) -> None:
    import nats

    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=1)
    except Exception:  # noqa: BLE001 - no server: nothing to drop
        return
    try:
        js = nc.jetstream()
        for s in streams:
            try:
                await js.delete_stream(s)
            except Exception:  # noqa: BLE001
                pass
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(main())
