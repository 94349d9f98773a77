"""Compare a scenario's report with its ``.expected.json``: the acceptance contract's matching.

This implements the acceptance contract's matching: the partial matching with which the
acceptance run (SCENARIOS.md, "the ledger's acceptance contract", and the checker that goes with
it) judges ``ledger scenario run FILE --json`` against ``FILE``'s ``.expected.json``. It lives here
so the project's own tests judge every scenario, public or its own, by the same measure, with
nothing from outside the repository:

- an expected object: each of its keys must be in the actual object, with a matching value;
  keys the report has beyond those are fine;
- an expected list: each expected item must match its own actual item (a distinct one), taken
  greedily, the first still-free actual item that matches, in expected order; an empty expected
  list means the actual list must be empty too; a list held under ``clearing_cases``,
  ``supplementary`` or ``suspensions`` must also have exactly as many items as expected;
- any other value: equal (Python equality, so ``1 == 1.0``).

The key that names a list is judged by the text after its last ``.``, as the acceptance run
names a list by the last segment of its dotted path; lists directly inside lists have no name.

:func:`mismatches` returns one readable line per difference (``[]`` when everything matches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Lists whose length is part of the expectation, not only their items.
COUNTED_LISTS = frozenset({"clearing_cases", "supplementary", "suspensions"})

_SHOWN = 300  # characters of an actual list quoted in a message


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _matches(expected: Any, actual: Any) -> bool:
    return not _compare(expected, actual, "$", None)


def _compare(expected: Any, actual: Any, where: str, key: str | None) -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {_show(actual)}"]
        found: list[str] = []
        for name, wanted in expected.items():
            if name in actual:
                found += _compare(wanted, actual[name], f"{where}.{name}", name)
            else:
                found.append(f"{where}.{name}: missing")
        return found

    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {_show(actual)}"]
        if not expected:
            return [f"{where}: expected no items, got {len(actual)}: {_show(actual)[:_SHOWN]}"] if actual else []
        counted = key is not None and key.rsplit(".", 1)[-1] in COUNTED_LISTS
        if counted and len(actual) != len(expected):
            return [f"{where}: expected {len(expected)} items, got {len(actual)}: {_show(actual)[:_SHOWN]}"]
        unused = list(range(len(actual)))
        found = []
        for index, wanted in enumerate(expected):
            taken = next((j for j in unused if _matches(wanted, actual[j])), None)
            if taken is None:
                found.append(f"{where}[{index}]: no actual item matches {_show(wanted)}")
            else:
                unused.remove(taken)
        return found

    if expected != actual:
        return [f"{where}: expected {_show(expected)}, got {_show(actual)}"]
    return []


def mismatches(expected: Any, actual: Any) -> list[str]:
    """Every way ``actual`` (a scenario report) falls short of ``expected``; ``[]`` when it matches."""
    return _compare(expected, actual, "$", None)


def expected_path(scenario: Path) -> Path:
    """``NAME.expected.json`` beside ``NAME.yaml``."""
    return scenario.with_name(scenario.name.replace(".yaml", ".expected.json"))
