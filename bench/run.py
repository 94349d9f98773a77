"""The ledger's benchmark: every figure beside a baseline measured in the same run (ADR 0017).

    .venv/bin/python -m bench.run --scale quick       # make bench-quick: under two minutes
    .venv/bin/python -m bench.run --scale district    # make bench: under fifteen minutes
    .venv/bin/python -m bench.run --scale quick --profile    # + pyinstrument profile of the ingest

It creates a fresh PostgreSQL database (``infra.pg``; admin URL from ``LEDGER_BENCH_PG_ADMIN_URL``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``), fills it with a seeded district year
(``infra.demo``'s planner at the scale's size and visit rate), measures, prints one rich table and
writes ``bench/results/latest.json`` plus a timestamped copy, then drops the database.

Absolute times on a shared 2-core machine are noise, so each figure has a baseline measured in
the same run, interleaved with the ledger's own work where the work can be cut into pieces:

========================  ===============================  =========================================
figure                    the ledger                       the baseline
========================  ===============================  =========================================
ingest                    the district year through the    eventsourcing ``Application.save()`` of
                          command handlers (every command  the same events' content in the same
                          of the plan, the integrity chain groups (per save, one aggregate per
                          caught up after each chunk):     aggregate written, as many events), no
                          expenses recorded and assessed   reads, no decisions; run after each
                          per second                       chunk of ledger commands
projection_rebuild        ``Runner.rebuild()`` of every    reading and decoding the same
                          read model in pages of 5,000,    notifications, no projection (mean of a
                          events/s                         read before and one after the rebuild)
replay_verify             ``commands.replay.audit``: every loading the same recipients' events and
                          decision and reassessment        rebuilding them, no re-decision
                          re-made and compared, per second
explain_p50/explain_p99   ``commands.explain`` of random   loading that expense's recipient
                          expenses, latency                (``LedgerApp.recipient``), same samples
snapshot                  ``commands.snapshot`` of the     reading and decoding the whole log
                          whole district at (V, T)
relay                     ``infra.relay.Relay`` to         faststream publishing the same messages
                          RabbitMQ with publisher          (the relay's own ``Sender``) with no
                          confirms, events/s               store in between
========================  ===============================  =========================================

The ingest runs in the import configuration (``infra.demo.demo_env``: one writer, the aggregate
cache without deep copies; ``--online`` for the ordinary wiring); every other figure uses a fresh
application built by ``infra.wiring.build_app`` as any other process would.

``ratio`` is always the ledger's speed over the baseline's (rate ÷ rate, or baseline time ÷ ledger
time): 1.0 means as fast as the baseline, 0.5 half as fast. ``target`` says what it is compared
with (``{"on": "ratio" | "value", "op": ">=" | "<", "value": …}``) and ``met`` whether it held.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import secrets
import sys
import time
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
#: The target "a snapshot of the whole district in under 5 s for 100k expenses", scaled linearly
#: to the expenses generated.
SNAPSHOT_SECONDS_PER_100K = 5.0
EXPLAIN_P99_MS = 50.0


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
    chunks: int = 40  # ingest: ledger and baseline alternate this many times
    #: Notifications per page and per transaction in the rebuild (and in its baseline's reads):
    #: 5,000 rebuilt ~50% faster than the runner's 1,000 (fewer per-recipient state round trips
    #: in the caps view), 10,000 no faster (ADR 0017).
    rebuild_batch: int = 5_000
    seed: int = 2026


SCALES = {
    "quick": Scale("quick", recipients=40, visits=3.0, explain_samples=300, relay_events=2_000, chunks=10),
    # A tenth of Changning's ~10,000 recipients (one street office's worth) at full density: what
    # fits in fifteen minutes on the shared 2-core machine with room for its load (ADR 0017).
    "district": Scale("district", recipients=1_000, visits=3.0, explain_samples=1_000, relay_events=20_000, chunks=40),
}


# ---------------------------------------------------------------------------------------------
# figures


def figure(
    name: str,
    value: float,
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
    "value", "op": ">=" | "<", "value": x}``; ``met`` is None without one."""
    if ratio is None and baseline:
        ratio = (baseline / value if value else 0.0) if lower_is_better else value / baseline
    met = None
    if target is not None:
        observed = ratio if target["on"] == "ratio" else value
        met = None if observed is None else bool(observed >= target["value"] if target["op"] == ">=" else observed < target["value"])
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


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    scale: Scale
    url: str
    console: Any
    profile: bool = False
    online: bool = False
    env: dict[str, str] = field(default_factory=dict)
    figures: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    app: Any = None
    settings: Any = None
    expense_ids: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {text}")

    def add(self, fig: dict[str, Any], **detail: Any) -> None:
        self.figures.append(fig)
        if detail:
            self.details[fig["name"]] = detail


