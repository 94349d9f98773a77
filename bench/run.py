"""The ledger's benchmark (issue 16, ADR 0017): every figure beside a baseline measured in the same run.

    .venv/bin/python -m bench.run --scale quick       # make bench-quick: under two minutes
    .venv/bin/python -m bench.run --scale district    # make bench: 10,000 recipients (target: the whole run < 20 min)
    .venv/bin/python -m bench.run --scale quick --profile    # + pyinstrument profile of the batch ingest
    .venv/bin/python -m bench.run --scale city        # make bench-city: districts side by side and the city view
                                                      # (bench/city.py; bench/results/latest-city.json)

It creates a fresh PostgreSQL database (``infra.pg``; admin URL from ``LEDGER_BENCH_PG_ADMIN_URL``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``), fills it with a seeded district year
(``infra.demo``'s planner at the scale's size and visit rate), measures, prints one rich table and
writes ``bench/results/latest.json`` plus a timestamped copy, then drops the database. Each figure
is ``{name, value, unit, baseline, ratio, target, met}``; a figure that could not be measured has
``value`` null and says why in ``details``.

**Baselines that do not inherit the ledger's choices**, measured in the same run, interleaved with
the ledger's own work: a plain eventsourcing ``Application`` (the library's default mapper and
JSON transcoder, no compression, cipher, cache or hooks, its own ``baseline_events`` table) saving
a fixed event of 500 stored bytes, **one per transaction** (transactions/s) and **ten per
transaction** (events/s), then **selecting and decoding** every one of those events (events/s).

========================  ===============================================  ===========================
figure                    the ledger                                       compared with
========================  ===============================================  ===========================
ingest_batch              the plan's steps (every command: enrolments,     raw save, ten events per
                          expenses, one-stop, claims, signatures, the      transaction, events/s;
                          免申即享 batches, clearing) through the handlers  ratio >= 0.5
                          with group commit (``LedgerApp.group``), import
                          configuration, events/s
ingest_online             the plan's last ``online_steps`` steps through   raw save, one event per
                          a process with the ordinary wiring, one command  transaction, transactions/s;
                          per transaction, commands/s                      ratio >= 0.5
stored_bytes_per_event    mean ``octet_length(state)`` of the ledger's     <= 800 bytes
                          events table
projection_rebuild        every read model from zero, events/s (and        raw select+decode, events/s;
(+ _seconds)              seconds)                                         ratio >= 0.5, < 60 s
replay_verify             ``commands.replay.audit`` of every recipient, s  < 300 s (baseline: loading
                                                                           the same recipients)
explain_p50/_p99          ``commands.explain`` of random expenses, ms      p99 < 50 ms
snapshot (+ _peak_mb)     (V, T) snapshot of the district, JSON+CSV+XLSX   < 5 s, < 1024 MB
snapshot_4y_vs_1y         the same with four years of history before it    < 1.5
decision_cost_500_vs_5    one decision, 500 prior expenses over 5          <= 1.5
http_*                    mixed load, 50 clients, 60 s                     see issue 16
relay                     ``infra.relay.Relay`` to RabbitMQ, events/s      faststream alone
========================  ===============================================  ===========================

**Figures measured by other modules.** ``bench/decision_cost.py``, ``bench/snapshot_cost.py``,
``bench/rebuild.py`` and ``bench/http_load.py``, when present, are called with the filled run:
each defines ``measure(run: bench.run.Run) -> list[dict] | None`` and either returns its figures
(made with :func:`figure`) or adds them with ``run.add``. ``run`` gives ``url``, ``settings`` (the
store's data key included), ``app`` (a fresh application with the ordinary wiring on the filled
store), ``scale``, ``dataset``, ``baselines`` (the raw rates above), ``say`` and ``add``. A module
that is absent or has no ``measure`` leaves its figures "not measured"; for the rebuild and the
snapshot this module then measures them itself (``Runner.rebuild_parallel`` or ``rebuild``;
``commands.snapshot``).

``ratio`` is always the ledger's speed over the baseline's (rate / rate, or baseline time / ledger
time): 1.0 means as fast as the baseline, 0.5 half as fast. ``target`` says what it is compared
with (``{"on": "ratio" | "value", "op": ">=" | "<" | "<=", "value": ...}``) and ``met`` whether it held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import secrets
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CST = timezone(timedelta(hours=8))

#: The district year: 2026 up to the end of October (ten whole months, fixed so that every run
#: plans the same timeline whatever the day it runs; the post-hoc procedure is in force from April).
YEAR = 2026
UNTIL = date(2026, 10, 31)
#: The snapshot's (V, T): the state of every account on 30 September as known in mid-October.
SNAPSHOT_VALID = date(2026, 9, 30)
SNAPSHOT_KNOWN_AT = datetime(2026, 10, 15, 18, 0, tzinfo=CST)
SNAPSHOT_SECONDS = 5.0
SNAPSHOT_MB = 1024.0
EXPLAIN_P99_MS = 50.0
REPLAY_SECONDS = 300.0
REBUILD_SECONDS = 60.0
BYTES_PER_EVENT = 800.0
#: The raw baseline's event: this many bytes in the stored state column.
RAW_EVENT_BYTES = 500


@dataclass(frozen=True)
class Scale:
    name: str
    recipients: int
    #: Multiplier of the demo's monthly visit rates: 3.0 gives about 14 receipts per recipient in
    #: the ten months (~17 a year), the density of Changning's "ten thousand recipients and a few
    #: hundred thousand receipts a year".
    visits: float
    explain_samples: int
    relay_events: int  # the relay figure publishes at most this many events (both sides)
    chunks: int = 40  # batch ingest: ledger and baseline alternate this many times
    #: The plan's last steps, run through the ordinary wiring one command per transaction.
    online_steps: int = 300
    #: Top-level commands per group-commit transaction in the batch ingest (``commands.group``).
    group_size: int = 100
    #: Raw saves per chunk (one event each, and ten events each), interleaved with the ledger.
    raw_one_per_chunk: int = 40
    raw_ten_per_chunk: int = 10
    #: Notifications per page in the fallback rebuild (None: ``projections.runner.REBUILD_BATCH``,
    #: as ``ledger projections rebuild``).
    rebuild_batch: int | None = None
    seed: int = 2026


SCALES = {
    "quick": Scale("quick", recipients=40, visits=3.0, explain_samples=300, relay_events=2_000, chunks=10, online_steps=200),
    # Changning: ~10,000 recipients, ~140,000 receipts in the ten months (issue 16).
    "district": Scale("district", recipients=10_000, visits=3.0, explain_samples=1_000, relay_events=20_000, chunks=40, online_steps=3_000),
}

#: The figures other modules measure (issue 16), with their units and targets: "not measured"
#: while the module is absent.
OPTIONAL: dict[str, list[tuple[str, str, dict[str, Any] | None]]] = {}


# ---------------------------------------------------------------------------------------------
# figures


def figure(
    name: str,
    value: float | None,
    unit: str,
    *,
    baseline: float | None = None,
    ratio: float | None = None,
    target: dict[str, Any] | None = None,
    lower_is_better: bool = False,
) -> dict[str, Any]:
    """One figure as ``bench/results/*.json`` stores it.

    ``ratio`` defaults to the ledger's speed over the baseline's: ``value / baseline`` for a rate,
    ``baseline / value`` for a time (``lower_is_better``). ``target`` is ``{"on": "ratio" |
    "value", "op": ">=" | "<" | "<=", "value": x}``; ``met`` is None without one (or without a value)."""
    if ratio is None and baseline and value is not None:
        ratio = (baseline / value if value else 0.0) if lower_is_better else value / baseline
    met = None
    if target is not None:
        observed = ratio if target["on"] == "ratio" else value
        if observed is not None:
            op, limit = target["op"], target["value"]
            met = bool(observed >= limit if op == ">=" else observed <= limit if op == "<=" else observed < limit)
    return {
        "name": name,
        "value": _round(value),
        "unit": unit,
        "baseline": _round(baseline),
        "ratio": _round(ratio),
        "target": target,
        "met": met,
    }


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return float(f"{x:.4g}") if abs(x) < 1000 else round(x, 1)


def at_least(x: float, on: str = "ratio") -> dict[str, Any]:
    return {"on": on, "op": ">=", "value": x}


def below(x: float, on: str = "value") -> dict[str, Any]:
    return {"on": on, "op": "<", "value": x}


def at_most(x: float, on: str = "value") -> dict[str, Any]:
    return {"on": on, "op": "<=", "value": x}


OPTIONAL.update({
    "decision_cost": [("decision_cost_500_vs_5", "ratio", at_most(1.5))],
    "snapshot_cost": [("snapshot", "s", below(SNAPSHOT_SECONDS)), ("snapshot_peak_mb", "MB", below(SNAPSHOT_MB)),
                      ("snapshot_4y_vs_1y", "ratio", below(1.5))],
    "rebuild": [("projection_rebuild", "events/s", at_least(0.5)), ("projection_rebuild_seconds", "s", below(REBUILD_SECONDS))],
    "http_load": [("http_requests_per_s", "requests/s", at_least(100, "value")), ("http_read_p99", "ms", below(500)),
                  ("http_write_p99", "ms", below(1000)), ("http_errors", "requests", below(1)),
                  ("http_rss_per_process", "MB", below(400))],
})


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    scale: Scale
    url: str
    console: Any
    profile: bool = False
    env: dict[str, str] = field(default_factory=dict)
    figures: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    #: The raw baselines' rates (``raw_save_one_tx_per_s``, ``raw_save_ten_events_per_s``,
    #: ``raw_select_decode_events_per_s``), for the modules that compare with them.
    baselines: dict[str, float] = field(default_factory=dict)
    app: Any = None
    settings: Any = None
    expense_ids: list[str] = field(default_factory=list)
    raw: Any = None

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {text}")

    def add(self, fig: dict[str, Any], **detail: Any) -> None:
        self.figures = [f for f in self.figures if f["name"] != fig["name"]] + [fig]
        if detail:
            self.details[fig["name"]] = detail

    def not_measured(self, name: str, unit: str, target: dict[str, Any] | None, why: str) -> None:
        if any(f["name"] == name for f in self.figures):
            return
        self.add(figure(name, None, unit, target=target), not_measured=why)


def _settings(url: str) -> Any:
    from infra.settings import Settings

    # Every save chains its events in its own transaction (ADR 0016); a data key of its own so
    # that personal fields are encrypted as in production.
    return Settings(database_url=url, data_key=secrets.token_urlsafe(32), jurisdiction="shanghai.changning")


# -- the raw baselines -------------------------------------------------------------------------


def select_and_decode(recorder: Any, mapper: Any, topics: Iterable[str], page: int) -> tuple[int, float]:
    """Every notification of ``topics`` (all if empty) up to the log's head, selected in pages and
    decoded with ``mapper``; (events, seconds)."""
    began = time.perf_counter()
    count, start, topics = 0, 1, list(topics)
    head = recorder.max_notification_id() or 0
    while start <= head:
        batch = recorder.select_notifications(start, page, stop=head, topics=topics)
        if not batch:
            break
        for n in batch:
            mapper.to_domain_event(n)
        count += len(batch)
        start = batch[-1].id + 1
    return count, time.perf_counter() - began


class Raw:
    """A plain eventsourcing Application on the same database (its own ``baseline_events``): the
    library's default mapper and JSON transcoder, none of the ledger's settings (no compression,
    cipher, cache or hooks), saving a fixed event of ``RAW_EVENT_BYTES`` stored bytes."""

    PERSISTENCE = ("PERSISTENCE_MODULE", "POSTGRES_DBNAME", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER",
                   "POSTGRES_PASSWORD", "SQLITE_DBNAME")

    def __init__(self, url: str):
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event

        from infra.settings import Settings

        class Blob(Aggregate):
            def __init__(self, payload: str):
                self.n = 0

            @event("Noted")
            def note(self, payload: str) -> None:
                self.n += 1

        class Baseline(Application):
            name = "Baseline"

        full = Settings(database_url=url).eventsourcing_env("Baseline")
        self.app = Baseline({k: v for k, v in full.items() if k in self.PERSISTENCE})
        self.Blob = Blob
        # the payloads that make the stored state exactly RAW_EVENT_BYTES (the created event
        # carries the aggregate's topic as well, so its payload is shorter)
        self.payload = self.note_payload = "x"
        for _ in range(3):
            size = self._state_size(Blob(payload=self.payload))
            self.payload = "x" * max(1, len(self.payload) + RAW_EVENT_BYTES - size)
        for _ in range(3):
            b = Blob(payload=self.payload)
            b.note(payload=self.note_payload)
            size = self._state_size(b)
            self.note_payload = "x" * max(1, len(self.note_payload) + RAW_EVENT_BYTES - size)
        self.event_bytes = self._state_size(Blob(payload=self.payload))
        self.saved = 0

    def _state_size(self, blob: Any) -> int:
        return len(self.app.mapper.to_stored_event(blob.pending_events[-1]).state)

    def save_one(self, transactions: int) -> tuple[int, float]:
        """``transactions`` saves of one event each; (events, seconds)."""
        blobs = [self.Blob(payload=self.payload) for _ in range(transactions)]
        t0 = time.perf_counter()
        for b in blobs:
            self.app.save(b)
        t = time.perf_counter() - t0
        self.saved += transactions
        return transactions, t

    def save_ten(self, transactions: int) -> tuple[int, float]:
        """``transactions`` saves of ten events each (one aggregate, created and noted nine times)."""
        blobs = []
        for _ in range(transactions):
            b = self.Blob(payload=self.payload)
            for _ in range(9):
                b.note(payload=self.note_payload)
            blobs.append(b)
        t0 = time.perf_counter()
        for b in blobs:
            self.app.save(b)
        t = time.perf_counter() - t0
        self.saved += 10 * transactions
        return 10 * transactions, t

    def select_decode(self, page: int = 1000) -> tuple[int, float]:
        """Every stored baseline event, selected in pages and decoded; (events, seconds)."""
        return select_and_decode(self.app.recorder, self.app.mapper, (), page)

    def close(self) -> None:
        self.app.close()


class Tally:
    """Counts what one application writes: ``insert_events`` calls (transactions) and events."""

    def __init__(self, app: Any):
        self.app, self.transactions, self.events = app, 0, 0
        original = app.recorder.insert_events

        def counted(stored: Any, **kwargs: Any) -> Any:
            self.transactions += 1
            self.events += len(stored)
            return original(stored, **kwargs)

        app.recorder.insert_events = counted

    def undo(self) -> None:
        self.app.recorder.__dict__.pop("insert_events", None)


class Commands:
    """Counts the commands an application runs (nested ones included: each is a command)."""

    def __init__(self, app: Any):
        self.app, self.count = app, 0
        original = app.run

        def counted(cmd: Any) -> Any:
            self.count += 1
            return original(cmd)

        app.run = counted

    def undo(self) -> None:
        self.app.__dict__.pop("run", None)


class Rate:
    def __init__(self) -> None:
        self.n, self.t = 0, 0.0

    def add(self, nt: tuple[int, float]) -> None:
        self.n, self.t = self.n + nt[0], self.t + nt[1]

    @property
    def per_s(self) -> float:
        return self.n / self.t if self.t else 0.0


# -- ingest ------------------------------------------------------------------------------------


def ingest(run: Run) -> None:
    """The batch ingest (group commit, import configuration) of the plan but its last
    ``online_steps``, then those through the ordinary wiring, one command per transaction."""
    from infra import demo, integrity
    from infra.wiring import build_app, ensure_policy

    s = run.scale
    run.settings = settings = _settings(run.url)
    env = {**demo.demo_env(settings), **run.env}
    app = build_app(settings, env=env, publish_policy=False)
    plan = demo.plan(recipients=s.recipients, seed=s.seed, years=(YEAR,), until=UNTIL, id_for=app.recipient_id_for, visits=s.visits)
    ensure_policy(app, published_at=plan.published_at)
    run.raw = raw = Raw(run.url)
    chain = integrity.chain_for(app)
    replay = demo.Replay(app)
    steps = plan.steps
    n_online = min(s.online_steps, len(steps) // 5)
    batch_steps, online_steps = steps[: len(steps) - n_online], steps[len(steps) - n_online :]
    per_chunk = max(1, -(-len(batch_steps) // s.chunks))
    run.say(f"batch ingest: {s.recipients} recipients, {len(batch_steps)} of {len(steps)} planned steps, "
            f"groups of {s.group_size} commands, {len(batch_steps) // per_chunk + 1} chunks")
    profiler = _profiler() if run.profile else None
    raw_one, raw_ten = Rate(), Rate()
    tally, commands = Tally(app), Commands(app)
    t_ledger = 0.0
    chain_s = 0.0
    gc.collect()
    collector = _GcTime()  # the cyclic collector's CPU in this phase (commands.group._Collector)
    cpu0 = time.process_time()
    for i in range(0, len(batch_steps), per_chunk):
        chunk = batch_steps[i : i + per_chunk]
        if profiler:
            profiler.start()
        t0 = time.perf_counter()
        with app.group(s.group_size):
            for step in chunk:
                step.action(replay, step.at)
        t1 = time.perf_counter()
        chain.run(checkpoint_at_end=False)
        chain_s += time.perf_counter() - t1
        t_ledger += time.perf_counter() - t0
        if profiler:
            profiler.stop()
        raw_ten.add(raw.save_ten(s.raw_ten_per_chunk))
        raw_one.add(raw.save_one(s.raw_one_per_chunk))
        done = min(i + per_chunk, len(batch_steps))
        if done == len(batch_steps) or (i // per_chunk) % max(1, s.chunks // 5) == 0:
            run.say(f"  {done}/{len(batch_steps)} steps: ledger {t_ledger:.1f}s ({tally.events} events in {tally.transactions} "
                    f"transactions), raw {raw_ten.t + raw_one.t:.1f}s")
    cpu = time.process_time() - cpu0
    collector.stop()
    tally.undo()
    commands.undo()
    chain.run()
    batch_events, batch_tx, batch_commands = tally.events, tally.transactions, commands.count
    batch_expenses = replay.outcomes[("record_expense", "accepted")]
    run.add(
        figure("ingest_batch", batch_events / t_ledger, "events/s", baseline=raw_ten.per_s, target=at_least(0.5)),
        ledger_seconds=round(t_ledger, 2),
        process_cpu_seconds=round(cpu, 2),
        chain_seconds=round(chain_s, 2),
        gc_cpu_seconds=round(collector.seconds, 2),
        gc_full_collections=collector.full,
        events=batch_events,
        transactions=batch_tx,
        events_per_transaction=round(batch_events / max(1, batch_tx), 1),
        commands=batch_commands,
        commands_per_s=round(batch_commands / t_ledger, 1),
        expenses=batch_expenses,
        expenses_per_s=round(batch_expenses / t_ledger, 1),
        group_size=s.group_size,
        baseline=f"raw save() of ten {raw.event_bytes}-byte events per transaction, {raw_ten.n} events interleaved after each chunk",
        configuration="import: infra.demo.demo_env (aggregate cache, no deep copies, one writer) with LedgerApp.group",
    )

    # What the batch wrote, read from the aggregates while they are in the cache (the online
    # phase's other process changes some of them after).
    summary = demo.summarise(app, replay)

    # The plan's last steps as an online process does them: ordinary wiring, no cache, one
    # command per transaction (LedgerApp.run), the chain extended in each saving transaction.
    online = build_app(settings, env={**settings.eventsourcing_env(app.name), **run.env}, publish_policy=False)
    replay.app = online
    tally, commands = Tally(online), Commands(online)
    online_chunks = max(1, min(s.chunks, len(online_steps) // 20 or 1))
    per = max(1, -(-len(online_steps) // online_chunks))
    raw_online = Rate()
    t_online = 0.0
    run.say(f"online ingest: {len(online_steps)} steps, ordinary wiring, one command per transaction")
    # An online process does not carry the batch phase's heap (its application, the plan, the
    # summary): freeze what is alive now so that the collector's full passes during this phase
    # walk only what the online process itself allocates, as they would in a process of its own.
    gc.collect()
    gc.freeze()
    for i in range(0, len(online_steps), per):
        raw_online.add(raw.save_one(max(1, s.raw_one_per_chunk // 2)))
        t0 = time.perf_counter()
        for step in online_steps[i : i + per]:
            step.action(replay, step.at)
        t_online += time.perf_counter() - t0
        raw_online.add(raw.save_one(max(1, s.raw_one_per_chunk // 2)))
    gc.unfreeze()
    tally.undo()
    commands.undo()
    integrity.chain_for(online).run()
    raw_one.add((raw_online.n, raw_online.t))
    run.add(
        figure("ingest_online", commands.count / t_online if t_online else 0.0, "commands/s", baseline=raw_online.per_s, target=at_least(0.5)),
        ledger_seconds=round(t_online, 2),
        steps=len(online_steps),
        commands=commands.count,
        transactions=tally.transactions,
        events=tally.events,
        events_per_transaction=round(tally.events / max(1, tally.transactions), 2),
        baseline=f"raw save() of one {raw.event_bytes}-byte event per transaction, transactions/s, {raw_online.n} interleaved",
        configuration="ordinary wiring (infra.wiring.build_app: its bounded aggregate cache, reads checked at the save, ADR 0021), LedgerApp.run",
    )
    run.baselines.update(raw_save_one_tx_per_s=round(raw_one.per_s, 1), raw_save_ten_events_per_s=round(raw_ten.per_s, 1),
                         raw_event_bytes=raw.event_bytes)

    recorded = replay.outcomes[("record_expense", "accepted")]
    run.expense_ids = list(replay.expenses.values())
    from infra.ops import event_count

    summary.events = event_count(online)
    by_cat: dict[str, list[int]] = {}
    for p in plan.people:
        by_cat.setdefault(p.category, []).append(len(p.expenses))
    run.dataset = {
        "generator": f"infra.demo.plan(recipients={s.recipients}, seed={s.seed}, years=({YEAR},), until={UNTIL}, visits={s.visits})",
        "period": f"{plan.start}..{plan.end}",
        "recipients": len(plan.people),
        "expenses": recorded,
        "events": summary.events,
        "summary_note": "counts other than expenses and events are the batch phase's (before the online steps)",
        "steps": len(steps),
        "expenses_per_recipient_by_category": {c: round(sum(v) / len(v), 1) for c, v in sorted(by_cat.items())},
        "one_stop": summary.one_stop,
        "claims": summary.claims,
        "clearing_cases": summary.cases_opened,
        "supplementary_payouts": summary.supplementary,
        "suspensions": summary.suspensions,
        "duplicates": summary.duplicates,
        "paid_total": str(summary.paid_total),
        "rejections": summary.rejections,
    }
    # The read-side figures use the application every other process builds: no cache, cold.
    app.close()
    online.close()
    run.app = build_app(settings, publish_policy=False)
    if profiler:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"profile-{s.name}-ingest.txt"
        out.write_text(profiler.output_text(show_all=False), encoding="utf-8")
        run.say(f"ingest profile written to {out.relative_to(ROOT)}")


class _GcTime:
    """The CPU seconds the cyclic collector takes (``gc.callbacks``) until :meth:`stop`, and its
    full collections."""

    def __init__(self) -> None:
        self.seconds, self.full, self._began = 0.0, 0, 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.seconds += time.process_time() - self._began
            self.full += info["generation"] == 2

    def stop(self) -> None:
        if self._note in gc.callbacks:
            gc.callbacks.remove(self._note)


def _profiler() -> Any:
    """pyinstrument (installed by hand, not a dependency): its sessions combine across start/stop."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile needs pyinstrument (.venv/bin/pip install pyinstrument)", file=sys.stderr)
        return None
    return Profiler(interval=0.001)


def raw_read(run: Run) -> None:
    """select+decode of every raw baseline event (the rebuild's baseline)."""
    n, t = run.raw.select_decode()
    run.baselines["raw_select_decode_events_per_s"] = round(n / t, 1)
    run.details["baselines"] = {**run.baselines, "raw_events_read": n, "raw_read_seconds": round(t, 2),
                                "note": "a plain eventsourcing Application (default mapper, JSON, no compression/cipher/cache) "
                                        "on the same database, interleaved with the ledger's work"}
    run.raw.close()


# -- stored size -------------------------------------------------------------------------------


def stored_bytes(run: Run) -> None:
    """Mean bytes of the stored state column over the ledger's events (compressed and encrypted
    as stored), beside the raw baseline's fixed event."""
    import psycopg

    from infra import pg

    table = getattr(run.app.recorder, "events_table_name", "ledger_events")
    with psycopg.connect(pg._libpq_url(run.url)) as conn:  # noqa: SLF001 - same URL rules as infra.pg
        count, mean, total = conn.execute(f"SELECT count(*), avg(octet_length(state)), sum(octet_length(state)) FROM {table}").fetchone()
        by_topic = conn.execute(
            f"SELECT topic, count(*), avg(octet_length(state)) FROM {table} GROUP BY topic ORDER BY sum(octet_length(state)) DESC LIMIT 6"
        ).fetchall()
        size = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
    run.add(
        figure("stored_bytes_per_event", float(mean or 0), "bytes", baseline=float(run.baselines.get("raw_event_bytes", RAW_EVENT_BYTES)),
               ratio=None, target=at_most(BYTES_PER_EVENT)),
        events=count,
        state_bytes=int(total or 0),
        table_bytes_with_indexes=int(size),
        table_bytes_per_event=round(size / max(1, count), 1),
        largest_topics=[{"topic": t.rsplit(":", 1)[-1], "events": c, "mean_bytes": round(float(b), 1)} for t, c, b in by_topic],
    )


# -- projections -------------------------------------------------------------------------------


def projection_rebuild(run: Run) -> None:
    """The fallback while ``bench/rebuild.py`` has no ``measure``: ``Runner.rebuild_parallel``
    (one process per core, each a partition of the recipients) when the runner has it, else
    ``Runner.rebuild``."""
    from projections.common import make_engine, projection_url
    from projections.runner import REBUILD_BATCH, Runner

    app = run.app
    engine_url = projection_url(run.settings.sqlalchemy_url())
    engine = make_engine(engine_url)
    batch = run.scale.rebuild_batch or REBUILD_BATCH
    runner = Runner(engine, app.recorder, app.mapper, batch_size=batch)
    how = "Runner.rebuild (one process)"
    try:
        runner.setup()
        t0 = time.perf_counter()
        if hasattr(runner, "rebuild_parallel"):
            from infra.projection_source import store_source

            from projections.runner import default_jobs

            os.environ["LEDGER_DATA_KEY"] = run.settings.data_key  # the worker processes decode with it
            jobs = default_jobs(runner.head())  # as `ledger projections rebuild`: one process for a short log
            n = runner.rebuild_parallel(engine_url, store_source(run.url, "shanghai.changning"), jobs=jobs)
            how = (f"Runner.rebuild_parallel (jobs={jobs}: each process a partition of the recipients, "
                   f"every view folding its pages, and the views that cannot be split in a process of their own; "
                   f"notifications_read summed over processes)")
        else:
            n = runner.rebuild()
        t = time.perf_counter() - t0
    finally:
        engine.dispose()
    base = run.baselines.get("raw_select_decode_events_per_s")
    events = run.dataset.get("events") or n
    run.add(
        figure("projection_rebuild", events / t, "events/s", baseline=base, target=at_least(0.5)),
        log_events=events,
        notifications_read=n,
        seconds=round(t, 2),
        how=how,
        views=[p.name for p in runner.projections],
        batch=batch,
        baseline="raw select+decode of the baseline's 500-byte events, events/s",
    )
    run.add(figure("projection_rebuild_seconds", t, "s", target=below(REBUILD_SECONDS)))


# -- replay ------------------------------------------------------------------------------------


def replay_verify(run: Run) -> None:
    """``ledger replay --all --verify``: every decision of every recipient re-made and compared, in
    as many processes as the command takes by default (``commands.replay.default_jobs``)."""
    from commands.replay import audit, default_jobs
    from commands.timeline import project
    from infra.projection_source import store_source

    app = run.app
    rids = list(app.recipient_ids())
    # The baseline loads half the recipients before the audit and half after it, so that a load
    # that drifts during the run weighs on both sides.
    half = len(rids) // 2

    def load(ids: Iterable[uuid.UUID]) -> float:
        t0 = time.perf_counter()
        for rid in ids:
            project(app.events.get(rid))
        return time.perf_counter() - t0

    tb = load(rids[:half])
    jobs = default_jobs(len(rids))
    if run.settings is not None:
        os.environ["LEDGER_DATA_KEY"] = run.settings.data_key  # the worker processes decode with it
    t0 = time.perf_counter()
    report = audit(app, recipients=rids, jobs=jobs, source=store_source(run.url, app.jurisdiction))
    t = time.perf_counter() - t0
    tb += load(rids[half:])
    records = report.decisions + report.reassessments
    if not report.ok:
        run.console.print(f"[bold red]replay --verify: {len(report.different)} decisions differ from what was recorded (R-TIME-1)[/bold red]")
    run.add(
        figure("replay_verify", t, "s", baseline=tb, lower_is_better=True, target=below(REPLAY_SECONDS)),
        decisions=report.decisions,
        reassessments=report.reassessments,
        decisions_per_s=round(records / t, 1),
        expenses_compared=report.expenses,
        differences=len(report.different),
        recipients=report.recipients,
        jobs=jobs,
        baseline="loading and rebuilding the same recipients from their events, no re-decision, in one process, seconds",
    )


# -- explain -----------------------------------------------------------------------------------


def explain(run: Run) -> None:
    from commands.app import recipient_of
    from commands.explain import explain_expense

    app = run.app
    rng = random.Random(run.scale.seed)
    sample = [rng.choice(run.expense_ids) for _ in range(run.scale.explain_samples)]
    ledger_ms, base_ms = [], []
    gc.collect()
    for eid in sample:
        t0 = time.perf_counter()
        app.recipient(recipient_of(eid))
        base_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        explain_expense(app, eid)
        ledger_ms.append((time.perf_counter() - t0) * 1000)
    p50, p99 = _pct(ledger_ms, 50), _pct(ledger_ms, 99)
    b50, b99 = _pct(base_ms, 50), _pct(base_ms, 99)
    run.add(figure("explain_p50", p50, "ms", baseline=b50, lower_is_better=True), samples=len(sample), max_ms=round(max(ledger_ms), 1))
    run.add(
        figure("explain_p99", p99, "ms", baseline=b99, lower_is_better=True, target=below(EXPLAIN_P99_MS)),
        baseline="loading the expense's recipient (LedgerApp.recipient), the same samples, interleaved",
    )


def _pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- snapshot ----------------------------------------------------------------------------------


class PeakRss:
    """The process's resident memory, sampled every 20 ms while the block runs (MB)."""

    def __enter__(self) -> "PeakRss":
        self.before = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def snapshot(run: Run) -> None:
    """The fallback while ``bench/snapshot_cost.py`` has no ``measure``: ``commands.snapshot`` of
    the whole district at (V, T), exported as JSON, CSV and XLSX, beside a scan of the log."""
    from commands.snapshot import take_snapshot

    app = run.app

    def scan() -> tuple[int, float]:
        t0 = time.perf_counter()
        count, start = 0, 1
        while True:
            page = app.recorder.select_notifications(start=start, limit=1000)
            if not page:
                break
            for n in page:
                app.mapper.to_domain_event(n)
            count += len(page)
            start = page[-1].id + 1
        return count, time.perf_counter() - t0

    n1, tb1 = scan()
    gc.collect()
    with PeakRss() as mem:
        t0 = time.perf_counter()
        snap = take_snapshot(app, SNAPSHOT_VALID, SNAPSHOT_KNOWN_AT)
        files = snap.export(("json", "csv", "xlsx"))
        t = time.perf_counter() - t0
    _, tb2 = scan()
    run.add(
        figure("snapshot", t, "s", baseline=(tb1 + tb2) / 2, lower_is_better=True, target=below(SNAPSHOT_SECONDS)),
        valid=SNAPSHOT_VALID.isoformat(),
        known_at=SNAPSHOT_KNOWN_AT.isoformat(),
        rows=len(snap.rows),
        recipients=snap.recipients,
        bytes={k: len(v) for k, v in files.items()},
        events_in_log=n1,
        how="commands.snapshot.take_snapshot + Snapshot.export(json, csv, xlsx), in this process",
        baseline="reading and decoding the whole notification log (mean of a scan before and one after)",
    )
    run.add(figure("snapshot_peak_mb", mem.peak - mem.before, "MB", target=below(SNAPSHOT_MB)),
            rss_before_mb=round(mem.before, 1), rss_peak_mb=round(mem.peak, 1),
            how="growth of the process's resident memory during the snapshot, sampled every 20 ms")


# -- the other modules' figures ----------------------------------------------------------------


def optional(module: str, adapter: Callable[[Run, Any], None] | None = None, fallback: Callable[[Run], None] | None = None) -> Callable[[Run], None]:
    """A phase for ``bench/<module>.py``: when the module exists, ``adapter(run, module)`` measures
    with it (or, without an adapter, the module's own ``bench_figures(run)``, which returns its
    figures or adds them with ``run.add``); when it is absent, ``fallback(run)`` if any. Figures
    still missing afterwards are recorded as not measured, with the reason."""

    def phase(run: Run) -> None:
        name = f"bench.{module}"
        why = None
        if importlib.util.find_spec(name) is None:
            why = f"bench/{module}.py is absent"
            if fallback is not None:
                run.say(f"  {why}: measured here instead")
                fallback(run)
        else:
            mod = importlib.import_module(name)
            if adapter is not None:
                adapter(run, mod)
            elif hasattr(mod, "bench_figures"):
                for fig in mod.bench_figures(run) or []:
                    run.add(fig)
            elif fallback is not None:
                fallback(run)
            else:
                why = f"bench/{module}.py has no bench_figures(run)"
        for fname, unit, target in OPTIONAL[module]:
            run.not_measured(fname, unit, target, why or f"bench/{module}.py did not report it")

    phase.__name__ = module
    return phase


def decision_cost(run: Run, mod: Any) -> None:
    """``bench/decision_cost.py``: one whole one-stop decision (load, decide, pay, save) with the
    ordinary wiring, 500 prior expenses over 5: the ratio of the medians, the two sizes
    interleaved (an in-memory SQLite store of its own; the full-pass comparison is the district's)."""
    quick = run.scale.name == "quick"
    trials = 15 if quick else 31
    out = mod.main(trials, with_full_pass=not quick)
    run.add(figure("decision_cost_500_vs_5", out["ratio_500_vs_5"], "ratio", target=at_most(1.5)),
            **{k: v for k, v in out.items() if k != "ratio_500_vs_5"})


def snapshot_cost(run: Run, mod: Any) -> None:
    """The (V, T) snapshot of the district from the persisted cuts (``projections.cuts``,
    ``commands.snapshot.snapshot_from_cuts``), JSON+CSV+XLSX written, on the filled store; then
    ``bench/snapshot_cost.py``'s own stores, one year and four years of history, for the ratio."""
    import tempfile

    from commands.snapshot import FORMATS, snapshot_from_cuts, write_export
    from projections import cuts
    from projections.common import make_engine, projection_url

    app = run.app
    engine = make_engine(projection_url(run.settings.sqlalchemy_url()))
    try:
        t0 = time.perf_counter()
        cuts.catch_up(engine, app.recorder, app.mapper)
        follow = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
            # once to warm (imports, openpyxl, connections), then the timed run
            write_export(*snapshot_from_cuts(app, engine, SNAPSHOT_VALID, SNAPSHOT_KNOWN_AT), FORMATS, Path(tmp) / "warm")
            gc.collect()
            with PeakRss() as mem:
                t0 = time.perf_counter()
                head, rows = snapshot_from_cuts(app, engine, SNAPSHOT_VALID, SNAPSHOT_KNOWN_AT)
                manifest = write_export(head, rows, FORMATS, Path(tmp))
                t = time.perf_counter() - t0
    finally:
        engine.dispose()
    run.add(figure("snapshot", t, "s", target=below(SNAPSHOT_SECONDS)),
            valid=SNAPSHOT_VALID.isoformat(), known_at=SNAPSHOT_KNOWN_AT.isoformat(), rows=manifest.get("rows"),
            formats=list(FORMATS), cuts_catch_up_seconds=round(follow, 2),
            how="projections.cuts caught up first (as a running projections process keeps it), then "
                "commands.snapshot.snapshot_from_cuts + write_export, in this process")
    run.add(figure("snapshot_peak_mb", mem.peak - mem.before, "MB", target=below(SNAPSHOT_MB)),
            rss_before_mb=round(mem.before, 1), rss_peak_mb=round(mem.peak, 1),
            how="growth of the process's resident memory during the snapshot, sampled every 20 ms")

    from infra import pg

    admin = os.environ.get("LEDGER_BENCH_PG_ADMIN_URL", pg.DEFAULT_ADMIN_URL)
    people = 2 if run.scale.name == "quick" else 20
    with mod.stores(admin, people, "ledger_bench_snap") as (stores, built):
        # What this process holds (the district's application and caches, the stores just
        # built) is not the snapshot's: frozen, the collector's passes during the few
        # milliseconds timed walk only what the snapshot itself makes.
        gc.collect()
        gc.freeze()
        try:
            with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
                found = mod.measure(stores, Path(tmp))
        finally:
            gc.unfreeze()
    years = {n: {**found[n], "build_s": round(built[n], 1)} for n in found}
    run.add(figure("snapshot_4y_vs_1y", years[4]["snapshot_s"] / years[1]["snapshot_s"], "ratio", target=below(1.5)),
            recipients=people, one_year=years[1], four_years=years[4],
            how="bench/snapshot_cost.py: the same recipients with one receipt a month over one year and over four, "
                "snapshot of the last year's end from the persisted cuts (the best of eleven runs each, the two stores "
                "alternating; this process's heap frozen)")


def http_load(run: Run, mod: Any) -> None:
    """``bench/http_load.py``: ``ledger serve --workers 2`` on a fresh PostgreSQL database of its
    own (its recipients enrolled through the API), 70% reads and 30% claim flows."""
    import contextlib
    import io
    import re

    from infra import pg

    quick = run.scale.name == "quick"
    clients, duration = (10, 5) if quick else (50, 60)
    admin = os.environ.get("LEDGER_BENCH_PG_ADMIN_URL", pg.DEFAULT_ADMIN_URL)
    name = f"ledger_bench_http_{os.getpid()}_{secrets.token_hex(3)}"
    url = pg.create_database(admin, name)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = mod.main(["--database-url", url, "--workers", "2", "--clients", str(clients), "--duration", str(duration),
                             "--people", "5" if quick else "40", "--snapshots"])
    finally:
        pg.drop_database(admin, name)
    text = out.getvalue()
    if code:
        raise RuntimeError(f"bench/http_load.py exited {code}: {text[-500:]}")

    def grab(pattern: str) -> float | None:
        found = re.search(pattern, text)
        return float(found.group(1).replace(",", "")) if found else None

    rss = [float(x.replace(",", "")) for x in re.findall(r"pid \d+ (?:\([^)]*\) )?([\d,]+) MB", text)]
    common = {"clients": clients, "duration_s": duration, "workers": 2, "output": text.strip().splitlines()}
    run.add(figure("http_requests_per_s", grab(r"requests/s\s*:\s*([\d,.]+)"), "requests/s", target=at_least(100, "value")), **common)
    run.add(figure("http_read_p99", grab(r"read\s+latency\s*:.*?p99\s+([\d,]+)\s*ms"), "ms", target=below(500)))
    run.add(figure("http_write_p99", grab(r"write latency\s*:.*?p99\s+([\d,]+)\s*ms"), "ms", target=below(1000)))
    run.add(figure("http_errors", grab(r"errors\s*:\s*(\d+)"), "requests", target=below(1)))
    run.add(figure("http_rss_per_process", max(rss) if rss else None, "MB", target=below(400)), processes=rss)


# -- relay -------------------------------------------------------------------------------------


def relay(run: Run) -> None:
    """The relay beside faststream alone, as ``bench/relay.py`` measures them (its helpers: a
    uniquely named exchange with a durable queue bound to it, deleted afterwards), on the first
    ``relay_events`` notifications of the district's store."""
    from bench.relay import bind_queue, cleanup, publish_only
    from infra.relay import Relay, StoreReader, Topology

    tag = f"bench{secrets.token_hex(3)}"
    url = os.environ.get("LEDGER_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    topology = Topology(kind="rabbit", url=url, exchange=f"{tag}.events")
    queue = f"{tag}.sink"
    app = run.app
    head = int(app.recorder.max_notification_id() or 0)
    stop = _id_after(app, run.scale.relay_events) or head  # ids can have gaps: the id that many in

    asyncio.run(bind_queue(topology, queue))
    try:
        r = Relay(run.settings, topology, name=tag, app=app, batch_size=200)
        r.reader.head = lambda: stop  # type: ignore[method-assign] - publish up to `stop` only
        t0 = time.perf_counter()
        stats = asyncio.run(r.run(once=True, start=0))
        t = time.perf_counter() - t0
        r.tracking.dispose()

        reader = StoreReader(app)
        messages: list[Any] = []
        position = 0
        while position < stop:
            page = reader.read(position, 1000, stop)
            if page.last == position:
                break
            messages.extend(page.messages)
            position = page.last
        tb = asyncio.run(publish_only(topology, messages))
    finally:
        asyncio.run(cleanup(topology, [queue]))
    run.add(
        figure("relay", stats.published / t, "events/s", baseline=len(messages) / tb),
        published=stats.published,
        seconds=round(t, 2),
        baseline_messages=len(messages),
        baseline_seconds=round(tb, 2),
        up_to_position=stop,
        broker=f"rabbit exchange {topology.exchange} with durable queue {queue} (both deleted after the run)",
    )


def _id_after(app: Any, count: int) -> int | None:
    seen, start = 0, 1
    while True:
        page = app.recorder.select_notifications(start=start, limit=1000)
        if not page:
            return None
        if seen + len(page) >= count:
            return page[count - seen - 1].id
        seen += len(page)
        start = page[-1].id + 1


# ---------------------------------------------------------------------------------------------
# output


def render(run: Run, elapsed: float) -> None:
    from rich.table import Table

    table = Table(title=f"ledger benchmark, scale {run.scale.name} ({run.dataset.get('recipients')} recipients, "
                  f"{run.dataset.get('expenses')} expenses, {run.dataset.get('events')} events; {elapsed:.0f}s)")
    for col in ("figure", "ledger", "baseline", "unit", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col in ("figure", "unit", "target") else "right")
    for f in run.figures:
        t = f["target"]
        target = "" if t is None else f"{t['on']} {t['op']} {t['value']:g}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[f["met"]]
        table.add_row(
            f["name"],
            "not measured" if f["value"] is None else _fmt(f["value"]),
            _fmt(f["baseline"]),
            f["unit"],
            "" if f["ratio"] is None else f"{f['ratio']:.2f}",
            target,
            met,
        )
    run.console.print(table)


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:,.3g}"


def write(run: Run, started: datetime, elapsed: float, load: tuple[float, ...], latest: str = "latest.json") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "scale": asdict(run.scale),
        "env": run.env,
        "started_at": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load,
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": run.details.pop("_postgres", None),
        },
        "dataset": run.dataset,
        "baselines": run.baselines,
        "figures": run.figures,
        "details": run.details,
        "ratio": "the ledger's speed over the baseline's: rate/rate, or baseline time/ledger time",
    }
    text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    stamped = RESULTS / f"{started:%Y%m%dT%H%M%S}-{run.scale.name}.json"
    stamped.write_text(text, encoding="utf-8")
    (RESULTS / latest).write_text(text, encoding="utf-8")
    return stamped


PHASES: list[tuple[str, Callable[[Run], None]]] = [
    ("ingest", ingest),
    ("raw select+decode", raw_read),
    ("stored bytes", stored_bytes),
    ("projection rebuild", optional("rebuild", fallback=projection_rebuild)),
    ("replay --all --verify", replay_verify),
    ("explain", explain),
    ("snapshot", optional("snapshot_cost", snapshot_cost, fallback=snapshot)),
    ("decision cost", optional("decision_cost", decision_cost)),
    ("HTTP mixed load", optional("http_load", http_load)),
    ("relay", relay),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted([*SCALES, "city"]), default="quick")
    ap.add_argument("--districts", type=int, help="city scale: districts ingesting at once under the city view (default 3)")
    ap.add_argument("--recipients", type=int, help="override the scale's number of recipients")
    ap.add_argument("--group-size", type=int, help="override the scale's commands per group-commit transaction")
    ap.add_argument("--profile", action="store_true",
                    help="profile the batch ingest with pyinstrument (bench/results/profile-*.txt); slows the ledger's side")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards (its URL is printed)")
    ap.add_argument("--skip", action="append", default=[], metavar="PHASE",
                    help="leave a phase out (its figures are 'not measured'), e.g. --skip relay")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra eventsourcing setting for the ledger's application (experiments)")
    args = ap.parse_args(argv)

    from rich.console import Console

    from infra import pg

    console = Console(width=110)
    if args.scale == "city":
        return city_main(args, console)
    scale = SCALES[args.scale]
    if args.recipients:
        scale = Scale(**{**asdict(scale), "recipients": args.recipients})
    if args.group_size:
        scale = Scale(**{**asdict(scale), "group_size": args.group_size})
    admin = os.environ.get("LEDGER_BENCH_PG_ADMIN_URL", pg.DEFAULT_ADMIN_URL)
    name = f"ledger_bench_{os.getpid()}_{secrets.token_hex(3)}"
    started = datetime.now(timezone.utc)
    load = os.getloadavg()
    began = time.perf_counter()
    url = pg.create_database(admin, name)
    run = Run(scale, url, console, profile=args.profile, env=dict(kv.split("=", 1) for kv in args.env))
    console.print(
        f"bench {scale.name}: {scale.recipients} recipients at {scale.visits:g}x the demo's visit rates over {YEAR}-01-01..{UNTIL} "
        f"(Changning has ~10,000); database {name}; load average {load[0]:.1f} on {os.cpu_count()} CPUs"
    )
    errors: dict[str, str] = {}
    try:
        import psycopg

        with psycopg.connect(pg._libpq_url(url)) as conn:  # noqa: SLF001 - same URL rules as infra.pg
            run.details["_postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        for label, phase in PHASES:
            if label in args.skip or phase.__name__ in args.skip:
                run.say(f"[bold]{label}[/bold]: skipped")
                errors[label] = "skipped (--skip)"
                continue
            run.say(f"[bold]{label}[/bold]")
            t0 = time.perf_counter()
            try:
                before = len(run.figures)
                phase(run)
            except Exception as exc:  # noqa: BLE001 - one phase failing leaves the others' figures
                if label == "ingest":
                    raise
                errors[label] = f"{type(exc).__name__}: {exc}"
                console.print(f"[bold red]{label} failed[/bold red]: {errors[label]}")
                traceback.print_exc()
                continue
            run.details.setdefault("phase_seconds", {})[label] = round(time.perf_counter() - t0, 1)
            for f in run.figures[before:]:
                value = "not measured" if f["value"] is None else f"{_fmt(f['value'])} {f['unit']}"
                run.say(f"  {f['name']}: {value} (baseline {_fmt(f['baseline'])}, ratio {f['ratio']})")
    finally:
        if run.app is not None:
            run.app.close()
        if args.keep:
            key = run.settings.data_key if run.settings is not None else ""
            print(f"database kept: LEDGER_DATABASE_URL={url} LEDGER_DATA_KEY={key}")
        else:
            pg.drop_database(admin, name)
    for module, figs in OPTIONAL.items():
        for fname, unit, target in figs:
            run.not_measured(fname, unit, target, "its phase failed or was skipped")
    if errors:
        run.details["phase_errors"] = errors
    elapsed = time.perf_counter() - began
    render(run, elapsed)
    path = write(run, started, elapsed, load)
    unmet = [f["name"] for f in run.figures if f["met"] is False]
    missing = [f["name"] for f in run.figures if f["value"] is None]
    console.print(f"written {path.relative_to(ROOT)} and bench/results/latest.json"
                  + (f"; targets not met: {', '.join(unmet)}" if unmet else "")
                  + (f"; not measured: {', '.join(missing)}" if missing else ""))
    return 0


def city_main(args: argparse.Namespace, console: Any) -> int:
    """``--scale city`` (issue 18): bench/city.py's figures, written to bench/results/latest-city.json."""
    from bench import city

    scale = city.CityScale(**{k: v for k, v in (("districts", args.districts), ("recipients", args.recipients)) if v})
    started, load, began = datetime.now(timezone.utc), os.getloadavg(), time.perf_counter()
    run = Run(Scale("city", recipients=scale.recipients, visits=0.0, explain_samples=0, relay_events=0), "", console)
    console.print(f"bench city: {scale.districts} districts x {scale.recipients} recipients x {scale.months} months, "
                  f"PostgreSQL + NATS JetStream; load average {load[0]:.1f} on {os.cpu_count()} CPUs")
    try:
        city.measure(run, scale, skip=tuple(args.skip))
    finally:
        elapsed = time.perf_counter() - began
        render(run, elapsed)
        path = write(run, started, elapsed, load, latest="latest-city.json")
    unmet = [f["name"] for f in run.figures if f["met"] is False]
    console.print(f"written {path.relative_to(ROOT)} and bench/results/latest-city.json" + (f"; targets not met: {', '.join(unmet)}" if unmet else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
