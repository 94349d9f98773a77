"""Scenario files (SCENARIOS.md) as tests: every public scenario and every file in tests/scenarios/.

- The public scenarios of ``../shared/scenarios/`` run through the real command line, exactly as
  their own checker runs them (``check.py --ledger .venv/bin/ledger``, a subprocess), and again
  in-process (one case per file, for a readable diff).
- The project's own scenarios (``tests/scenarios/*.yaml``, expected values written by hand from
  RULES.md, the arithmetic in each file's comments) run in-process through
  :func:`infra.scenario.replay` and the runner's report, what ``ledger scenario run`` prints; each
  stored decision is then replayed with its recorded knowledge and must come out the same.
- Comparison uses ``mismatches`` imported from the shared ``check.py``: the same partial-matching
  semantics as the acceptance run.
- A malformed file (unknown command, missing field, bad date) exits 2 and names its step.

A missing ``../shared/scenarios`` folder FAILS these tests: the acceptance contract is not optional.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.scenario import ScenarioError, replay, run_scenario

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT.parent / "shared" / "scenarios"
OWN = Path(__file__).resolve().parent / "scenarios"


def _public_files() -> list[Path]:
    return sorted(PUBLIC.glob("*.yaml")) if PUBLIC.is_dir() else []


def _own_files() -> list[Path]:
    return sorted(OWN.glob("*.yaml"))


def _checker():
    """The acceptance checker's own comparison (``check.py`` beside the public scenarios)."""
    path = PUBLIC / "check.py"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the public scenarios and their checker must be present", pytrace=False)
    spec = importlib.util.spec_from_file_location("shared_scenarios_check", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _ledger_executable() -> str:
    beside = Path(sys.executable).with_name("ledger")
    found = str(beside) if beside.exists() else shutil.which("ledger")
    if not found:
        pytest.fail("the `ledger` console script is not installed (pip install -e .)", pytrace=False)
    return found


def _expected(path: Path) -> dict:
    expected = path.with_name(path.name.replace(".yaml", ".expected.json"))
    if not expected.is_file():
        pytest.fail(f"{expected.name} is missing beside {path.name}", pytrace=False)
    return json.loads(expected.read_text(encoding="utf-8"))


def test_public_scenarios_are_present():
    assert PUBLIC.is_dir(), f"{PUBLIC} is missing: the public acceptance scenarios must be present"
    files = _public_files()
    assert files, f"no *.yaml in {PUBLIC}"
    for f in files:
        assert f.with_name(f.name.replace(".yaml", ".expected.json")).is_file(), f"{f.name} has no expected output"
    assert (PUBLIC / "check.py").is_file()


def test_public_scenarios_pass_through_the_cli():
    """Exactly the acceptance run: the shared checker drives the installed ``ledger`` command."""
    files = _public_files()
    assert files, f"no public scenarios in {PUBLIC}"
    run = subprocess.run(
        [sys.executable, str(PUBLIC / "check.py"), "--ledger", _ledger_executable(), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(files)} passed, 0 failed" in run.stdout


def _case_ids(files: list[Path]) -> list[str]:
    return [f.stem for f in files]


@pytest.mark.parametrize("path", _public_files(), ids=_case_ids(_public_files()))
def test_public_scenario_in_process(path: Path):
    problems = _checker().mismatches(_expected(path), run_scenario(path.read_text(encoding="utf-8")))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", _own_files(), ids=_case_ids(_own_files()))
def test_own_scenario(path: Path):
    """The report matches the hand-computed expectation; and every stored decision, replayed with
    the knowledge it recorded, comes out the same to the fen (R-TIME-1)."""
    from commands.replay import audit

    expected = _expected(path)
    assert expected.get("scenario") == path.stem, "the expected output names its scenario"
    name, runner = replay(path.read_text(encoding="utf-8"))
    problems = _checker().mismatches(expected, runner.report(name))
    assert not problems, "\n".join(problems)
    replayed = audit(runner.app)
    assert replayed.ok, json.dumps(replayed.as_dict(), ensure_ascii=False, default=str)[:2000]


def test_own_scenarios_are_collected():
    assert len(_own_files()) >= 12, f"expected the project's scenarios in {OWN}"


# ----------------------------------------------------------------------------- malformed files

_GOOD_HEAD = """name: malformed
jurisdiction: shanghai.changning
steps:
  - {at: "2026-01-05T09:00:00+08:00", do: enrol, recipient: R1, id_number: "310105195803122013", name: 王秀英}
  - {at: "2026-01-05T09:01:00+08:00", do: grant_category, recipient: R1, category: dibao, from: "2025-01-01"}
"""

MALFORMED = {
    "unknown-command": (_GOOD_HEAD + '  - {at: "2026-01-05T09:02:00+08:00", do: grant_everything, recipient: R1}\n', 3, "grant_everything"),
    "missing-field": (_GOOD_HEAD + '  - {at: "2026-01-05T09:02:00+08:00", do: insure, recipient: R1, from: "2020-01-01"}\n', 3, "scheme"),
    "bad-date": (
        _GOOD_HEAD
        + '  - {at: "2026-01-05T09:02:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-02-30"}\n'
        + '  - {at: "2026-01-05T09:03:00+08:00", do: consent_auto_claim, recipient: R1, signed: true}\n',
        3,
        "from",
    ),
    "bad-recorded-time": (_GOOD_HEAD + '  - {at: "yesterday", do: consent_auto_claim, recipient: R1, signed: true}\n', 3, "at"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_exits_2_naming_its_step(case: str, tmp_path: Path):
    from infra.cli import app

    text, step, word = MALFORMED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["scenario", "run", str(path), "--json"])
    assert result.exit_code == 2, result.output
    message = result.stderr if hasattr(result, "stderr") else result.output
    assert f"step {step}" in message and word in message, message
    with pytest.raises(ScenarioError, match=rf"step {step}\b"):
        run_scenario(text)


def test_malformed_file_exit_code_from_a_real_process(tmp_path: Path):
    text, step, _ = MALFORMED["unknown-command"]
    path = tmp_path / "unknown.yaml"
    path.write_text(text, encoding="utf-8")
    run = subprocess.run([_ledger_executable(), "scenario", "run", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stdout == ""
    assert f"step {step}" in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
