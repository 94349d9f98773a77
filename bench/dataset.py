"""A dataset for the benchmark scripts (bench/rebuild.py, bench/http_load.py): ``infra.demo.generate``
when it runs, else the projection tests' story (``tests/projections_dataset.py``) with extra people.
"""

from __future__ import annotations

import importlib.util
import sys
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
