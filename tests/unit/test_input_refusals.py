"""Input the ledger takes and input it refuses, at the command models and through a scenario file.

- Resident id numbers (GB 11643): the form, the birth date they carry (a real date, 1900-01-01 to
  today) and the check digit; never the history of the region code, so people born before their
  district's code existed (浦东新区 310115, 1993; 连云区 320703, 1983) enrol.
- Text: no control (Cc), invisible format (Cf), surrogate or separator character in any text field
  of any command, nested ones included.
- Dates: none before 1900-01-01; a receipt's service and invoice dates not after the day it is
  recorded (R-TIME-1); future effective dates stay allowed.
- Amounts: plain decimal digits with at most two decimals (no ``1_000``, ``１００``, ``1e3``, ``+5``).
- Names: trimmed, never empty.

The CLI and HTTP adapters are exercised in ``tests/e2e/test_input_refusals_cli_http.py``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import re
import pytest
from pydantic import ValidationError
from stdnum.cn import ric

from commands import models as m
from infra.input_errors import describe_validation
from infra.scenario import ScenarioError, run_scenario
from infra.wiring import memory_app
from ledger.money import MoneyError, parse_money
from ledger.values import CST, age_on, birth_date, validate_id_number

# GB 11643 (ISO 7064 MOD 11-2): weight 2^(17-i) mod 11 for the i-th of the first 17 digits; the
# weighted sum mod 11 picks the check character. Written out here, independently of the code.
_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]


def gb11643(first17: str) -> str:
    """The full number: ``first17`` and its check character."""
    assert len(first17) == 17 and first17.isdigit()
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


def wrong_check(number: str) -> str:
    return number[:17] + ("0" if number[17] != "0" else "1")


def today_cst() -> date:
    return datetime.now(CST).date()


PUDONG_1950 = gb11643("31011519500101123")  # 浦东新区: a code since 1993
LIANYUN_1960 = gb11643("32070319600505001")  # 连云区: a code since 1983
AT = datetime(2026, 1, 5, 9, 0, tzinfo=CST)


def test_the_check_digit_written_out_agrees_with_the_standard_library_and_the_known_example():
    assert _WEIGHTS == [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    assert gb11643("31010519580312201") == "310105195803122013"  # the README's example
    for first17 in ("31011519500101123", "32070319600505001", "11010119991231999"):
        assert gb11643(first17)[-1] == ric.calc_check_digit(first17 + "0")


# ----------------------------------------------------------------------------- id numbers


@pytest.mark.parametrize("number, born", [(PUDONG_1950, date(1950, 1, 1)), (LIANYUN_1960, date(1960, 5, 5))])
def test_a_region_code_younger_than_its_holder_is_taken(number: str, born: date):
    # the region-history check refuses these numbers: that is what kept older people out
    assert not ric.is_valid(number)
    assert validate_id_number(number, today=date(2026, 12, 6)) == number
    assert birth_date(number) == born
    assert age_on(number, date(2026, 1, 5)) == 2026 - born.year - (born > date(born.year, 1, 5))


@pytest.mark.parametrize("number", [PUDONG_1950, LIANYUN_1960])
def test_older_people_enrol_and_their_age_counts(number: str):
    app = memory_app("shanghai.changning", published_at=AT - timedelta(days=1))
    result = app.run(m.Enrol(id_number=number, name="老人", street="华阳路街道", at=AT))
    assert result.status == "accepted", result
    recipient = app.recipient(result.ids["recipient"])
    assert recipient.id_number == number


def test_a_final_lowercase_x_is_taken_and_written_X():
    first17 = next(f"31010519580312{n:03d}" for n in range(1000) if gb11643(f"31010519580312{n:03d}").endswith("X"))
    number = gb11643(first17)
    assert validate_id_number(number.lower(), today=date(2026, 12, 6)) == number
    assert m.Enrol(id_number=number[:17] + "x", name="王秀英").id_number == number


def _id_refusal(number: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        m.Enrol(id_number=number, name="王秀英", at=AT)
    [problem] = describe_validation(caught.value, m.Enrol)
    assert problem["field"] == "id_number"
    assert "GB 11643" in problem["message"] and "GB 11643" in problem["rule"], problem
    return problem["message"]


def test_id_numbers_that_are_refused_say_why():
    tomorrow = today_cst() + timedelta(days=1)
    assert "check digit" in _id_refusal(wrong_check(PUDONG_1950))
    assert "not a real date" in _id_refusal(gb11643("31010519500230123"))  # 30 February
    assert "not a real date" in _id_refusal(gb11643("31010519501301123"))  # month 13
    assert "after 2026-01-05, the day this enrolment is recorded" in _id_refusal(gb11643(f"310105{tomorrow:%Y%m%d}123"))
    assert "before 1900-01-01" in _id_refusal(gb11643("31010518991231123"))
    assert "18 characters" in _id_refusal(PUDONG_1950[:17])
    assert "17 digits" in _id_refusal("３１０１１５１９５００１０１１２３４")  # full-width digits
    assert "17 digits" in _id_refusal("31011519500101123" + "Y")
    assert "17 digits" in _id_refusal("3101151950_101123" + "4")


def test_the_birth_date_is_judged_on_the_day_recorded_not_the_clocks():
    """A scenario replayed on any day gives the same answer: a child born in 2027 enrolled at a
    2027 ``at`` is taken, whatever the clock says today."""
    born_2027 = gb11643("31010520270301002")
    enrolled = m.Enrol(id_number=born_2027, name="新生儿", at=datetime(2027, 3, 5, 9, tzinfo=CST))
    assert enrolled.id_number == born_2027
    with pytest.raises(ValidationError):
        m.Enrol(id_number=born_2027, name="新生儿", at=datetime(2027, 2, 28, 9, tzinfo=CST))


def test_the_birth_date_may_be_today_but_not_after_the_day_of_enrolment():
    today = today_cst()
    born_today = gb11643(f"310105{today:%Y%m%d}002")
    assert m.Enrol(id_number=born_today, name="新生儿").id_number == born_today
    recorded_before_birth = datetime(2001, 1, 1, 9, tzinfo=CST)
    born_2002 = gb11643("31010520020101002")
    with pytest.raises(ValidationError) as caught:
        m.Enrol(id_number=born_2002, name="王秀英", at=recorded_before_birth)
    [problem] = describe_validation(caught.value, m.Enrol)
    assert problem["field"] == "id_number" and "2001-01-01" in problem["message"] and "GB 11643" in problem["rule"]


# ----------------------------------------------------------------------------- text

RID = "6f1c2a3e-0000-4000-8000-000000000001"
EID = f"{RID}:1"
CID = "6f1c2a3e-0000-4000-8000-0000000000c1"

#: A valid payload of every command, every text field filled (optional ones too).
PAYLOADS: dict[type[m.Command], dict[str, Any]] = {
    m.Enrol: {"id_number": PUDONG_1950, "name": "王秀英", "street": "华阳路街道"},
    m.GrantCategory: {"recipient": RID, "category": "dibao", "from": "2025-01-01", "subtype": "a"},
    m.RevokeCategory: {"recipient": RID, "category": "dibao", "from": "2025-06-01", "reason": "moved out"},
    m.Insure: {"recipient": RID, "scheme": "resident", "from": "2020-01-01"},
    m.EndInsurance: {"recipient": RID, "scheme": "resident", "to": "2025-12-31"},
    m.JoinMutualAid: {"recipient": RID, "year": 2025, "has_home_insurance": True},
    m.ConsentAutoClaim: {"recipient": RID, "signed": True},
    m.RecordExpense: {
        "recipient": RID, "handle": "E1", "visit_type": "outpatient",
        "facility": {"kind": "hospital", "level": 3, "code": "SH-H3"},
        "service_date": "2025-12-01", "invoice_date": "2025-12-02", "invoice_no": "INV-1",
        "total": "150.00", "in_scope": "120.00", "basic_insurance_paid": "30.00",
    },
    m.SettleInsurance: {"expense": EID, "scheme": "critical_illness", "amount": "10.00"},
    m.OneStop: {"expense": EID},
    m.LodgeClaim: {"recipient": RID, "expenses": [EID], "handler": "HY-01", "proxy_id_number": LIANYUN_1960, "deadline_override": "hospital stay"},
    m.Review: {"claim": CID, "reviewer": "HY-02"},
    m.Approve: {"claim": CID, "approver": "HY-03"},
    m.Pay: {"claim": CID, "payer": "HY-04"},
    m.AutoClaims: {"month": "2025-11"},
    m.SetParameter: {"name": "shanghai.medical_aid.annual_cap", "value": {"note": "text", "list": ["a"]}, "effective_from": "2026-01-01", "reference": "amendment 1"},
    m.LiftSuspension: {"recipient": RID, "reviewer": "D-1", "scheme": "changning.four_linkage"},
    m.SocialHelp: {"recipient": RID, "amount": "100.00", "organisation": "慈善基金会"},
    m.PaySupplementary: {"recipient": RID},
    m.Repay: {"recipient": RID, "amount": "1.00"},
    m.WriteOff: {"recipient": RID, "officer": "C-1", "approver": "C-2", "reason": "uncollectable"},
    m.ClearingRun: {"trigger": "parameter_change"},
}


def _text_leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _text_leaves(v, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _text_leaves(v, path + (i,))]
    return []


def _with(payload: dict[str, Any], path: tuple[Any, ...], make) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(payload)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = make(target[path[-1]])
    return out


@pytest.mark.parametrize("model", list(PAYLOADS), ids=lambda c: c.__name__)
def test_every_payload_is_valid_as_written(model: type[m.Command]):
    model.model_validate({**PAYLOADS[model], "at": AT})


UNPRINTABLE = {
    "NUL": "\x00",
    "escape": "\x1b",
    "delete": "\x7f",
    "next line (C1)": "\x85",
    "tab": "\t",
    "newline": "\n",
    "zero-width space": "\u200b",
    "right-to-left override": "\u202e",
    "byte order mark": "\ufeff",
    "line separator": "\u2028",
    "lone surrogate": "\ud800",
}


@pytest.mark.parametrize("model", list(PAYLOADS), ids=lambda c: c.__name__)
def test_an_unprintable_character_in_any_text_field_is_refused_naming_that_field(model: type[m.Command]):
    payload = {**PAYLOADS[model], "command_id": "cmd-1"}
    paths = _text_leaves(payload)
    assert paths
    for i, path in enumerate(paths):
        name, char = list(UNPRINTABLE.items())[i % len(UNPRINTABLE)]
        bad = _with(payload, path, lambda text, char=char: text[:1] + char + text[1:])
        with pytest.raises(ValidationError) as caught:
            model.model_validate({**bad, "at": AT})
        problems = describe_validation(caught.value, model)
        assert [p["field"] for p in problems] == [".".join(str(x) for x in path)], (name, problems)
        assert f"U+{ord(char):04X}" in problems[0]["message"] and "at character 2" in problems[0]["message"]
        assert "printable" in problems[0]["rule"] and "printable" in problems[0]["message"]


def test_every_unprintable_kind_is_refused_and_each_problem_is_named():
    bad = dict(PAYLOADS[m.WriteOff], **{k: f"x{c}y" for k, c in zip(("officer", "approver", "reason"), ("\x00", "\u202e", "\n"))})
    with pytest.raises(ValidationError) as caught:
        m.WriteOff.model_validate(bad)
    assert [p["field"] for p in describe_validation(caught.value, m.WriteOff)] == ["officer", "approver", "reason"]
    for name, char in UNPRINTABLE.items():
        with pytest.raises(ValidationError, match=f"U\\+{ord(char):04X}"):
            m.Enrol(id_number=PUDONG_1950, name=f"王{char}秀英")


@pytest.mark.parametrize("name", ["阿依古丽·买买提", "王　秀英", "e\u0301", "\ue000字", "ی\u200cا", "𠜎𠜱"])
def test_printable_names_of_every_script_are_taken(name: str):
    # a middle dot, a full-width space inside, a combining accent, a private-use character (rare
    # characters of older systems), the zero-width non-joiner some scripts need, CJK extension B
    assert m.Enrol(id_number=PUDONG_1950, name=name).name == name


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("blank", ["", " ", "   ", "\u3000\u3000", " \u3000 "])
def test_an_empty_or_blank_name_is_refused(blank: str):
    with pytest.raises(ValidationError) as caught:
        m.Enrol(id_number=PUDONG_1950, name=blank)
    [problem] = describe_validation(caught.value, m.Enrol)
    assert problem["field"] == "name" and "empty" in problem["message"] and "SCENARIOS.md enrol" in problem["rule"]


def test_a_name_is_trimmed():
    assert m.Enrol(id_number=PUDONG_1950, name=" \u3000王秀英 ").name == "王秀英"


# ----------------------------------------------------------------------------- dates


def _refused_fields(model: type[m.Command], payload: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return describe_validation(caught.value, model)


@pytest.mark.parametrize(
    "model, field",
    [
        (m.GrantCategory, "from"), (m.GrantCategory, "to"), (m.GrantCategory, "determined_on"),
        (m.GrantCategory, "means_test_expenses_from"), (m.RevokeCategory, "from"), (m.Insure, "from"),
        (m.Insure, "to"), (m.EndInsurance, "to"), (m.SetParameter, "effective_from"), (m.SetParameter, "effective_to"),
        (m.RecordExpense, "service_date"), (m.RecordExpense, "invoice_date"), (m.ClearingRun, "since"),
    ],
)
def test_a_date_before_1900_is_refused(model: type[m.Command], field: str):
    payload = {**PAYLOADS[model], "at": AT}
    early = "1899-12-31T23:00:00+08:00" if field == "since" else "1899-12-31"
    if model is m.RecordExpense:  # both dates early, so that only the range is wrong
        payload.update(service_date="1899-12-30", invoice_date="1899-12-31")
    else:
        payload[field] = early
        for other in ("from", "effective_from"):  # a period's start moves with its end
            if other in payload and field in ("to", "effective_to", "means_test_expenses_from", "determined_on"):
                payload[other] = "1899-12-30"
    problems = [p for p in _refused_fields(model, payload) if p["field"] == field]
    assert problems, payload
    assert "before 1900-01-01" in problems[0]["message"] and "1900-01-01" in problems[0]["rule"]
    # the first day of 1900 is taken
    model.model_validate({k: ("1900-01-01T00:00:00+08:00" if k == "since" else "1900-01-01") if str(v).startswith("1899") else v
                          for k, v in payload.items()})


def test_future_effective_dates_stay_allowed():
    m.SetParameter.model_validate({**PAYLOADS[m.SetParameter], "effective_from": "2099-01-01", "effective_to": "2099-12-31", "at": AT})
    m.GrantCategory.model_validate({**PAYLOADS[m.GrantCategory], "from": "2099-01-01", "to": "2199-12-31", "at": AT})
    m.Insure.model_validate({**PAYLOADS[m.Insure], "from": "2099-01-01", "at": AT})


def test_a_receipt_dated_after_the_day_it_is_recorded_is_refused():
    receipt = PAYLOADS[m.RecordExpense]
    # recorded at 2026-01-05 09:00 China Standard Time: that day is fine, the next is not
    m.RecordExpense.model_validate({**receipt, "service_date": "2026-01-05", "invoice_date": "2026-01-05", "at": AT})
    problems = _refused_fields(m.RecordExpense, {**receipt, "service_date": "2026-01-05", "invoice_date": "2026-01-06", "at": AT})
    assert [(p["field"], p["rule"]) for p in problems] == [("invoice_date", "R-TIME-1")]
    assert "2026-01-06 is after 2026-01-05" in problems[0]["message"]
    problems = _refused_fields(m.RecordExpense, {**receipt, "service_date": "2026-01-06", "invoice_date": "2026-01-06", "at": AT})
    assert [p["field"] for p in problems] == ["service_date", "invoice_date"]
    # the recorded day is read in China Standard Time: 2026-01-05T20:00Z is already the 6th there
    late_utc = datetime.fromisoformat("2026-01-05T20:00:00+00:00")
    m.RecordExpense.model_validate({**receipt, "service_date": "2026-01-06", "invoice_date": "2026-01-06", "at": late_utc})


def test_without_a_recorded_time_a_receipt_from_tomorrow_is_refused():
    today, tomorrow = today_cst(), today_cst() + timedelta(days=1)
    receipt = {**PAYLOADS[m.RecordExpense], "service_date": today.isoformat(), "invoice_date": today.isoformat()}
    m.RecordExpense.model_validate(receipt)
    problems = _refused_fields(m.RecordExpense, {**receipt, "invoice_date": tomorrow.isoformat()})
    assert [(p["field"], p["rule"]) for p in problems] == [("invoice_date", "R-TIME-1")]


# ----------------------------------------------------------------------------- amounts

TAKEN = [("1000", "1000.00"), ("1000.5", "1000.50"), ("1000.50", "1000.50"), ("0", "0.00"), ("007.10", "7.10"),
         (1000, "1000.00"), (1000.5, "1000.50"), (12.25, "12.25"), (Decimal("99.90"), "99.90"), ("999999999999.99", "999999999999.99")]
REFUSED = ["1_000", "１００", "١٢٣", "1e3", "1E3", "+5", ".5", "5.", "1.005", "1.000", "-1.00", "-0", "NaN", "Infinity", "0x10",
           "12,000.00", "", " ", "1 000", "1000000000000", 1e3 * 1e13, 0.1 + 0.2, float("nan"), float("inf"), -5.0, True, None,
           [1], {"value": "1"}, 10**40, Decimal("1.005"), Decimal("NaN")]


@pytest.mark.parametrize("text, amount", TAKEN, ids=[repr(t) for t, _ in TAKEN])
def test_plain_amounts_are_taken(text: Any, amount: str):
    assert parse_money(text) == Decimal(amount)
    assert str(m.JoinMutualAid(recipient=RID, year=2025, has_home_insurance=True, home_insurance_deductible=text).home_insurance_deductible) == amount


@pytest.mark.parametrize("value", REFUSED, ids=[repr(v)[:30] for v in REFUSED])
def test_amounts_not_written_plainly_are_refused_naming_the_field_and_rule(value: Any):
    with pytest.raises(MoneyError):
        parse_money(value, field="total")
    problems = _refused_fields(m.RecordExpense, {**PAYLOADS[m.RecordExpense], "total": value, "at": AT})
    assert [p["field"] for p in problems] == ["total"]
    assert "RULES.md preamble" in problems[0]["message"] and "RULES.md preamble" in problems[0]["rule"]


def test_negative_amounts_only_where_allowed():
    assert parse_money("-1.50", allow_negative=True) == Decimal("-1.50")
    assert str(parse_money("-0.00", allow_negative=True)) == "0.00"
    for value in ("+1.50", "-1e2", "-1_0"):
        with pytest.raises(MoneyError):
            parse_money(value, allow_negative=True)


# ----------------------------------------------------------------------------- scenario files

_HEAD = """name: refusals
jurisdiction: shanghai.changning
steps:
  - {{at: "2026-01-05T09:00:00+08:00", do: enrol, recipient: R1, id_number: "{pudong}", name: 王秀英}}
  - {{at: "2026-01-05T09:01:00+08:00", do: grant_category, recipient: R1, category: dibao, from: "2025-01-01"}}
  - {{at: "2026-01-05T09:02:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-01-01"}}
