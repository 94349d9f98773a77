"""The clearing scenario files (tests/scenarios/clearing-*.yaml) against their hand-computed
expected output, matched as the acceptance checker matches (SCENARIOS.md): expected keys must be
present and equal, list items must match distinct actual items, and ``clearing_cases``,
``supplementary`` and ``suspensions`` must have exactly the expected length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.scenario import run_scenario

FOLDER = Path(__file__).resolve().parents[1] / "scenarios"
FILES = sorted(FOLDER.glob("clearing-*.yaml"))
EXACT_LENGTH = {"clearing_cases", "supplementary", "suspensions"}


def mismatches(expected, actual, path="$"):
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object"]
        out = []
        for key, value in expected.items():
            out += [f"{path}.{key}: missing"] if key not in actual else mismatches(value, actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list"]
        if not expected and actual:
            return [f"{path}: expected no items, got {len(actual)}"]
        if path.rsplit(".", 1)[-1] in EXACT_LENGTH and len(expected) != len(actual):
            return [f"{path}: expected {len(expected)} items, got {len(actual)}"]
        out, free = [], list(range(len(actual)))
        for i, item in enumerate(expected):
            hit = next((j for j in free if not mismatches(item, actual[j])), None)
            if hit is None:
                out.append(f"{path}[{i}]: no actual item matches {json.dumps(item, ensure_ascii=False)}")
            else:
                free.remove(hit)
        return out
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def test_there_are_clearing_scenarios() -> None:
    assert len(FILES) >= 3


@pytest.mark.parametrize("scenario", FILES, ids=[f.stem for f in FILES])
def test_clearing_scenario(scenario: Path) -> None:
    expected = json.loads(scenario.with_name(scenario.name.replace(".yaml", ".expected.json")).read_text(encoding="utf-8"))
    actual = run_scenario(scenario.read_text(encoding="utf-8"))
    assert mismatches(expected, actual) == []
