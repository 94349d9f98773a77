"""The benchmark module imports and records its figures in the agreed shape (no timings here)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEYS = {"name", "value", "unit", "baseline", "ratio", "target", "met"}


def bench():
    return importlib.import_module("bench.run")


def test_a_rate_figure_has_the_keys_and_its_ratio_is_ledger_over_baseline() -> None:
    b = bench()
    f = b.figure("ingest", 30.0, "expenses/s", baseline=80.0, target=b.at_least(0.5))
    assert set(f) == KEYS
    assert f["ratio"] == 0.375
    assert f["met"] is False
    assert b.figure("ingest", 60.0, "expenses/s", baseline=80.0, target=b.at_least(0.5))["met"] is True


def test_a_time_figure_compares_speeds_and_checks_its_target_on_the_value() -> None:
    b = bench()
    f = b.figure("explain_p99", 40.0, "ms", baseline=10.0, lower_is_better=True, target=b.below(50.0))
    assert set(f) == KEYS
    assert f["ratio"] == 0.25  # four times slower than the baseline
    assert f["met"] is True
    assert b.figure("explain_p99", 60.0, "ms", baseline=10.0, lower_is_better=True, target=b.below(50.0))["met"] is False


def test_a_figure_without_baseline_or_target_says_so() -> None:
    f = bench().figure("replay_verify", 120.0, "decisions/s")
    assert set(f) == KEYS
    assert (f["baseline"], f["ratio"], f["target"], f["met"]) == (None, None, None, None)


def test_both_scales_exist_and_quick_is_the_smaller() -> None:
    scales = bench().SCALES
    assert {"quick", "district"} <= set(scales)
    assert scales["quick"].recipients < scales["district"].recipients


def test_the_raw_baseline_saves_fixed_500_byte_events_one_and_ten_per_transaction(tmp_path: Path) -> None:
    b = bench()
    raw = b.Raw(f"sqlite:///{tmp_path / 'raw.db'}")
    try:
        assert raw.event_bytes == b.RAW_EVENT_BYTES == 500
        assert raw.save_one(3)[0] == 3
        assert raw.save_ten(2)[0] == 20
        stored = raw.app.recorder.select_notifications(start=1, limit=100)
        assert [len(n.state) for n in stored] == [500] * 23
        assert len({n.originator_id for n in stored}) == 5  # one aggregate per transaction
        assert raw.select_decode()[0] == 23
    finally:
        raw.close()


def test_an_at_most_target_and_a_figure_not_measured() -> None:
    b = bench()
    assert b.figure("stored_bytes_per_event", 800.0, "bytes", target=b.at_most(800))["met"] is True
    assert b.figure("stored_bytes_per_event", 801.0, "bytes", target=b.at_most(800))["met"] is False
    missing = b.figure("decision_cost_500_vs_5", None, "ratio", target=b.at_most(1.5))
    assert set(missing) == KEYS and missing["value"] is None and missing["met"] is None


def test_an_absent_module_leaves_its_figures_not_measured_and_a_present_one_is_called(monkeypatch) -> None:
    b = bench()
    from rich.console import Console

    run = b.Run(b.SCALES["quick"], "postgresql://unused", Console(quiet=True))
    monkeypatch.setitem(b.OPTIONAL, "no_such_module_here", [("absent_figure", "s", b.below(1.0))])
    b.optional("no_such_module_here")(run)
    [f] = run.figures
    assert (f["name"], f["value"], f["met"]) == ("absent_figure", None, None)
    assert "absent" in run.details["absent_figure"]["not_measured"]

    import types

    module = types.ModuleType("bench.fake_measure")
    module.bench_figures = lambda r: [b.figure("absent_figure", 0.5, "s", target=b.below(1.0))]
    monkeypatch.setitem(sys.modules, "bench.fake_measure", module)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "bench.fake_measure" else None)
    monkeypatch.setitem(b.OPTIONAL, "fake_measure", [("absent_figure", "s", b.below(1.0))])
    b.optional("fake_measure")(run)
    [f] = run.figures
    assert (f["value"], f["met"]) == (0.5, True)
