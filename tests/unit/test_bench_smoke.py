"""The benchmark module imports and records its figures in the agreed shape (no timings here)."""

from __future__ import annotations

import importlib
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


def test_the_baseline_saves_the_shapes_the_hook_saw() -> None:
    b = bench()
    hook = b.SaveShapes()

    class Event:
        def __init__(self, oid: str, version: int, **state: object) -> None:
            self.originator_id, self.originator_version, self.timestamp = oid, version, None
            self.__dict__.update(state)

    class Rec:
        def __init__(self, event: Event) -> None:
            self.domain_event = event

    hook([Rec(Event("a", 1, x=1)), Rec(Event("a", 2, y=2)), Rec(Event("b", 7, z=3))])
    assert hook.take() == [[[{"x": 1}, {"y": 2}], [{"z": 3}]]]
    assert hook.take() == []