""".format(pudong=PUDONG_1950)


def _receipt_step(**changes: str) -> str:
    fields = {
        "at": '"2026-01-05T10:00:00+08:00"', "do": "record_expense", "expense": "E1", "recipient": "R1",
        "visit_type": "outpatient", "facility": "{kind: hospital, level: 3, code: SH-H3}",
        "service_date": '"2026-01-02"', "invoice_date": '"2026-01-02"', "invoice_no": "INV-1",
        "total": '"150.00"', "in_scope": '"120.00"', "basic_insurance_paid": '"30.00"', **changes,
    }
    return "  - {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n"


def test_a_scenario_enrols_people_whose_region_code_is_younger_than_them():
    text = _HEAD + f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{LIANYUN_1960}", name: 张建国}}\n' + _receipt_step()
    report = run_scenario(text)
    assert [s["status"] for s in report["steps"]] == ["accepted"] * 5


SCENARIO_REFUSALS = {
    "NUL in a name": (f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{LIANYUN_1960}", name: "张\\0建国"}}\n', "name", "U+0000"),
    "blank name": (f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{LIANYUN_1960}", name: "  "}}\n', "name", "empty"),
    "wrong check digit": (f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{wrong_check(LIANYUN_1960)}", name: 张建国}}\n', "id_number", "GB 11643"),
    "30 February": (f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{gb11643("31010519500230123")}", name: 张建国}}\n', "id_number", "not a real date"),
    "born before 1900": (f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{gb11643("31010518991231123")}", name: 张建国}}\n', "id_number", "before 1900-01-01"),
    "born after the enrolment": (f'  - {{at: "2026-01-05T09:03:00+08:00", do: enrol, recipient: R2, id_number: "{gb11643("31010520260106123")}", name: 张建国}}\n', "id_number", "GB 11643"),
    "escape in a facility code": (_receipt_step(facility='{kind: hospital, level: 3, code: "SH\\eH3"}'), "facility.code", "U+001B"),
    "zero-width space in an invoice number": (_receipt_step(invoice_no='"INV\\u200b1"'), "invoice_no", "U+200B"),
    "newline in a reason": ('  - {at: "2026-01-05T09:03:00+08:00", do: revoke_category, recipient: R1, category: dibao, from: "2025-06-01", reason: "a\\nb"}\n', "reason", "U+000A"),
    "service in the future": (_receipt_step(service_date='"2026-01-06"', invoice_date='"2026-01-06"'), "service_date", "R-TIME-1"),
    "invoice in the future": (_receipt_step(invoice_date='"2026-01-06"'), "invoice_date", "R-TIME-1"),
    "service before 1900": (_receipt_step(service_date='"1899-12-31"'), "service_date", "before 1900-01-01"),
    "grant before 1900": ('  - {at: "2026-01-05T09:03:00+08:00", do: grant_category, recipient: R1, category: low_income, from: "1899-01-01"}\n', "from", "before 1900-01-01"),
    "parameter from before 1900": ('  - {at: "2026-01-05T09:03:00+08:00", do: set_parameter, name: shanghai.medical_aid.annual_cap.inpatient.dibao, value: "80000.00", effective_from: "1899-01-01"}\n', "effective_from", "before 1900-01-01"),
    "amount with an underscore": (_receipt_step(total='"1_000"'), "total", "plain amount"),
    "amount in full-width digits": (_receipt_step(total='"１５０"'), "total", "plain amount"),
    "amount with an exponent": (_receipt_step(total='"1e3"'), "total", "plain amount"),
    "amount with a plus sign": (_receipt_step(total='"+150"'), "total", "plain amount"),
    "social help with three decimals": ('  - {at: "2026-01-05T09:03:00+08:00", do: social_help, recipient: R1, amount: "10.005"}\n', "amount", "two decimals"),
}


@pytest.mark.parametrize("case", sorted(SCENARIO_REFUSALS))
def test_a_scenario_step_with_refused_input_is_malformed_naming_step_field_and_rule(case: str):
    step, field, words = SCENARIO_REFUSALS[case]
    with pytest.raises(ScenarioError) as caught:
        run_scenario(_HEAD + step)
    message = str(caught.value)
    assert message.startswith("step 4 (") and f"{field}: " in message and words in message, message
    assert "\n" not in message and "\x00" not in message


def test_future_dated_policy_in_a_scenario_is_accepted():
    step = '  - {at: "2026-01-05T09:03:00+08:00", do: set_parameter, name: shanghai.medical_aid.annual_cap.inpatient.dibao, value: "80000.00", effective_from: "2027-01-01"}\n'
    assert [s["status"] for s in run_scenario(_HEAD + step)["steps"]] == ["accepted"] * 4


def test_a_repayment_cannot_be_received_after_the_day_it_is_recorded() -> None:
    at = datetime(2026, 12, 6, 9, tzinfo=CST)
    assert m.Repay(recipient="r", amount="10.00", received_on=date(2026, 12, 6), at=at).received_on == date(2026, 12, 6)
    with pytest.raises(ValidationError, match=r"received_on: 2026-12-07 is after 2026-12-06.*R-CLR-3"):
        m.Repay(recipient="r", amount="10.00", received_on=date(2026, 12, 7), at=at)


def test_a_scenario_names_its_own_handles_in_messages_not_the_ledgers_ids():
    # given a receipt of R1 recorded, and R2 enrolled
    text = _HEAD + _receipt_step() + (
        f'  - {{at: "2026-01-05T10:01:00+08:00", do: enrol, recipient: R2, id_number: "{LIANYUN_1960}", name: 张建国}}\n'
        '  - {at: "2026-08-03T09:00:00+08:00", do: claim, claim: C1, recipient: R1, expenses: [E1], handler: h1}\n')
    # when R1 claims it past its six-month window, then the rejection names E1 (R-PH-5)
    step = run_scenario(text)["steps"][-1]
    assert step["code"] == "DEADLINE_PASSED" and step["message"].startswith("expense E1: "), step
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", step["message"]), step
    # when R2 lists R1's receipt on a claim, then the file is malformed at that step, naming E1
    with pytest.raises(ScenarioError) as caught:
        run_scenario(text + '  - {at: "2026-08-03T09:01:00+08:00", do: claim, claim: C2, recipient: R2, expenses: [E1], handler: h1}\n')
    assert str(caught.value) == "step 7 (claim): expenses: expense 'E1' is not an expense of this recipient"


def test_a_deadline_refusal_names_the_window_in_force():
    # given the claim window amended to 3 months (R-PH-5 [002 4.3] as a dated parameter)
    text = _HEAD + (
        '  - {at: "2026-01-05T09:03:00+08:00", do: set_parameter, name: changning.post_hoc_procedure.claim_window_months, value: 3, effective_from: "2026-01-01"}\n'
        + _receipt_step(service_date='"2026-01-02"', invoice_date='"2026-01-02"')
        + '  - {at: "2026-05-06T09:00:00+08:00", do: claim, claim: C1, recipient: R1, expenses: [E1], handler: h1}\n')
    # when a claim is lodged after it closed, then the refusal names 3 months and the day it closed
    step = run_scenario(text)["steps"][-1]
    assert step["code"] == "DEADLINE_PASSED", step
    assert "the 3-month window closed on 2026-04-02" in step["message"], step


# ----------------------------------------------------------------------------- dates and identities


@pytest.mark.parametrize("raw", [0, 1770681600, "86400", "2026-02-10T00:00:00", "20260210", "2026/02/10", "２０２６-０２-１０",
                                 datetime(2026, 2, 10, tzinfo=CST), "2026-02-30"])
def test_a_date_is_written_yyyy_mm_dd_and_nothing_else(raw: Any):
    """SCENARIOS.md: "Dates are YYYY-MM-DD". pydantic alone would read 0 as 1970-01-01 and a
    midnight date-time as its date."""
    with pytest.raises(ValidationError) as caught:
        m.GrantCategory.model_validate({"recipient": RID, "category": "dibao", "from": raw, "at": AT})
    [problem] = describe_validation(caught.value, m.GrantCategory)
    assert problem["field"] == "from" and problem["rule"] == "SCENARIOS.md: dates are YYYY-MM-DD", problem


def test_a_date_as_the_yaml_reader_makes_it_is_taken():
    assert m.GrantCategory.model_validate({"recipient": RID, "category": "dibao", "from": date(2026, 2, 10)}).valid_from == date(2026, 2, 10)
    assert m.GrantCategory.model_validate({"recipient": RID, "category": "dibao", "from": " 2026-02-10 "}).valid_from == date(2026, 2, 10)


@pytest.mark.parametrize("field, model, payload", [
    ("invoice_no", m.RecordExpense, {"recipient": RID, "visit_type": "outpatient", "facility": {"kind": "hospital", "level": 3},
                                     "service_date": "2026-01-05", "invoice_date": "2026-01-05", "invoice_no": "\u3000 ",
                                     "total": "1.00", "in_scope": "1.00", "basic_insurance_paid": "0.00", "at": AT}),
    ("facility.code", m.RecordExpense, {"recipient": RID, "visit_type": "outpatient", "facility": {"kind": "hospital", "level": 3, "code": "  "},
                                        "service_date": "2026-01-05", "invoice_date": "2026-01-05", "invoice_no": "A-1",
                                        "total": "1.00", "in_scope": "1.00", "basic_insurance_paid": "0.00", "at": AT}),
    ("handler", m.LodgeClaim, {"recipient": RID, "expenses": [EID], "handler": "   "}),
    ("reviewer", m.Review, {"claim": CID, "reviewer": "\u3000"}),
    ("payer", m.Pay, {"claim": CID, "payer": " "}),
])
def test_an_identity_that_is_blank_once_trimmed_is_refused(field: str, model: type[m.Command], payload: dict[str, Any]):
    """Two blank receipt numbers would be one receipt, two blank officers one person."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    [problem] = describe_validation(caught.value, model)
    assert problem["field"] == field and "only whitespace" in problem["message"] and "trimming" in problem["rule"], problem
