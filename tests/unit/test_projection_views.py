"""The scenario runner's ``annual``, ``suspensions``, ``duplicates`` and ``funds`` come from the
projections (ADR 0008): on every scenario file they equal what the aggregates say."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import scenario as sc
from projections.common import fen, projection_url, yuan_str
from projections.report import scenario_views
from projections_support import canonical, reference

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "tests" / "scenarios").glob("*.yaml")) + sorted((ROOT / "tests" / "acceptance").glob("*.yaml"))


def _replay(path: Path) -> sc.Runner:
    data = sc.load(path.read_text(encoding="utf-8"))
    steps = [sc._stringify_dates(s) for s in data["steps"]]
    runner = sc.Runner(data["jurisdiction"], sc._parse_at(steps[0]["at"]))
    for i, s in enumerate(steps, start=1):
        runner.step(i, s)
    return runner


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_scenario_views_equal_the_aggregates(path: Path) -> None:
    runner = _replay(path)
    views = scenario_views(runner.app.recorder, runner.app.mapper)
    ref = reference(runner.app)
    assert canonical(views["annual"]) == canonical(ref["annual"])
    assert canonical(views["suspensions"]) == canonical(ref["suspensions"])
    assert canonical(views["duplicates"]) == canonical(ref["duplicates"])
    assert views["funds"] == ref["funds"]


def test_money_is_exact_fen() -> None:
    assert fen("12.34") == 1234 and fen("-0.01") == -1 and yuan_str(1234) == "12.34" and yuan_str(None) is None
    with pytest.raises(ValueError):
        fen("0.001")


def test_read_models_live_beside_a_sqlite_store_and_inside_a_postgres_one() -> None:
    assert projection_url("sqlite:////var/x/ledger.db") == "sqlite:////var/x/ledger.projections.db"
    assert projection_url("sqlite:///./var/ledger.db") == "sqlite:///var/ledger.projections.db"
    assert projection_url("sqlite:///:memory:") == "sqlite://"
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/ledger"
    assert projection_url(pg) == pg


def test_a_view_whose_version_changed_is_rebuilt_on_setup() -> None:
    from sqlalchemy import select, update

    from projections.common import make_engine, tracking
    from projections.funds import fund_line
    from projections.runner import Runner

    import projections_dataset as ds

    app = ds.app_on(None)
    ds.build(app)
    engine = make_engine("sqlite://")
    first = Runner(engine, app.recorder, app.mapper)
    first.setup()
    first.catch_up()
    with engine.begin() as conn:
        lines = conn.execute(select(fund_line)).all()
        assert lines
        conn.execute(update(tracking).where(tracking.c.name == "funds").values(version=0))
        conn.execute(fund_line.delete())
    again = Runner(engine, app.recorder, app.mapper)
    again.setup()
    assert {s.name: s.position for s in again.status()}["funds"] == 0
    again.catch_up()
    with engine.connect() as conn:
        assert conn.execute(select(fund_line)).all() == lines
