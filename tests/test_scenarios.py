"""Scenario files (SCENARIOS.md) as tests: the public acceptance scenarios and the project's own.

- The public acceptance scenarios are kept in ``tests/acceptance/`` (each ``NAME.yaml`` with its
  ``NAME.expected.json``, copied unchanged). Each runs through the real command line, a
  ``ledger scenario run FILE --json`` subprocess, exactly as the acceptance run drives it, and
  again in-process (one case per file, for a readable diff). Every one must match exactly.
- The project's own scenarios (``tests/scenarios/*.yaml``, expected values written by hand from
  RULES.md, the arithmetic in each file's comments) run in-process through
  :func:`infra.scenario.replay` and the runner's report, what ``ledger scenario run`` prints; each
  stored decision is then replayed with its recorded knowledge and must come out the same.
- Every comparison uses :func:`infra.scenario_check.mismatches`, the project's implementation of
  the acceptance contract's partial matching; a few cases below check that it does report
  differences, so it cannot pass everything unnoticed.
- A malformed file (unknown command, missing field, bad date) exits 2 and names its step.

Nothing here reads outside the repository: a clone with nothing beside it runs all of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.scenario import ScenarioError, replay, run_scenario
from infra.scenario_check import expected_path, mismatches

HERE = Path(__file__).resolve().parent
ACCEPTANCE = HERE / "acceptance"
OWN = HERE / "scenarios"

# The public acceptance scenarios, by name: all of them must be here and pass.
PUBLIC_NAMES = ("changning-dibao-basics", "late-insurance-clearing", "mutual-aid-outpatient-year")


def _public_files() -> list[Path]:
    return sorted(ACCEPTANCE.glob("*.yaml"))


def _own_files() -> list[Path]:
    return sorted(OWN.glob("*.yaml"))


def _ledger_executable() -> str:
    beside = Path(sys.executable).with_name("ledger")
    found = str(beside) if beside.exists() else shutil.which("ledger")
    if not found:
        pytest.fail("the `ledger` console script is not installed (pip install -e .)", pytrace=False)
    return found


def _expected(path: Path) -> dict:
    expected = expected_path(path)
    if not expected.is_file():
        pytest.fail(f"{expected.name} is missing beside {path.name}", pytrace=False)
    return json.loads(expected.read_text(encoding="utf-8"))


def _case_ids(files: list[Path]) -> list[str]:
    return [f.stem for f in files]


# ----------------------------------------------------------------------------- the comparison itself


def test_comparison_accepts_a_partial_match():
    expected = {"expenses": {"E1": {"self_pay": "10.00"}}, "suspensions": [{"recipient": "R1"}]}
    actual = {
        "scenario": "x",
        "expenses": {"E1": {"self_pay": "10.00", "category": "dibao"}, "E2": {"self_pay": "1.00"}},
        "suspensions": [{"recipient": "R1", "reason": "lapse"}],
    }
    assert mismatches(expected, actual) == []


@pytest.mark.parametrize(
    ("expected", "actual", "where"),
    [
        ({"expenses": {"E1": {"self_pay": "10.00"}}}, {"expenses": {"E1": {"self_pay": "10.01"}}}, "$.expenses.E1.self_pay"),
        ({"expenses": {"E1": {}}}, {"expenses": {}}, "$.expenses.E1: missing"),
        ({"expenses": {}}, {"expenses": []}, "$.expenses: expected an object"),
        ({"annual": [{"year": 2026}]}, {"annual": {"year": 2026}}, "$.annual: expected a list"),
        ({"annual": []}, {"annual": [{"year": 2026}]}, "$.annual: expected no items"),
        # two expected items cannot both be matched by one actual item
        ({"annual": [{"year": 2026}, {"year": 2026}]}, {"annual": [{"year": 2026, "kind": "a"}]}, "$.annual[1]: no actual item"),
        # counted lists: an extra actual item is a difference; elsewhere it is not
        ({"clearing_cases": [{"expense": "E1"}]}, {"clearing_cases": [{"expense": "E1"}, {"expense": "E2"}]}, "expected 1 items, got 2"),
        ({"supplementary": [{"expense": "E1"}]}, {"supplementary": [{"expense": "E1"}, {"expense": "E1"}]}, "expected 1 items, got 2"),
        ({"suspensions": [{"recipient": "R1"}]}, {"suspensions": [{"recipient": "R1"}, {"recipient": "R2"}]}, "expected 1 items, got 2"),
    ],
    ids=["value", "missing-key", "object-vs-list", "list-vs-object", "empty-list", "distinct-items", "clearing-count", "supplementary-count", "suspensions-count"],
)
def test_comparison_reports_a_mismatch(expected, actual, where: str):
    problems = mismatches(expected, actual)
    assert len(problems) == 1 and where in problems[0], problems


def test_comparison_lets_uncounted_lists_have_more_items():
    assert mismatches({"annual": [{"year": 2026}]}, {"annual": [{"year": 2025}, {"year": 2026}]}) == []


def test_comparison_fails_a_public_report_that_was_tampered_with():
    """A real report matches its expectation; change one amount and the comparison says where."""
    path = ACCEPTANCE / "late-insurance-clearing.yaml"
    expected = _expected(path)
    report = run_scenario(path.read_text(encoding="utf-8"))
    assert mismatches(expected, report) == []
    report["expenses"]["E1"]["self_pay"] = "5250.01"
    assert mismatches(expected, report) == ['$.expenses.E1.self_pay: expected "5250.00", got "5250.01"']


# ----------------------------------------------------------------------------- public acceptance scenarios


def test_public_scenarios_are_present():
    assert sorted(f.stem for f in _public_files()) == sorted(PUBLIC_NAMES), f"the acceptance scenarios in {ACCEPTANCE}"
    for f in _public_files():
        assert expected_path(f).is_file(), f"{f.name} has no expected output"
        assert _expected(f).get("scenario") == f.stem, "the expected output names its scenario"


@pytest.mark.parametrize("path", _public_files(), ids=_case_ids(_public_files()))
def test_public_scenario_through_the_cli(path: Path):
    """Exactly the acceptance run: the installed ``ledger`` command, a real process, its stdout."""
    run = subprocess.run(
        [_ledger_executable(), "scenario", "run", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    problems = mismatches(_expected(path), json.loads(run.stdout))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", _public_files(), ids=_case_ids(_public_files()))
def test_public_scenario_in_process(path: Path):
    problems = mismatches(_expected(path), run_scenario(path.read_text(encoding="utf-8")))
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the project's own scenarios


@pytest.mark.parametrize("path", _own_files(), ids=_case_ids(_own_files()))
def test_own_scenario(path: Path):
    """The report matches the hand-computed expectation; and every stored decision, replayed with
    the knowledge it recorded, comes out the same to the fen (R-TIME-1)."""
    from commands.replay import audit

    expected = _expected(path)
    assert expected.get("scenario") == path.stem, "the expected output names its scenario"
    name, runner = replay(path.read_text(encoding="utf-8"))
    problems = mismatches(expected, runner.report(name))
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

_EXPENSE = (
    '  - {{at: "2026-01-05T09:02:00+08:00", do: record_expense, expense: E1, recipient: R1, visit_type: outpatient, '
    'facility: {{kind: hospital, level: 2}}, service_date: "2026-01-04", invoice_date: "2026-01-04", invoice_no: X-1, '
    'total: {total}, in_scope: "10.00", basic_insurance_paid: "0.00"}}\n'
)

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
    # unquoted, YAML 1.1 would read these as the numbers 1000 and 90: the file says what it says
    "underscored-amount": (_GOOD_HEAD + _EXPENSE.format(total="1_000"), 3, "total"),
    "sexagesimal-amount": (_GOOD_HEAD + _EXPENSE.format(total="1:30"), 3, "total"),
    "exponent-amount": (_GOOD_HEAD + _EXPENSE.format(total="1e3"), 3, "total"),
    # an unquoted fraction is read as the text written, not a binary float rounded to 100.0
    "many-decimals-unquoted": (_GOOD_HEAD + _EXPENSE.format(total="100.0000000000000001"), 3, "total"),
    "command-a-list": (_GOOD_HEAD + '  - {at: "2026-01-05T09:02:00+08:00", do: [insure], recipient: R1}\n', 3, "unknown command"),
    "handle-null": (_GOOD_HEAD + '  - {at: "2026-01-05T09:02:00+08:00", do: consent_auto_claim, recipient: ~, signed: true}\n', 3, "recipient"),
    "invoice-no-null": (_GOOD_HEAD + _EXPENSE.format(total='"10.00"').replace("invoice_no: X-1", "invoice_no: null"), 3, "invoice_no"),
    "invoice-no-a-list": (_GOOD_HEAD + _EXPENSE.format(total='"10.00"').replace("invoice_no: X-1", "invoice_no: [1, 2]"), 3, "invoice_no"),
    "invoice-no-shows-nothing": (_GOOD_HEAD + _EXPENSE.format(total='"10.00"').replace("invoice_no: X-1", 'invoice_no: "\u3164"'), 3, "invoice_no"),
    "handle-a-mapping": (_GOOD_HEAD + '  - {at: "2026-01-05T09:02:00+08:00", do: consent_auto_claim, recipient: {a: 1}, signed: true}\n', 3, "recipient"),
    "recorded-time-out-of-range": (_GOOD_HEAD + '  - {at: "9999-12-31T23:59:59-08:00", do: consent_auto_claim, recipient: R1, signed: true}\n', 3, "at"),
    "first-recorded-time-out-of-range": ('name: m\njurisdiction: shanghai\nsteps:\n  - {at: "0001-01-01T05:00:00+08:00", do: enrol, recipient: R1, id_number: "310105195803122013", name: X}\n', 1, "at"),
}

def test_null_is_no_value_except_a_parameter_published_as_unset():
    # given an extended cap set for 2026, when it is published again as null (unset), then it is taken
    text = (
        "name: unset\njurisdiction: lianyungang\nsteps:\n"
        '  - {at: "2026-01-02T09:00:00+08:00", do: set_parameter, name: lianyungang.medical_aid.annual_cap.extended, value: "5000.00", effective_from: "2026-01-01"}\n'
        '  - {at: "2026-01-03T09:00:00+08:00", do: set_parameter, name: lianyungang.medical_aid.annual_cap.extended, value: null, effective_from: "2026-01-01", effective_to: ~}\n'
    )
    assert [s["status"] for s in run_scenario(text)["steps"]] == ["accepted", "accepted"]


def test_a_claim_by_an_unverified_proxy_is_refused_and_records_who_lodged_it():
    # given a claim lodged by a proxy whose id fails its check digit (R-PH-9 [002 4.7])
    text = _GOOD_HEAD + (
        '  - {at: "2026-01-05T09:02:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-01-01"}\n'
        + _EXPENSE.format(total='"10.00"').replace("09:02:00", "09:03:00")
        + '  - {at: "2026-01-06T09:00:00+08:00", do: claim, claim: C1, recipient: R1, expenses: [E1], handler: H1, proxy_id_number: 310105197909099018}\n'
    )
    _, runner = replay(text)
    # then the step is a refusal by the rule, and the claim records the number it was lodged with
    assert {k: runner.steps[-1][k] for k in ("status", "code", "rule")} == {"status": "rejected", "code": "NOT_ELIGIBLE", "rule": "R-PH-9"}
    claim = runner.app.claim(runner.claims["C1"])
    assert (claim.status, claim.proxy_id_number) == ("rejected", "310105197909099018")


#: Files that are not scenarios at all: exit 2 with one line that says why, never a traceback.
NOT_A_SCENARIO = {
    "jurisdiction-a-list": ("name: m\njurisdiction: [shanghai.changning]\nsteps: []\n", "unknown jurisdiction"),
    "anchor-to-itself": ("name: m\njurisdiction: shanghai\nsteps:\n  - &s [*s]\n", "anchor"),
    "nested-too-deep": ("name: m\njurisdiction: shanghai\nsteps:\n  - {at: x, do: enrol, name: " + "[" * 3000 + "]" * 3000 + "}\n", "nests too deeply"),
    "yaml-syntax": (_GOOD_HEAD.replace("name: 王秀英}", "name: 王秀英"), "line 5"),
}


@pytest.mark.parametrize("case", sorted(NOT_A_SCENARIO))
def test_a_file_that_is_not_a_scenario_exits_2_with_one_line(case: str, tmp_path: Path):
    from infra.cli import app

    text, words = NOT_A_SCENARIO[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["scenario", "run", str(path), "--json"])
    assert result.exit_code == 2, result.output
    message = result.stderr if hasattr(result, "stderr") else result.output
    assert words in message and len(message.strip().splitlines()) == 1, message


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
