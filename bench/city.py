"""The city scale (issue 18, ADR 0017, ADR 0020): district ledgers side by side on PostgreSQL, the
city view's lag on NATS JetStream, and a kill -9 in the middle of it all.

    .venv/bin/python -m bench.run --scale city                 # make bench-city (< 20 min on 2 cores)
    .venv/bin/python -m bench.run --scale city --districts 4 --recipients 120

:func:`measure` adds its figures to a :class:`bench.run.Run`; ``bench.run`` prints them and writes
``bench/results/latest-city.json`` (the district scale's ``latest.json`` is left alone). Every
district is a seeded ``infra.sample_ledger`` (enrolments, expenses, claims, signatures, payments,
the 免申即享 batches, through the command handlers) in a process and a database of its own.

1. **one district process vs two** (``city_two_vs_one``), repeated and interleaved, each trial on
   fresh databases: total events/s of two processes started together over one process alone.
   Both ways: without the recorder's ``NOTIFY`` (the ledger's default, ADR 0021) and with it in
   every insert (``LEDGER_POSTGRES_NOTIFY=true``, the library's way: the ``_notify`` figures). While two run, a sampler reads
   ``pg_stat_activity`` every 20 ms and counts every backend of the two databases waiting on a
   lock, by what it waits on: ``relation`` would be the writers waiting on an events table (each
   district locks only its own: 0); ``object`` is the server-wide queue of notifying commits.
   CPU is read from ``/proc`` over each trial: the ingest processes' own (python), their
   PostgreSQL backends' and the server's own processes', the rest of the machine's (other work)
   and idle, in cores; the ceiling of the ratio
   on this machine is the CPUs over the cores one district process keeps busy.
2. **the city view's lag** (``city_lag_p99``) while ``districts`` districts ingest in parallel:
   each district's relay (``ledger --district X relay run``) publishes to its JetStream stream
   and the view (``ledger city run``) follows them all; every 50 ms the sampler notes each
   district's head and the view's positions; the lag of a sample is how long until the view had
   applied the newest public event at or below that head. Measured under the relay's former
   settings (poll 0.5 s, the view one message per transaction) and the current ones.
3. **kill -9** (``city_kill9_difference``): during the same full ingest, SIGKILL of one district's
   ingest process, its relay and the city view; they are started again (the district ingests
   a further batch of people); when everything is in, the city view's aid paid per district and
   fund is compared with each district's own (V, T) snapshot (``commands.snapshot``): the sum of
   the absolute differences, in yuan, must be 0.00 (nothing lost, nothing counted twice).

Databases (``bench_city_<pid>_…``) and streams (``LEDGER_C<pid>…``) are dropped at the end.
"""

from __future__ import annotations

