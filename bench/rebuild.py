"""Rebuild of every read model, in one process and in parallel processes, beside select+decode of
the same log (issue 16: rebuild ≥ 0.5 × select+decode, < 60 s for a district-year).

    .venv/bin/python bench/rebuild.py                                   # temporary SQLite store
    .venv/bin/python bench/rebuild.py --database-url postgresql://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/rebuild.py --database-url … --reuse --batches 1000,5000,10000

All figures come from the same run on the same events. Rates are events of the log per second of
wall time: the notifications whose topic any view reads (each counted once, however many views
read it), read in pages and decoded with the application's mapper (``select+decode``), or applied
to every view from zero (``Runner.rebuild_parallel`` with ``--jobs 1``: one process, the views
share each page; with ``--jobs N``: N processes, each a partition of the recipients whose pages
every view folds). ``--repeat`` interleaves the select+decode and the rebuilds that many times
(the machine is shared: compare figures of one run). Prints one line per figure and, with
``--json``, the figures as {name, value, unit}. No assertion: a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="the event store (default: a temporary SQLite file)")
    ap.add_argument("--recipients", type=int, default=200, help="dataset size (people) when generating")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--reuse", action="store_true", help="the store already holds the events: do not generate")
    ap.add_argument("--batches", default="1000,5000", help="page sizes to measure (comma-separated)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="processes for the parallel rebuild")
    ap.add_argument("--sequential", action="store_true", help="also time the one-process rebuild (views share each page)")
    ap.add_argument("--raw", type=int, default=0, metavar="EVENTS",
                    help="also measure bench.run's raw baseline (a plain eventsourcing Application's 500-byte events, "
                         "select+decode with the library's default mapper) on this many events of its own, interleaved")
    ap.add_argument("--repeat", type=int, default=1, help="measure everything this many times, interleaved")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args(argv)

    from bench.dataset import generate
    from infra.projection_source import store_source
    from infra.settings import Settings
    from infra.wiring import build_app
    from projections.common import make_engine, projection_url
    from projections.runner import Runner

    tmp = None
    url = args.database_url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-rebuild-")
        url = f"sqlite:///{tmp.name}/ledger.db"
    settings = Settings(database_url=url)
    began = time.perf_counter()
    if args.reuse:
        app, how = build_app(settings, publish_policy=False), "existing events"
    else:
        app, how = generate(settings, args.recipients, args.seed)
    generated = time.perf_counter() - began
    head = app.recorder.max_notification_id() or 0
    proj_url = projection_url(settings.sqlalchemy_url())
    engine = make_engine(proj_url)
    source = store_source(url, "shanghai.changning")
    print(f"store: {settings.sqlalchemy_url().split('@')[-1]}  read models: {proj_url.split('@')[-1]}")
    print(f"dataset: {how}; {head} notification ids (ready in {generated:.1f}s)")

    figures: list[dict] = []
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    topics = Runner(engine, app.recorder, app.mapper).topics
    raw = None
    if args.raw:
        from bench.run import Raw

        raw = Raw(url)
        have = sum(1 for _ in raw.app.recorder.select_notifications(start=1, limit=args.raw))
        if have < args.raw:
            raw.save_ten((args.raw - have + 9) // 10)
    for _ in range(max(1, args.repeat)):
        if raw is not None:
            cpu = _cpu()
            rn, rt = raw.select_decode()
            cpu = _cpu() - cpu
            print(f"raw select+decode (baseline)           : {rn:>9} events {rn / rt:>10,.0f} events/s  cpu {cpu:6.1f}s")
            figures.append({"name": "raw_select_decode", "value": round(rn / rt), "unit": "events/s"})
        measure(app, engine, proj_url, source, topics, batches, args, figures)
    if raw is not None:
        raw.close()
    if args.json:
        print(json.dumps(figures, indent=2))
    engine.dispose()
    app.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


def measure(app, engine, proj_url, source, topics, batches, args, figures) -> None:  # noqa: ANN001
    from bench.run import select_and_decode
    from projections.runner import Runner

    cpu = _cpu()
    n, t = select_and_decode(app.recorder, app.mapper, topics, max(batches))
    cpu = _cpu() - cpu
    n2, t2 = select_and_decode(app.recorder, app.mapper, topics, max(batches))
    read_rate = max(n / t if t else 0.0, n2 / t2 if t2 else 0.0)
    print(f"select+decode                          : {n:>9} events {read_rate:>10,.0f} events/s  cpu {cpu:6.1f}s")
    figures.append({"name": "select_decode", "value": round(read_rate), "unit": "events/s"})
    for batch in batches:
        runs = [("parallel", args.jobs)] + ([("sequential", 1)] if args.sequential else [])
        for label, jobs in runs:
            runner = Runner(engine, app.recorder, app.mapper, batch_size=batch)
            cpu = _cpu()
            started = time.perf_counter()
            runner.rebuild_parallel(proj_url, source, jobs=jobs)
            seconds = time.perf_counter() - started
            cpu = _cpu() - cpu  # this process and its (joined) workers: the work, whatever else runs
            rate = n / seconds if seconds else 0.0
            print(f"rebuild {label:<10} jobs {jobs} batch {batch:>6}: {n:>9} events {rate:>10,.0f} events/s  "
                  f"{seconds:6.2f}s  ratio {rate / read_rate if read_rate else 0:.3f}  cpu {cpu:6.1f}s")
            figures.append({"name": f"rebuild_{label}_b{batch}", "value": round(rate), "unit": "events/s",
                            "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 1),
                            "ratio": round(rate / read_rate, 3) if read_rate else None})


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