def _settings(url: str) -> Any:
    from infra.settings import Settings

    # Every save chains its events in its own transaction (ADR 0016); a data key of its own so
    # that personal fields are encrypted as in production.
    return Settings(database_url=url, data_key=secrets.token_urlsafe(32), jurisdiction="shanghai.changning")


# -- ingest ------------------------------------------------------------------------------------


class SaveShapes:
    """The application's after-save hook: what each save wrote (per aggregate, the events' own
    attributes), so that the baseline can save the same content in the same groups."""

    SKIP = ("originator_id", "originator_version", "timestamp", "originator_topic")

    def __init__(self) -> None:
        self.saves: list[list[list[dict[str, Any]]]] = []

    def __call__(self, recordings: list[Any]) -> None:
        per: dict[Any, list[dict[str, Any]]] = {}
        for rec in recordings:
            state = {k: v for k, v in vars(rec.domain_event).items() if k not in self.SKIP}
            per.setdefault(rec.domain_event.originator_id, []).append(state)
        self.saves.append(list(per.values()))

    def take(self) -> list[list[list[dict[str, Any]]]]:
        out, self.saves = self.saves, []
        return out


class _Split:
    """Where the ledger's ingest time goes: time inside ``save`` and inside ``repository.get``."""

    def __init__(self, app: Any):
        self.app, self.save, self.get, self.chain, self.gets = app, 0.0, 0.0, 0.0, 0
        save, get = app.save, app.repository.get

        def timed_save(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return save(*a, **k)
            finally:
                self.save += time.perf_counter() - t0

        def timed_get(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            self.gets += 1
            try:
                return get(*a, **k)
            finally:
                self.get += time.perf_counter() - t0

        app.save, app.repository.get = timed_save, timed_get

    def undo(self) -> None:
        del self.app.save, self.app.repository.get


def baseline_app(url: str) -> Any:
    """A plain eventsourcing Application on the same database (its own ``baseline_events``):
    the library's default mapper and JSON transcoder, no personal-data sealing, no hooks."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    from infra.settings import Settings

    class Blob(Aggregate):
        def __init__(self, payload: dict[str, Any]):
            self.n = 0

        @event("Noted")
        def note(self, payload: dict[str, Any]) -> None:
            self.n += 1

    class Baseline(Application):
        name = "Baseline"

    app = Baseline(Settings(database_url=url).eventsourcing_env("Baseline"))
    app.blob_class = Blob  # type: ignore[attr-defined]
    return app


def save_like(app: Any, saves: list[list[list[dict[str, Any]]]]) -> int:
    """Raw ``save()`` of the same events' content, grouped as the ledger's saves were: per save,
    one new aggregate per aggregate the ledger wrote, with as many events, each carrying the
    ledger event's attributes as its payload. No reads, no decisions."""
    Blob = app.blob_class
    events = 0
    for save in saves:
        blobs = []
        for states in save:
            b = Blob(payload=states[0])
            for state in states[1:]:
                b.note(payload=state)
            blobs.append(b)
            events += len(states)
        app.save(*blobs)
    return events


def ingest(run: Run) -> None:
    from infra import demo, integrity
    from infra.wiring import APP_NAME, build_app, ensure_policy

    s = run.scale
    run.settings = settings = _settings(run.url)
    # The import configuration (infra.demo.demo_env: one writer, the aggregate cache without deep
    # copies) unless --online asks for the wiring every other process gets (no cache).
    env = {**(settings.eventsourcing_env(APP_NAME) if run.online else demo.demo_env(settings)), **run.env}
    app = build_app(settings, env=env, publish_policy=False)
    run.app = app
    plan = demo.plan(recipients=s.recipients, seed=s.seed, years=(YEAR,), until=UNTIL, id_for=app.recipient_id_for, visits=s.visits)
    ensure_policy(app, published_at=plan.published_at)
    base = baseline_app(run.url)
    shapes = SaveShapes()
    app.after_save.append(shapes)
    chain = integrity.chain_for(app)
    split = _Split(app)
    replay = demo.Replay(app)
    steps = plan.steps
    per_chunk = max(1, -(-len(steps) // s.chunks))
    run.say(f"ingest: {s.recipients} recipients, {len(steps)} planned steps, {len(steps) // per_chunk + 1} chunks")
    profiler = _profiler() if run.profile else None
    t_ledger = t_base = 0.0
    base_events = saves = 0
    cpu0 = time.process_time()
    gc.collect()
    for i in range(0, len(steps), per_chunk):
        chunk = steps[i : i + per_chunk]
        if profiler:
            profiler.start()
        t0 = time.perf_counter()
        for step in chunk:
            step.action(replay, step.at)
        t1 = time.perf_counter()
        chain.run(checkpoint_at_end=False)
        split.chain += time.perf_counter() - t1
        t_ledger += time.perf_counter() - t0
        if profiler:
            profiler.stop()
        taken = shapes.take()
        saves += len(taken)
        t0 = time.perf_counter()
        base_events += save_like(base, taken)
        t_base += time.perf_counter() - t0
        done = min(i + per_chunk, len(steps))
        if done == len(steps) or (i // per_chunk) % max(1, s.chunks // 5) == 0:
            run.say(f"  {done}/{len(steps)} steps: ledger {t_ledger:.1f}s, baseline {t_base:.1f}s")
    cpu = time.process_time() - cpu0
    split.undo()
    chain.run()  # the closing checkpoint
    app.after_save.remove(shapes)
    base.close()

    recorded = replay.outcomes[("record_expense", "accepted")]
    events = base_events
    run.expense_ids = list(replay.expenses.values())
    summary = demo.summarise(app, replay)
    by_cat: dict[str, list[int]] = {}
    for p in plan.people:
        by_cat.setdefault(p.category, []).append(len(p.expenses))
    run.dataset = {
        "generator": f"infra.demo.plan(recipients={s.recipients}, seed={s.seed}, years=({YEAR},), until={UNTIL}, visits={s.visits})",
        "period": f"{plan.start}..{plan.end}",
        "recipients": len(plan.people),
        "expenses": recorded,
        "events": summary.events,
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
    run.add(
        figure("ingest", recorded / t_ledger, "expenses/s", baseline=recorded / t_base, target=at_least(0.5)),
        ledger_seconds=round(t_ledger, 2),
        process_cpu_seconds=round(cpu, 2),
        ledger_split_seconds={"save": round(split.save, 2), "get": round(split.get, 2), "gets": split.gets,
                              "chain": round(split.chain, 2), "rest (decide, encode, generator)": round(t_ledger - split.save - split.get - split.chain, 2)},
        baseline_seconds=round(t_base, 2),
        events=events,
        saves=saves,
        ledger_events_per_s=round(events / t_ledger, 1),
        baseline_events_per_s=round(events / t_base, 1),
        note="every command of the plan (enrolments, grants, expenses, one-stop, claims and their signatures, "
        "monthly auto-claim batches, late settlements, amendments, clearing) with the chain caught up after each "
        "chunk; the baseline saves the same events in the same groups, after each chunk",
    )
    # The read-side figures use the application every other process builds: no cache, cold.
    app.close()
    run.app = build_app(settings, publish_policy=False)
    if profiler:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"profile-{s.name}-ingest.txt"
        out.write_text(profiler.output_text(show_all=False), encoding="utf-8")
        run.say(f"ingest profile written to {out.relative_to(ROOT)}")


def _profiler() -> Any:
    """pyinstrument (installed by hand, not a dependency): its sessions combine across start/stop."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("--profile needs pyinstrument (.venv/bin/pip install pyinstrument)", file=sys.stderr)
        return None
    return Profiler(interval=0.001)


# -- projections -------------------------------------------------------------------------------


def projection_rebuild(run: Run) -> None:
    from bench.projections_rebuild import read_and_decode
    from projections.common import make_engine, projection_url
    from projections.runner import Runner

    app = run.app
    engine = make_engine(projection_url(run.settings.sqlalchemy_url()))
    batch = run.scale.rebuild_batch
    runner = Runner(engine, app.recorder, app.mapper, batch_size=batch)
    try:
        runner.setup()
        n1, t1 = read_and_decode(app.recorder, app.mapper, runner.topics, batch)
        t0 = time.perf_counter()
        n = runner.rebuild()
        t = time.perf_counter() - t0
        n2, t2 = read_and_decode(app.recorder, app.mapper, runner.topics, batch)
    finally:
        engine.dispose()
    read_rate = (n1 + n2) / (t1 + t2)
    run.add(
        figure("projection_rebuild", n / t, "events/s", baseline=read_rate, target=at_least(0.25)),
        events=n,
        seconds=round(t, 2),
        views=[p.name for p in runner.projections],
        batch=batch,
        read_seconds=[round(t1, 2), round(t2, 2)],
    )


# -- replay ------------------------------------------------------------------------------------


def replay_verify(run: Run) -> None:
    from commands.replay import audit
    from commands.timeline import project

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
    t0 = time.perf_counter()
    report = audit(app, recipients=rids)
    t = time.perf_counter() - t0
    tb += load(rids[half:])
    records = report.decisions + report.reassessments
    if not report.ok:
        run.console.print(f"[bold red]replay --verify: {len(report.different)} decisions differ from what was recorded (R-TIME-1)[/bold red]")
    run.add(
        figure("replay_verify", records / t, "decisions/s", baseline=records / tb),
        decisions=report.decisions,
        reassessments=report.reassessments,
        expenses_compared=report.expenses,
        differences=len(report.different),
        recipients=report.recipients,
        seconds=round(t, 2),
        baseline="loading and rebuilding the same recipients from their events, no re-decision",
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


def snapshot(run: Run) -> None:
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
    t0 = time.perf_counter()
    snap = take_snapshot(app, SNAPSHOT_VALID, SNAPSHOT_KNOWN_AT)
    t = time.perf_counter() - t0
    _, tb2 = scan()
    expenses = run.dataset["expenses"]
    limit = SNAPSHOT_SECONDS_PER_100K * expenses / 100_000
    run.add(
        figure("snapshot", t, "s", baseline=(tb1 + tb2) / 2, lower_is_better=True, target=below(round(limit, 3))),
        valid=SNAPSHOT_VALID.isoformat(),
        known_at=SNAPSHOT_KNOWN_AT.isoformat(),
        rows=len(snap.rows),
        recipients=snap.recipients,
        events_scanned=n1,
        target_basis=f"{SNAPSHOT_SECONDS_PER_100K:g} s per 100,000 expenses, scaled to the {expenses} expenses generated",
        baseline="reading and decoding the whole notification log (mean of a scan before and one after)",
    )


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
            _fmt(f["value"]),
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


def write(run: Run, started: datetime, elapsed: float, load: tuple[float, ...]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "scale": asdict(run.scale),
        "ingest_configuration": "ordinary wiring (--online)" if run.online else "import: infra.demo.demo_env (aggregate cache, no deep copies, one writer)",
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
        "figures": run.figures,
        "details": run.details,
        "ratio": "the ledger's speed over the baseline's: rate/rate, or baseline time/ledger time",
    }
    text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    stamped = RESULTS / f"{started:%Y%m%dT%H%M%S}-{run.scale.name}.json"
    stamped.write_text(text, encoding="utf-8")
    (RESULTS / "latest.json").write_text(text, encoding="utf-8")
    return stamped


PHASES: list[tuple[str, Callable[[Run], None]]] = [
    ("ingest", ingest),
    ("projection rebuild", projection_rebuild),
    ("replay --verify", replay_verify),
    ("explain", explain),
    ("snapshot", snapshot),
    ("relay", relay),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="quick")
    ap.add_argument("--recipients", type=int, help="override the scale's number of recipients")
    ap.add_argument("--profile", action="store_true",
                    help="profile the ingest with pyinstrument (bench/results/profile-*.txt); slows the ledger's side: its ratio is not comparable")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards (its URL is printed)")
    ap.add_argument("--online", action="store_true",
                    help="ingest through the ordinary wiring (no aggregate cache) instead of the import configuration")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra eventsourcing setting for the ledger's application, e.g. AGGREGATE_CACHE_MAXSIZE=2000 (experiments)")
    args = ap.parse_args(argv)

    from rich.console import Console

    from infra import pg

    console = Console(width=110)
    scale = SCALES[args.scale]
    if args.recipients:
        scale = Scale(**{**asdict(scale), "recipients": args.recipients})
    admin = os.environ.get("LEDGER_BENCH_PG_ADMIN_URL", pg.DEFAULT_ADMIN_URL)
    name = f"ledger_bench_{os.getpid()}_{secrets.token_hex(3)}"
    started = datetime.now(timezone.utc)
    load = os.getloadavg()
    began = time.perf_counter()
    url = pg.create_database(admin, name)
    run = Run(scale, url, console, profile=args.profile, online=args.online, env=dict(kv.split("=", 1) for kv in args.env))
    console.print(
        f"bench {scale.name}: {scale.recipients} recipients at {scale.visits:g}x the demo's visit rates over {YEAR}-01-01..{UNTIL} "
        f"(Changning has ~10,000); database {name}; load average {load[0]:.1f} on {os.cpu_count()} CPUs"
    )
    try:
        import psycopg

        with psycopg.connect(pg._libpq_url(url)) as conn:  # noqa: SLF001 - same URL rules as infra.pg
            run.details["_postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        for label, phase in PHASES:
            run.say(f"[bold]{label}[/bold]")
            phase(run)
            f = run.figures[-1]
            run.say(f"  {f['name']}: {_fmt(f['value'])} {f['unit']} (baseline {_fmt(f['baseline'])}, ratio {f['ratio']})")
    finally:
        if run.app is not None:
            run.app.close()
        if args.keep:
            key = run.settings.data_key if run.settings is not None else ""
            print(f"database kept: LEDGER_DATABASE_URL={url} LEDGER_DATA_KEY={key}")
        else:
            pg.drop_database(admin, name)
    elapsed = time.perf_counter() - began
    render(run, elapsed)
    path = write(run, started, elapsed, load)
    unmet = [f["name"] for f in run.figures if f["met"] is False]
    console.print(f"written {path.relative_to(ROOT)} and bench/results/latest.json" + (f"; targets not met: {', '.join(unmet)}" if unmet else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