import asyncio
import bisect
import multiprocessing as mp
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("LEDGER_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("LEDGER_BENCH_NATS_URL", "nats://127.0.0.1:4222")
DATA_KEY = "bench-city-key"
LAG_P99_S = 2.0
RATIO_TARGET = 1.7
#: The snapshot's valid date for the kill -9 check: after every payment of the sample districts.
SNAPSHOT_VALID = date(2030, 12, 31)
LOGS = Path(os.environ.get("TMPDIR", "/tmp")) / "ledger-bench-city"  # the relays' and the view's stderr


@dataclass(frozen=True)
class CityScale:
    districts: int = 3  # ingesting at once under the city view (lag, kill -9)
    recipients: int = 80  # per district
    months: int = 4
    repeats: int = 2  # trials of one vs two processes, each with and without NOTIFY
    relay_poll: float = 0.1  # the relay's poll interval when caught up (LEDGER_RELAY_POLL_INTERVAL)
    view_batch: int = 20  # the view's messages per transaction (LEDGER_CITY_BATCH_SIZE)
    group: int = 100  # commands per transaction in the group-commit throughput trials
    #: The ingest processes' niceness in the lag and kill phases: bulk ingest is batch work, the
    #: relays and the view keep the normal priority (on a city's machines the view has cores of
    #: its own; on this 2-core machine three writers would otherwise starve it).
    ingest_nice: int = 10


# ---------------------------------------------------------------------------------- ingest
def ingest(url: str, recipients: int, months: int, seed: int, quiet: bool, ready: Any, go: Any, out: Any,
           finish: Any = None, group: int = 0, nice: int = 0) -> None:
    """One district process: wire the ledger on ``url``, wait for the start, ingest, report
    (url, events, seconds, this process's CPU seconds). ``quiet``: no ``NOTIFY`` on insert (the
    ledger's default, ``LEDGER_POSTGRES_NOTIFY``); otherwise the library's NOTIFY in every insert.
    ``group``: that many commands per transaction (group commit, the way a district loads a
    month's settlements and its 免申即享 batch, ADR 0017); 0: one command per transaction (the
    online path). The connections stay open until ``finish`` is set, so that the CPU their
    PostgreSQL backends used can still be read."""
    os.environ.setdefault("LEDGER_DATA_KEY", DATA_KEY)
    if nice:
        os.nice(nice)
    from infra.sample_ledger import START, build
    from infra.settings import Settings
    from infra.wiring import build_app, ensure_policy

    app = build_app(Settings(database_url=url, postgres_notify=not quiet), publish_policy=False)
    ensure_policy(app, START - timedelta(days=1))
    before = int(app.recorder.max_notification_id() or 0)
    ready.set()
    go.wait()
    t0, c0 = time.perf_counter(), _own_cpu()
    if group:
        with app.group(group):
            build(app, recipients, seed=seed, months=months)
    else:
        build(app, recipients, seed=seed, months=months)
    seconds, cpu = time.perf_counter() - t0, _own_cpu() - c0
    out.put((url, int(app.recorder.max_notification_id() or 0) - before, seconds, cpu))
    if finish is not None:
        finish.wait(120)
    app.close()


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Districts:
    """District ingest processes, one per URL, started together."""

    def __init__(self, urls: list[str], recipients: int, months: int, seed: int, quiet: bool, group: int = 0, nice: int = 0):
        ctx = mp.get_context("spawn")
        self.go, self.out, self.finish = ctx.Event(), ctx.Queue(), ctx.Event()
        self.urls, self.procs = list(urls), []
        readies = []
        for i, url in enumerate(urls):
            ready = ctx.Event()
            p = ctx.Process(target=ingest, args=(url, recipients, months, seed + i, quiet, ready, self.go, self.out, self.finish, group, nice), daemon=True)
            p.start()
            readies.append(ready)
            self.procs.append(p)
        for r in readies:
            r.wait(300)

    def start(self) -> float:
        self.t0 = time.perf_counter()
        self.go.set()
        return self.t0

    def results(self, count: int | None = None, *, release: bool = True) -> tuple[list[tuple[str, int, float, float]], float]:
        """The reports of ``count`` processes (all by default) and the wall seconds to the last;
        ``release``: let the processes close their connections and end (else :meth:`release`)."""
        got = [self.out.get(timeout=3600) for _ in range(len(self.urls) if count is None else count)]
        wall = time.perf_counter() - self.t0
        if release:
            self.release()
        return got, wall

    def release(self) -> None:
        self.finish.set()
        for p in self.procs:
            p.join(30)


class CpuMeter:
    """CPU seconds over an interval from ``/proc``: the whole machine's busy and idle, and the
    PostgreSQL processes serving ``dbnames`` (their backends, by the database named in their
    process title, and the server's own: WAL writer, checkpointer…); other databases' backends
    count as other work."""

    def __init__(self, dbnames: list[str]) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.dbnames = dbnames

    def _machine(self) -> tuple[float, float]:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return (sum(parts[:8]) - idle) / self.tick, idle / self.tick

    def _postgres(self) -> dict[int, float]:
        found = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    text = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().decode(errors="replace")
            except OSError:
                continue
            if not text[text.index("(") + 1 : text.rindex(")")].startswith("postgres"):
                continue
            client = "(" in title.split(":", 2)[-1] or "[local]" in title  # a client backend: "... db 127.0.0.1(5432) ..."
            if client and not any(f" {db} " in title for db in self.dbnames):
                continue
            fields = text[text.rindex(")") + 2 :].split()
            found[int(pid)] = (int(fields[11]) + int(fields[12])) / self.tick
        return found

    def __enter__(self) -> "CpuMeter":
        self.m0, self.p0, self.t0 = self._machine(), self._postgres(), time.perf_counter()
        return self

    def stop(self) -> None:
        (busy1, idle1), p1 = self._machine(), self._postgres()
        self.wall = time.perf_counter() - self.t0
        self.busy, self.idle = busy1 - self.m0[0], idle1 - self.m0[1]
        self.postgres = sum(v - self.p0.get(pid, 0.0) for pid, v in p1.items())

    def __exit__(self, *exc: Any) -> None:
        if not hasattr(self, "wall"):
            self.stop()


# ---------------------------------------------------------------------------------- samplers
class LockSampler(threading.Thread):
    """Counts backends of ``dbnames`` waiting on a lock, every ``interval`` s, by what they wait on."""

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

    def by_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {"relation": 0, "object": 0}
        for (_, event, _), n in self.what.items():
            kinds[event] = kinds.get(event, 0) + n
        return kinds


class LagSampler(threading.Thread):
    """Every ``interval`` s: each district's head and the city view's positions."""

    def __init__(self, urls: dict[str, str], city_url: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.urls, self.city_url, self.interval = urls, city_url, interval
        self.heads: list[tuple[float, dict[str, int]]] = []
        self.relays: list[tuple[float, dict[str, int]]] = []  # each relay's tracked position (published and confirmed)
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
                relays = {}
                for code, c in conns.items():
                    try:
                        row = c.execute("SELECT position FROM relay_tracking WHERE name = 'city'").fetchone()
                    except psycopg.Error:
                        row = None
                    relays[code] = int(row[0]) if row else 0
                self.relays.append((time.monotonic(), relays))
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

    def latest(self) -> dict[str, int]:
        return self.views[-1][1] if self.views else {}

    def lags(self, public: dict[str, set[int]], since: float = 0.0, exclude: dict[str, set[int]] | None = None, *, relay: bool = False) -> list[float]:
        """For each sample of a head with a public event not yet applied, the time until the view
        had applied it (positions of events the relay does not publish do not count); ``relay``:
        until the district's relay had published it (confirmed by the broker)."""
        ordered = {code: sorted(p - (exclude or {}).get(code, set())) for code, p in public.items()}
        series = self.relays if relay else self.views
        times = [tv for tv, _ in series]
        out = []
        for t, heads in self.heads:
            if t < since:
                continue
            for code, head in heads.items():
                i = bisect.bisect_right(ordered[code], head)
                if not i:
                    continue
                newest = ordered[code][i - 1]
                for j in range(bisect.bisect_left(times, t), len(series)):
                    if series[j][1].get(code, 0) >= newest:
                        out.append(series[j][0] - t)
                        break
        return out


def public_positions(url: str) -> set[int]:
    """The positions of the events the relay publishes (the public contract's)."""
    os.environ.setdefault("LEDGER_DATA_KEY", DATA_KEY)
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


# ---------------------------------------------------------------------------------- the city
class City:
    """``codes`` districts with fresh databases, their JetStream streams, their relays and the
    city view as processes of their own (``ledger … relay run``, ``ledger city run``)."""

    def __init__(self, tag: str, codes: list[str], *, relay_poll: float, view_batch: int):
        from infra import pg

        self.tag, self.codes = tag, codes
        self.names = {c: f"{tag}_{c}" for c in codes}
        self.urls = {c: pg.create_database(ADMIN_URL, n) for c, n in self.names.items()}
        self.city_name = f"{tag}_city"
        self.city_url = pg.create_database(ADMIN_URL, self.city_name)
        self.env = {
            **os.environ,
            "LEDGER_DATA_KEY": os.environ.get("LEDGER_DATA_KEY", DATA_KEY),
            "LEDGER_DISTRICTS": ",".join(codes),
            "LEDGER_BROKER": "nats",
            "LEDGER_BROKER_URL": NATS_URL,
            "LEDGER_CITY_DATABASE_URL": self.city_url,
            "LEDGER_CITY_BATCH_SIZE": str(view_batch),
            "LEDGER_RELAY_POLL_INTERVAL": str(relay_poll),
            "LEDGER_RELAY_NAME": "city",
            **{f"LEDGER_DISTRICT_{c.upper()}_DATABASE_URL": u for c, u in self.urls.items()},
        }
        self.relays: dict[str, subprocess.Popen] = {}
        self.view: subprocess.Popen | None = None

    def _spawn(self, *args: str) -> subprocess.Popen:
        """``ledger …`` with its stderr in ``LOGS`` (a failure's diagnosis)."""
        ledger = str(ROOT / ".venv" / "bin" / "ledger")
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(LOGS / f"{self.tag}-{'-'.join(a for a in args if not a.startswith('-'))}.log", "a") as err:
            return subprocess.Popen([ledger, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=err)

    def check(self) -> None:
        """Raise if a relay or the view ended by itself."""
        for what, p in [*((f"relay {c}", r) for c, r in self.relays.items()), ("city view", self.view)]:
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"the {what} ended (exit {p.returncode}); see {LOGS}")

    def start_relay(self, code: str) -> None:
        self.relays[code] = self._spawn("--district", code, "relay", "run")

    def start_view(self) -> None:
        self.view = self._spawn("city", "run")

    def start(self) -> None:
        for c in self.codes:
            self.start_relay(c)
        self.start_view()

    def stop(self) -> None:
        procs = [p for p in [*self.relays.values(), self.view] if p is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def drop(self) -> None:
        from infra import pg

        self.stop()
        for name in [*self.names.values(), self.city_name]:
            pg.drop_database(ADMIN_URL, name)
        asyncio.run(_drop_streams([f"LEDGER_{c.upper()}" for c in self.codes]))


def _wait_caught_up(lag: LagSampler, newest: dict[str, int], seconds: float, city: "City") -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(lag.latest().get(c, 0) >= n for c, n in newest.items()):
            return True
        city.check()
        time.sleep(0.2)
    return False


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


# ---------------------------------------------------------------------------------- phases
def throughput(run: Any, s: CityScale, tag: str) -> None:
    """One district process vs two, with and without NOTIFY, interleaved, fresh databases each."""
    from bench.run import at_least, at_most, figure
    from infra import pg

    trials: dict[tuple[str, int], list[dict[str, float]]] = {}
    locks: dict[str, dict[str, int]] = {"notify": {}, "quiet": {}, "group": {}}
    samples = {"notify": 0, "quiet": 0, "group": 0}
    n = 0
    for rep in range(s.repeats):
        order = [("notify", 1), ("notify", 2), ("quiet", 1), ("quiet", 2), ("group", 1), ("group", 2)]
        for variant, procs in order if rep % 2 == 0 else order[::-1]:
            names = [f"{tag}_t{(n := n + 1)}_{i}" for i in range(procs)]
            urls = [pg.create_database(ADMIN_URL, name) for name in names]
            try:
                d = Districts(urls, s.recipients, s.months, seed=100 + 10 * rep, quiet=variant != "notify",
                              group=s.group if variant == "group" else 0)
                sampler = LockSampler(names) if procs == 2 else None
                if sampler:
                    sampler.start()
                with CpuMeter(names) as cpu:
                    d.start()
                    got, wall = d.results(release=False)
                    cpu.stop()
                d.release()
                if sampler:
                    sampler.stop.set()
                    sampler.join(5)
                    samples[variant] += sampler.samples
                    for k, v in sampler.by_kind().items():
                        locks[variant][k] = locks[variant].get(k, 0) + v
                events = sum(r[1] for r in got)
                python = sum(r[3] for r in got)
                t = {"events": events, "wall": wall, "rate": events / wall, "python": python / cpu.wall, "postgres": cpu.postgres / cpu.wall,
                     "other": max(0.0, cpu.busy - python - cpu.postgres) / cpu.wall, "idle": cpu.idle / cpu.wall}
                trials.setdefault((variant, procs), []).append(t)
                run.say(f"  {variant:6} x{procs}: {events} events in {wall:5.1f} s = {t['rate']:6.1f}/s; cores: python {t['python']:.2f}, "
                        f"postgres {t['postgres']:.2f}, other {t['other']:.2f}, idle {t['idle']:.2f}")
            finally:
                for name in names:
                    pg.drop_database(ADMIN_URL, name)

    def med(variant: str, procs: int, key: str) -> float:
        return statistics.median(t[key] for t in trials[(variant, procs)])

    cpus = os.cpu_count() or 1
    for variant, suffix in (("group", ""), ("quiet", "_online"), ("notify", "_online_notify")):
        one, two = med(variant, 1, "rate"), med(variant, 2, "rate")
        ratios = [b["rate"] / a["rate"] for a, b in zip(trials[(variant, 1)], trials[(variant, 2)])]
        run.add(figure(f"city_one_district{suffix}", one, "events/s"), trials=[round(t["rate"], 1) for t in trials[(variant, 1)]])
        run.add(figure(f"city_two_vs_one{suffix}", two, "events/s", baseline=one, target=at_least(RATIO_TARGET)),
                trials=[round(t["rate"], 1) for t in trials[(variant, 2)]], ratios_per_repeat=[round(r, 2) for r in ratios],
                notify="LEDGER_POSTGRES_NOTIFY=true: the library's NOTIFY in every insert" if variant == "notify" else "no NOTIFY (the default: nothing LISTENs)",
                ingest=f"group commit, {s.group} commands per transaction (a district's monthly load)" if variant == "group"
                else "one command per transaction (the online path)")
        used = med(variant, 1, "python") + med(variant, 1, "postgres")
        free = cpus - med(variant, 2, "other")
        run.add(figure(f"city_ratio_ceiling{suffix}", free / used, "ratio"),
                why=f"the cores left to the two district processes and their databases ({cpus} CPUs less {cpus - free:.2f} busy with other work) "
                    f"over the cores one district process and its database keep busy ({used:.2f}): two cannot go faster than this")
        for procs in (1, 2):
            for key in ("python", "postgres", "other", "idle"):
                run.add(figure(f"city_cpu_{'one' if procs == 1 else 'two'}_{key}{suffix}", med(variant, procs, key), "cores"))
        kinds = locks[variant]
        for kind, count in sorted(kinds.items()):
            target = at_most(0) if kind == "relation" or (kind == "object" and variant != "notify") else None
            run.add(figure(f"city_lock_waits_{kind}{suffix}", count, "waits"), samples=samples[variant],
                    what={"relation": "a district writer waiting on an events table (each district locks only its own)",
                          "object": "the server-wide queue of notifying commits (PostgreSQL serialises them)"}.get(kind, "other lock waits"))


def city_lag(run: Any, s: CityScale, tag: str, *, relay_poll: float, view_batch: int, suffix: str, seed: int) -> None:
    """``districts`` districts ingesting at once while their relays and the city view follow."""
    from bench.run import below, figure

    codes = [f"c{os.getpid()}{i}{suffix.strip('_')}" for i in range(s.districts)]
    city = City(f"{tag}_l{suffix.strip('_') or 'now'}", codes, relay_poll=relay_poll, view_batch=view_batch)
    try:
        d = Districts(list(city.urls.values()), s.recipients, s.months, seed=seed, quiet=True, nice=s.ingest_nice)
        city.start()
        lag = LagSampler(city.urls, city.city_url)
        lag.start()
        before = {c: public_positions(u) for c, u in city.urls.items()}
        _wait_caught_up(lag, {c: max(p, default=0) for c, p in before.items()}, 120, city)
        t_start = time.monotonic()
        d.start()
        got, wall = d.results()
        public = {c: public_positions(u) for c, u in city.urls.items()}
        caught = _wait_caught_up(lag, {c: max(p, default=0) for c, p in public.items()}, 180, city)
        lag.stop.set()
        lag.join(5)
        lags = lag.lags(public, since=t_start, exclude=before)
        relay_lags = lag.lags(public, since=t_start, exclude=before, relay=True)
        events = sum(r[1] for r in got)
        run.say(f"  lag{suffix or ''} (poll {relay_poll} s, view batch {view_batch}): p50 {pct(lags, 0.5):.2f} s, p99 {pct(lags, 0.99):.2f} s, "
                f"max {max(lags, default=float('nan')):.2f} s (published by the relays: p50 {pct(relay_lags, 0.5):.2f} s, p99 {pct(relay_lags, 0.99):.2f} s); "
                f"{events} events in {wall:.1f} s; caught up: {caught}")
        detail = {"relay_poll_s": relay_poll, "view_batch": view_batch, "districts": s.districts, "events": events, "ingest_nice": s.ingest_nice,
                  "ingest_events_per_s": round(events / wall, 1), "samples": len(lags), "caught_up": caught,
                  "published_by_the_relay_p50_p99_s": [round(pct(relay_lags, 0.5), 2), round(pct(relay_lags, 0.99), 2)]}
        run.add(figure(f"city_lag_p50{suffix}", pct(lags, 0.5), "s"), **detail)
        run.add(figure(f"city_lag_p99{suffix}", pct(lags, 0.99) if caught else None, "s", target=None if suffix else below(LAG_P99_S)), **detail)
        run.add(figure(f"city_lag_max{suffix}", max(lags, default=None), "s"), **detail)
    finally:
        city.drop()


def city_kill(run: Any, s: CityScale, tag: str) -> None:
    """SIGKILL of a district's ingest process, its relay and the city view under full ingest; then
    the city's aid paid per district and fund against the districts' own snapshots."""
    from bench.run import at_most, figure

    codes = [f"k{os.getpid()}{i}" for i in range(s.districts)]
    city = City(f"{tag}_k", codes, relay_poll=s.relay_poll, view_batch=s.view_batch)
    victim = codes[0]
    try:
        d = Districts(list(city.urls.values()), s.recipients, s.months, seed=700, quiet=True)
        city.start()
        lag = LagSampler(city.urls, city.city_url)
        lag.start()
        d.start()
        # mid-ingest: the view has applied some of every district, and the victim is still writing
        deadline = time.monotonic() + 600
        while not all(lag.latest().get(c, 0) > 200 for c in codes):
            if time.monotonic() > deadline or not d.procs[0].is_alive():
                raise RuntimeError(f"the city view had not applied 200 positions of every district while {victim} ingested: {lag.latest()}")
            city.check()
            time.sleep(0.2)
        killed_at = dict(lag.latest())
        for p in (d.procs[0], city.relays[victim], city.view):
            os.kill(p.pid, signal.SIGKILL)
        d.procs[0].join(10)
        city.relays[victim].wait(10)
        city.view.wait(10)  # type: ignore[union-attr]
        run.say(f"  kill -9 of {victim}'s ingest, its relay and the city view at view positions {killed_at}")
        time.sleep(1.0)
        city.start_relay(victim)
        city.start_view()
        again = Districts([city.urls[victim]], max(4, s.recipients // 4), s.months, seed=900, quiet=True)
        again.start()
        again.results()
        d.results(count=len(codes) - 1)
        public = {c: public_positions(u) for c, u in city.urls.items()}
        caught = _wait_caught_up(lag, {c: max(p, default=0) for c, p in public.items()}, 300, city)
        lag.stop.set()
        lag.join(5)
        city.stop()
        view_funds, snap_funds = _city_funds(city.city_url), {c: _snapshot_funds(u) for c, u in city.urls.items()}
        keys = {(c, f) for c in codes for f in snap_funds[c]} | set(view_funds)
        diff = sum((abs(view_funds.get(k, Decimal("0.00")) - snap_funds.get(k[0], {}).get(k[1], Decimal("0.00"))) for k in keys), Decimal("0.00"))
        total = sum((v for f in snap_funds.values() for v in f.values()), Decimal("0.00"))
        run.say(f"  after restart: caught up {caught}; city aid paid {sum(view_funds.values(), Decimal('0.00'))} vs districts' snapshots {total}: difference {diff}")
        run.add(figure("city_kill9_difference", float(diff) if caught else None, "yuan", target=at_most(0)),
                killed=[f"{victim} ingest", f"{victim} relay", "city view"], view_positions_at_kill=killed_at,
                districts_aid_paid=str(total), city_view_aid_paid=str(sum(view_funds.values(), Decimal("0.00"))), caught_up=caught,
                by_district_fund={f"{c}/{f}": [str(view_funds.get((c, f), "0.00")), str(snap_funds[c].get(f, "0.00"))] for c, f in sorted(keys)})
    finally:
        city.drop()


def _city_funds(url: str) -> dict[tuple[str, str], Decimal]:
    from infra.city import CityView

    view = CityView(url)
    try:
        return view.fund_totals()
    finally:
        view.close()


def _snapshot_funds(url: str) -> dict[str, Decimal]:
    """A district's own (V, T) snapshot: aid paid per fund (``commands.snapshot``)."""
    os.environ.setdefault("LEDGER_DATA_KEY", DATA_KEY)
    from commands.snapshot import take_snapshot
    from infra.settings import Settings
    from infra.wiring import build_app

    app = build_app(Settings(database_url=url), publish_policy=False)
    try:
        funds: dict[str, Decimal] = {}
        for row in take_snapshot(app, valid=SNAPSHOT_VALID).rows:
            if row["aid_paid"]:
                funds[row["fund"]] = funds.get(row["fund"], Decimal("0.00")) + row["aid_paid"]
        return funds
    finally:
        app.close()


def measure(run: Any, scale: CityScale | None = None, skip: tuple[str, ...] = ()) -> None:
    """Every city figure into ``run`` (``skip``: any of ``throughput``, ``lag-before``,
    ``lag-batch-only``, ``lag``, ``kill``)."""
    s = scale or CityScale()
    os.environ.setdefault("LEDGER_DATA_KEY", DATA_KEY)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still drops its databases and streams
    tag = f"bench_city_{os.getpid()}_{secrets.token_hex(2)}"
    run.dataset.update({"districts": s.districts, "recipients_per_district": s.recipients, "months": s.months, "repeats": s.repeats,
                        "relay_poll_s": s.relay_poll, "view_batch": s.view_batch})
    phases = [
        ("throughput", lambda: throughput(run, s, tag)),
        # the former settings (relay poll 0.5 s, the view one message per transaction), then each change alone, then both
        ("lag-before", lambda: city_lag(run, s, tag, relay_poll=0.5, view_batch=1, suffix="_before", seed=300)),
        ("lag-batch-only", lambda: city_lag(run, s, tag, relay_poll=0.5, view_batch=s.view_batch, suffix="_batch_only", seed=400)),
        ("lag", lambda: city_lag(run, s, tag, relay_poll=s.relay_poll, view_batch=s.view_batch, suffix="", seed=500)),
        ("kill", lambda: city_kill(run, s, tag)),
    ]
    for name, phase in phases:
        if name in skip:
            continue
        t0 = time.perf_counter()
        run.say(f"[bold]city {name}[/bold]")
        phase()
        run.details.setdefault("phase_seconds", {})[name] = round(run.details.get("phase_seconds", {}).get(name, 0) + time.perf_counter() - t0, 1)


if __name__ == "__main__":
    from bench.run import main

    sys.exit(main(["--scale", "city", *sys.argv[1:]]))
