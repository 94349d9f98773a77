"""Rebuild rate of the read models beside the rate of reading and decoding the same events.

    .venv/bin/python bench/projections_rebuild.py                       # temporary SQLite store
    .venv/bin/python bench/projections_rebuild.py --database-url postgresql://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/projections_rebuild.py --database-url … --reuse   # the store already holds events

Both figures come from the same run on the same events: first the notification log is read in
pages of ``--batch`` and decoded with the application's mapper (no projection), then every view
is rebuilt from zero (``Runner.rebuild``: pages of ``--batch``, one transaction per view per
page), then the read is timed again; the better read is kept. Rates are notifications read per
second (the views' topics only, as the runner reads them).

The dataset is ``infra.demo.generate`` when it runs, else the projection tests' story
(``tests/projections_dataset.py``) with ``--recipients`` extra people.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _story_module():
    spec = importlib.util.spec_from_file_location("projections_dataset", ROOT / "tests" / "projections_dataset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_usable(seed: int) -> bool:
    """Try the demo on two people in memory first, so a failing demo never half-fills the store."""
    from infra.settings import Settings
    from infra.wiring import build_app, ensure_policy

    try:
        from infra import demo

        plan = demo.plan(recipients=2, seed=seed)
        app = build_app(Settings(), jurisdiction="shanghai.changning", env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, publish_policy=False)
        ensure_policy(app, published_at=plan.steps[0].at - timedelta(hours=1))
        demo.generate(app, recipients=2, seed=seed)
        return True
    except Exception as exc:  # noqa: BLE001 - the demo is optional here; say why it is not used
        print(f"(infra.demo not usable: {type(exc).__name__}: {exc}; using the projection tests' story)", file=sys.stderr)
        return False


def generate(settings, people: int, seed: int):
    """Fill the store; returns (app, description)."""
    from infra.wiring import build_app, ensure_policy

    app = build_app(settings, jurisdiction="shanghai.changning", publish_policy=False)
    if _demo_usable(seed):
        from infra import demo

        plan = demo.plan(recipients=people, seed=seed)
        ensure_policy(app, published_at=plan.steps[0].at - timedelta(hours=1))
        demo.generate(app, recipients=people, seed=seed)
        return app, f"infra.demo.generate(recipients={people}, seed={seed})"
    ds = _story_module()
    ensure_policy(app, ds._parse_at(ds.START) - timedelta(seconds=1))
    ds.build(app, more=people)
    return app, f"the projection tests' story with {people} extra recipients"


def read_and_decode(recorder, mapper, topics: list[str], batch: int) -> tuple[int, float]:
    began = time.perf_counter()
    count, start = 0, 1
    head = recorder.max_notification_id() or 0
    while start <= head:
        page = recorder.select_notifications(start, batch, stop=head, topics=topics)
        if not page:
            break
        for n in page:
            mapper.to_domain_event(n)
        count += len(page)
        start = page[-1].id + 1
    return count, time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="the event store (default: a temporary SQLite file)")
    ap.add_argument("--recipients", type=int, default=300, help="dataset size (people)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--batch", type=int, default=1000, help="notifications per page and per transaction")
    ap.add_argument("--reuse", action="store_true", help="the store already holds the events: do not generate")
    args = ap.parse_args(argv)

    from infra.settings import Settings
    from infra.wiring import build_app
    from projections.common import make_engine, projection_url
    from projections.runner import Runner

    tmp = None
    url = args.database_url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-projections-")
        url = f"sqlite:///{tmp.name}/ledger.db"
    settings = Settings(database_url=url)
    began = time.perf_counter()
    if args.reuse:
        app, how = build_app(settings, publish_policy=False), "existing events"
    else:
        app, how = generate(settings, args.recipients, args.seed)
    generated = time.perf_counter() - began
    head = app.recorder.max_notification_id() or 0
    engine = make_engine(projection_url(settings.sqlalchemy_url()))
    runner = Runner(engine, app.recorder, app.mapper, batch_size=args.batch)

    print(f"store: {settings.sqlalchemy_url().split('@')[-1]}  read models: {projection_url(settings.sqlalchemy_url()).split('@')[-1]}")
    print(f"dataset: {how}; {head} notification ids (built in {generated:.1f}s)")
    n1, t1 = read_and_decode(app.recorder, app.mapper, runner.topics, args.batch)
    rebuilt_began = time.perf_counter()
    n2 = runner.rebuild()
    t2 = time.perf_counter() - rebuilt_began
    n3, t3 = read_and_decode(app.recorder, app.mapper, runner.topics, args.batch)
    read_rate = max(n1 / t1 if t1 else 0.0, n3 / t3 if t3 else 0.0)
    rebuild_rate = n2 / t2 if t2 else 0.0
    views = ", ".join(p.name for p in runner.projections)
    print(f"read + decode, no projection : {n1:>8} events  {read_rate:>10,.0f} events/s")
    print(f"rebuild ({views}), batch {args.batch}: {n2:>8} events  {rebuild_rate:>10,.0f} events/s  ({t2:.2f}s)")
    print(f"ratio rebuild / read+decode  : {rebuild_rate / read_rate if read_rate else 0:.3f}")
    engine.dispose()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
