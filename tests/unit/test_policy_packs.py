"""Policy packs: parsing, dated lookups on both sides of effective dates, amendments, floors."""

from __future__ import annotations

import re
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # running without an installed package or a pythonpath setting
    sys.path.insert(0, str(ROOT))

from infra.policy_files import load_pack_data, load_packs  # noqa: E402
from ledger.policy.packs import (  # noqa: E402
    JURISDICTIONS,
    PARAMETER_SPECS,
    SCHEMES,
    coerce_value,
    content_hash,
    make_amendment,
    parse_pack,
    publish,
    spec_for,
    validate,
)
from ledger.policy.params import PolicyBook, PolicyError, UnknownParameter  # noqa: E402

pytestmark = pytest.mark.unit

CST = timezone(timedelta(hours=8))
LOADED = datetime(2026, 1, 2, 9, 0, tzinfo=CST)
RULES_MD = ROOT / "docs" / "rules.md"  # the project's own statement of the rules

SH = "shanghai.medical_aid"
FL = "changning.four_linkage"
PH = "changning.post_hoc_procedure"
MA = "shanghai.community_mutual_aid"
LY = "lianyungang.medical_aid"

#: docs/rules.md **PARAMETER** marks (local settings), written out by hand: R-INS-2, the §4 table,
#: R-CAP-1, R-4L-4, R-LYG-1, R-LYG-2, R-LYG-3.
SH_CATEGORIES = (
    "special_relief", "destitute", "dibao", "low_income",
    "expenditure_poor_1", "expenditure_poor_2", "orphan", "child_in_distress",
)
EXPECTED_LOCAL = (
    {f"{SH}.enrolment_subsidy.low_income_60plus"}
    | {f"{SH}.rate.{kind}.{cat}" for kind in ("inpatient", "outpatient")
       for cat in ("expenditure_poor_1", "expenditure_poor_2", "destitute", "special_relief")}
    | {f"{SH}.annual_cap.{kind}.{cat}" for kind in ("inpatient", "outpatient") for cat in SH_CATEGORIES}
    | {f"{FL}.monthly_cap.community_outpatient", f"{FL}.monthly_visits.community_outpatient"}
    | {f"{LY}.rate.key", f"{LY}.basic_insurance_cap", f"{LY}.bands.extended", f"{LY}.annual_cap.extended",
       f"{LY}.enrolment_subsidy.other"}
)


def pack(scheme: str, published_at: datetime = LOADED):
    return parse_pack(load_pack_data(scheme), published_at=published_at)


def book_of(jurisdiction: str, published_at: datetime = LOADED) -> PolicyBook:
    book = PolicyBook()
    for p in load_packs(jurisdiction, published_at):
        publish(book, p.versions)
    return book


def value(book: PolicyBook, name: str, on: date):
    v = book.lookup(name, on)
    return None if v is None else v.value


# --- every pack parses --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_pack_parses_with_its_identity_and_source(scheme):
    p = pack(scheme)
    data = load_pack_data(scheme)
    assert p.scheme == scheme
    assert p.version == "2026.1"
    assert re.fullmatch(r"[0-9a-f]{12}", p.content_hash)
    assert p.content_hash == content_hash(data)
    assert p.versions, scheme
    for v in p.versions:
        assert v.name.startswith(scheme + ".")
        assert v.source == f"pack:{scheme}@2026.1+{p.content_hash}"
        assert v.published_at == LOADED
        assert re.fullmatch(r"\[00[0-4] .+\]", v.reference), (v.name, v.reference)
        assert v.local_setting is spec_for(v.name).local_setting


@pytest.mark.parametrize("jurisdiction", sorted(JURISDICTIONS))
def test_every_jurisdiction_loads_its_schemes(jurisdiction):
    packs = load_packs(jurisdiction, LOADED)
    assert tuple(p.scheme for p in packs) == JURISDICTIONS[jurisdiction]


def test_content_hash_is_the_policy_version():
    data = load_pack_data(LY)
    assert content_hash(data) == content_hash(load_pack_data(LY))
    changed = load_pack_data(LY)
    changed["parameters"]["rate.key"]["values"][date(2017, 2, 23)]["value"] = 0.75
    assert content_hash(changed) != content_hash(data)


def test_values_take_their_units_types():
    book = book_of("shanghai.changning")
    on = date(2026, 3, 1)
    assert value(book, f"{SH}.rate.inpatient.dibao", on) == Decimal("0.90")
    assert value(book, f"{SH}.rate.outpatient.low_income", on) == Decimal("0.50")
    assert value(book, f"{SH}.rate.inpatient.special_relief", on) == Decimal("1.00")
    assert value(book, f"{SH}.annual_cap.inpatient.dibao", on) == Decimal("80000.00")
    assert str(value(book, f"{SH}.annual_cap.outpatient.orphan", on)) == "10000.00"
    assert value(book, f"{SH}.funding.city_share", on) == Decimal("0.50")
    assert value(book, f"{FL}.monthly_visits.community_outpatient", on) == 8
    assert value(book, f"{FL}.coverage.community_health_centre", on) == Decimal("0.95")
    assert value(book, f"{MA}.outpatient.allowance", on) == Decimal("150.00")
    assert value(book, f"{MA}.inpatient.threshold.without_home_insurance", on) == Decimal("1000.00")
    assert value(book, f"{FL}.categories", on)[-1] == "other_hardship"
    assert isinstance(value(book, f"{SH}.categories", on), tuple)
    assert value(book, f"{FL}.in_force", on) is True

    ly = book_of("lianyungang")
    assert value(ly, f"{LY}.bands.extended", on) == (
        {"upto": Decimal("10000.00"), "rate": Decimal("0.50")},
        {"upto": Decimal("50000.00"), "rate": Decimal("0.55")},
        {"upto": None, "rate": Decimal("0.60")},
    )
    assert value(ly, f"{LY}.rate.key", on) == Decimal("0.70")
    # annual_cap.extended is unset by default: same cap as key recipients (R-LYG-3).
    assert ly.lookup(f"{LY}.annual_cap.extended", on) is None


# --- both sides of effective dates --------------------------------------------------------------


def test_four_linkage_in_force_2024_to_2028():
    book = book_of("shanghai.changning")
    name = f"{FL}.in_force"
    assert book.lookup(name, date(2023, 12, 31)) is None
    assert value(book, name, date(2024, 1, 1)) is True
    assert value(book, name, date(2028, 12, 31)) is True
    assert book.lookup(name, date(2029, 1, 1)) is None  # the null closes the rule [000 第八条]
    v = book.lookup(name, date(2026, 6, 1))
    assert (v.effective_from, v.effective_to, v.reference) == (date(2024, 1, 1), date(2028, 12, 31), "[000 第八条]")


def test_mutual_aid_in_force_2023_to_2027():
    book = book_of("shanghai")
    name = f"{MA}.in_force"
    assert book.lookup(name, date(2022, 12, 31)) is None
    assert value(book, name, date(2023, 1, 1)) is True
    assert value(book, name, date(2027, 12, 31)) is True
    assert book.lookup(name, date(2028, 1, 1)) is None


def test_critical_illness_evidence_changes_on_2026_01_01():
    book = book_of("shanghai.changning")
    name = f"{PH}.critical_illness_evidence"
    assert value(book, name, date(2025, 12, 31)) == "settlement_slip"
    assert value(book, name, date(2026, 1, 1)) == "receipt_marking"
    first = book.lookup(name, date(2024, 5, 1))
    assert first.effective_to == date(2025, 12, 31) and first.reference == "[002 3.6]"


def test_post_hoc_procedure_and_city_aid_start_dates():
    book = book_of("shanghai.changning")
    assert book.lookup(f"{PH}.in_force", date(2026, 3, 31)) is None
    assert value(book, f"{PH}.in_force", date(2026, 4, 1)) is True
    assert value(book, f"{PH}.claim_window_months", date(2026, 4, 1)) == 6
    assert book.lookup(f"{SH}.rate.inpatient.dibao", date(2022, 12, 31)) is None
    assert value(book, f"{SH}.rate.inpatient.dibao", date(2023, 1, 1)) == Decimal("0.90")
    ly = book_of("lianyungang")
    assert ly.lookup(f"{LY}.in_force", date(2017, 2, 22)) is None
    assert value(ly, f"{LY}.in_force", date(2017, 2, 23)) is True


def test_a_null_value_closes_the_previous_version():
    data = load_pack_data(LY)
    data["parameters"]["rate.key"]["values"][date(2030, 1, 1)] = {"value": None, "reference": "[004 五(一)]"}
    p = parse_pack(data, published_at=LOADED)
    (v,) = [v for v in p.versions if v.name == f"{LY}.rate.key"]
    assert v.effective_to == date(2029, 12, 31)


# --- amendments: two axes -----------------------------------------------------------------------


def test_retroactive_amendment_wins_for_its_dates_and_only_once_published():
    book = book_of("shanghai.changning")
    name = f"{SH}.annual_cap.outpatient.dibao"
    published = datetime(2026, 6, 1, 10, 0, tzinfo=CST)
    amendment = make_amendment(name, "12000", date(2026, 1, 1), date(2026, 12, 31), published, reference="[区医保局 2026-06]")
    assert amendment.local_setting is True and amendment.source == "amendment"
    publish(book, [amendment])

    assert value(book, name, date(2025, 12, 31)) == Decimal("10000.00")
    assert value(book, name, date(2026, 1, 1)) == Decimal("12000.00")
    assert value(book, name, date(2026, 12, 31)) == Decimal("12000.00")
    assert value(book, name, date(2027, 1, 1)) == Decimal("10000.00")
    # What we knew before the amendment was published (R-TIME-1): the pack's value.
    before = book.known_at(published - timedelta(seconds=1))
    assert value(before, name, date(2026, 3, 1)) == Decimal("10000.00")
    assert value(book.known_at(published), name, date(2026, 3, 1)) == Decimal("12000.00")
    # Other parameters are untouched.
    assert value(book, f"{SH}.annual_cap.outpatient.low_income", date(2026, 3, 1)) == Decimal("10000.00")


def test_amendment_values_are_coerced_to_their_unit():
    t = datetime(2026, 6, 1, tzinfo=CST)
    assert make_amendment(f"{FL}.monthly_visits.community_outpatient", "10", date(2026, 1, 1), None, t).value == 10
    assert make_amendment(f"{LY}.rate.key", 0.8, date(2026, 1, 1), None, t).value == Decimal("0.80")
    assert make_amendment(f"{LY}.annual_cap.extended", None, date(2026, 1, 1), None, t).value is None
    assert make_amendment(f"{LY}.annual_cap.extended", 100000, date(2026, 1, 1), None, t).value == Decimal("100000.00")
    assert make_amendment(f"{FL}.in_force", "false", date(2026, 1, 1), None, t).value is False
    assert make_amendment(f"{SH}.rate.inpatient.dibao", "0.95", date(2026, 1, 1), None, t).local_setting is False
    bands = make_amendment(f"{LY}.bands.extended", [{"upto": "20000", "rate": "0.5"}, {"upto": None, "rate": 0.6}],
                           date(2026, 1, 1), None, t).value
    assert bands == ({"upto": Decimal("20000.00"), "rate": Decimal("0.50")}, {"upto": None, "rate": Decimal("0.60")})


@pytest.mark.parametrize(
    "name, raw",
    [
        (f"{LY}.rate.key", "seventy"),
        (f"{LY}.rate.key", True),
        (f"{LY}.rate.key", None),
        (f"{SH}.annual_cap.inpatient.dibao", "1.005"),
        (f"{FL}.monthly_visits.community_outpatient", 2.5),
        (f"{FL}.in_force", "yes"),
        (f"{PH}.critical_illness_evidence", "photo"),
        (f"{SH}.categories", ["dibao", "nobody"]),
        (f"{LY}.bands.extended", [{"upto": 10000, "percent": 50}]),
        # written as money is written: plain digits 0-9 (Decimal() alone takes these)
        (f"{SH}.rate.outpatient.dibao", "０.５"),
        (f"{SH}.rate.outpatient.dibao", "٠.٥"),
        (f"{SH}.rate.outpatient.dibao", "5e-1"),
        (f"{SH}.rate.outpatient.dibao", "0.5_0"),
        (f"{SH}.annual_cap.inpatient.dibao", "NaN"),
    ],
)
def test_a_value_of_the_wrong_type_is_invalid(name, raw):
    with pytest.raises(PolicyError) as err:
        coerce_value(name, raw)
    assert err.value.code == "INVALID_VALUE"
    assert err.value.field == name


def test_unknown_parameter_name_refused():
    with pytest.raises(UnknownParameter) as err:
        make_amendment(f"{SH}.rate.inpatient.nobody", "0.5", date(2026, 1, 1), None, LOADED)
    assert err.value.code == "UNKNOWN_PARAMETER" and err.value.field == f"{SH}.rate.inpatient.nobody"
    with pytest.raises(UnknownParameter):
        coerce_value("rate.key", "0.8")  # short names are not accepted: scheme prefix required


def test_unknown_parameter_in_a_pack_refused_naming_it():
    data = load_pack_data(FL)
    data["parameters"]["coverage.pharmacy"] = dict(data["parameters"]["coverage.hospital"])
    with pytest.raises(UnknownParameter) as err:
        parse_pack(data, published_at=LOADED)
    assert err.value.field == f"{FL}.coverage.pharmacy"


def test_a_bad_pack_names_the_parameter():
    data = load_pack_data(MA)
    data["parameters"]["outpatient.allowance"]["unit"] = "rate"
    with pytest.raises(PolicyError) as err:
        parse_pack(data, published_at=LOADED)
    assert err.value.field == f"{MA}.outpatient.allowance"

    data = load_pack_data(MA)
    del data["parameters"]["outpatient.rate.level_1"]["values"][date(2023, 1, 1)]["reference"]
    with pytest.raises(PolicyError) as err:
        parse_pack(data, published_at=LOADED)
    assert err.value.field == f"{MA}.outpatient.rate.level_1"


# --- floors: refused with POLICY_FLOOR, nothing changed ------------------------------------------


def test_key_rate_below_70_percent_refused_and_book_unchanged():
    book = book_of("lianyungang")
    before = list(book.versions)
    amendment = make_amendment(f"{LY}.rate.key", "0.65", date(2026, 1, 1), None, datetime(2026, 6, 1, tzinfo=CST))
    with pytest.raises(PolicyError) as err:
        publish(book, [amendment])
    assert err.value.code == "POLICY_FLOOR"
    assert err.value.rule == "R-LYG-1"
    assert err.value.field == f"{LY}.rate.key"
    assert "0.65" in str(err.value) and "0.70" in str(err.value) and "[004 五(一)]" in str(err.value)
    assert book.versions == before
    assert value(book, f"{LY}.rate.key", date(2026, 3, 1)) == Decimal("0.70")


def test_a_pack_that_breaks_its_own_floor_is_refused():
    data = load_pack_data(LY)
    data["parameters"]["rate.key"]["values"][date(2017, 2, 23)]["value"] = 0.65
    with pytest.raises(PolicyError) as err:
        parse_pack(data, published_at=LOADED)
    assert (err.value.code, err.value.rule) == ("POLICY_FLOOR", "R-LYG-1")


def test_key_share_below_half_refused():
    with pytest.raises(PolicyError) as err:
        validate(book_of("lianyungang"), [make_amendment(f"{LY}.annual_cap.key_share", "0.4", date(2026, 1, 1), None, LOADED)])
    assert (err.value.code, err.value.rule, err.value.field) == ("POLICY_FLOOR", "R-LYG-2", f"{LY}.annual_cap.key_share")


def test_band_rate_not_below_the_key_rate_refused():
    book = book_of("lianyungang")
    before = list(book.versions)
    bands = [{"upto": 10000, "rate": 0.5}, {"upto": None, "rate": 0.7}]
    with pytest.raises(PolicyError) as err:
        publish(book, [make_amendment(f"{LY}.bands.extended", bands, date(2026, 1, 1), None, LOADED)])
    assert (err.value.code, err.value.rule, err.value.field) == ("POLICY_FLOOR", "R-LYG-3", f"{LY}.bands.extended")
    assert book.versions == before


def test_band_rate_checked_against_the_key_rate_in_force_on_each_date():
    book = book_of("lianyungang")
    t = datetime(2026, 6, 1, tzinfo=CST)
    # Key rate raised to 0.80 for 2026 only: a 0.75 band is fine in 2026 but not from 2027.
    publish(book, [make_amendment(f"{LY}.rate.key", "0.80", date(2026, 1, 1), date(2026, 12, 31), t)])
    bands = [{"upto": 10000, "rate": 0.5}, {"upto": None, "rate": 0.75}]
    publish(book, [make_amendment(f"{LY}.bands.extended", bands, date(2026, 1, 1), date(2026, 12, 31), t)])
    with pytest.raises(PolicyError) as err:
        validate(book, [make_amendment(f"{LY}.bands.extended", bands, date(2026, 1, 1), None, t)])
    assert err.value.rule == "R-LYG-3" and "2027-01-01" in str(err.value)
    # Lowering the key rate back under a band in force is refused too, naming the key rate.
    with pytest.raises(PolicyError) as err:
        validate(book, [make_amendment(f"{LY}.rate.key", "0.72", date(2026, 7, 1), date(2026, 12, 31), t)])
    assert (err.value.rule, err.value.field) == ("R-LYG-3", f"{LY}.rate.key")


@pytest.mark.parametrize(
    "bands",
    [
        [{"upto": 50000, "rate": 0.5}, {"upto": 10000, "rate": 0.55}, {"upto": None, "rate": 0.6}],
        [{"upto": 10000, "rate": 0.55}, {"upto": None, "rate": 0.5}],
        [{"upto": None, "rate": 0.5}, {"upto": 10000, "rate": 0.55}],
        [{"upto": 10000, "rate": 0.5}, {"upto": 50000, "rate": 0.55}],
    ],
)
def test_bands_must_ascend_with_an_open_top_band(bands):
    with pytest.raises(PolicyError) as err:
        validate(book_of("lianyungang"), [make_amendment(f"{LY}.bands.extended", bands, date(2026, 1, 1), None, LOADED)])
    assert (err.value.code, err.value.rule) == ("POLICY_FLOOR", "R-LYG-3")


@pytest.mark.parametrize("raw", ["0.80", "0.45"])
def test_expenditure_poor_inpatient_rate_outside_50_to_70_refused(raw):
    book = book_of("shanghai")
    before = list(book.versions)
    name = f"{SH}.rate.inpatient.expenditure_poor_1"
    with pytest.raises(PolicyError) as err:
        publish(book, [make_amendment(name, raw, date(2026, 1, 1), None, LOADED)])
    assert (err.value.code, err.value.field) == ("POLICY_FLOOR", name)
    assert "[001 二(二)4]" in str(err.value) and raw in str(err.value)
    assert book.versions == before


def test_expenditure_poor_inpatient_rate_inside_range_accepted():
    book = book_of("shanghai")
    name = f"{SH}.rate.inpatient.expenditure_poor_2"
    publish(book, [make_amendment(name, "0.60", date(2026, 1, 1), None, LOADED)])
    assert value(book, name, date(2026, 1, 1)) == Decimal("0.60")


@pytest.mark.parametrize(
    "name, raw",
    [
        (f"{SH}.rate.outpatient.dibao", "1.2"),
        (f"{MA}.outpatient.rate.level_1", "-0.1"),
        (f"{SH}.annual_cap.inpatient.dibao", "-1"),
        (f"{FL}.monthly_visits.community_outpatient", "-3"),
        (f"{PH}.payment_due_day", "32"),
    ],
)
def test_generic_bounds_refused(name, raw):
    with pytest.raises(PolicyError) as err:
        validate(PolicyBook(), [make_amendment(name, raw, date(2026, 1, 1), None, LOADED)])
    assert (err.value.code, err.value.field) == ("POLICY_FLOOR", name)


def test_validate_refuses_a_period_that_ends_before_it_starts():
    with pytest.raises(PolicyError) as err:
        make_amendment(f"{LY}.rate.key", "0.8", date(2026, 2, 1), date(2026, 1, 31), LOADED)
    assert err.value.code == "INVALID_VALUE"


# --- the registry and the packs agree -----------------------------------------------------------


def _pack_parameters() -> dict[str, dict]:
    out = {}
    for scheme in SCHEMES:
        for short, entry in load_pack_data(scheme)["parameters"].items():
            out[f"{scheme}.{short}"] = entry
    return out


def test_every_pack_parameter_is_in_the_specs_and_vice_versa():
    in_packs = _pack_parameters()
    assert set(in_packs) == set(PARAMETER_SPECS)
    for name, entry in in_packs.items():
        spec = PARAMETER_SPECS[name]
        assert entry["unit"] == spec.unit, name
        assert entry["rule"] == spec.rule, name
        assert entry["description"] and entry["description_zh"], name


def test_local_settings_match_the_rules_parameter_marks():
    in_packs = _pack_parameters()
    local = {name for name, entry in in_packs.items() if entry["local_setting"]}
    assert local == EXPECTED_LOCAL
    assert {name for name, spec in PARAMETER_SPECS.items() if spec.local_setting} == EXPECTED_LOCAL


def _expand(pattern: str) -> set[str]:
    pattern = pattern.replace("{category}", "{" + ",".join(SH_CATEGORIES) + "}")
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return {pattern}
    return set().union(*(_expand(pattern[: m.start()] + alt + pattern[m.end():]) for alt in m.group(1).split(",")))


def test_local_settings_read_from_rules_md():
    """Every name docs/rules.md marks **PARAMETER** is a local setting in the packs, and nothing else is.

    A marked name is either short (``rate.key``, under its scheme id) or full
    (``lianyungang.medical_aid.enrolment_subsidy.other``).
    """
    text = RULES_MD.read_text(encoding="utf-8")
    marked_short: set[str] = set()
    for block in re.split(r"\n(?=- |\n)", text):
        if "**PARAMETER**" in block:
            for token in re.findall(r"`([a-z_0-9.{},]+)`", block):
                marked_short |= _expand(token)
    marked: set[str] = set()
    for line in text.splitlines():  # the §4 rate table: a PARAMETER cell marks that rate
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and "**PARAMETER**" in line:
            for kind, cell in zip(("inpatient", "outpatient"), cells[1:]):
                if "**PARAMETER**" in cell:
                    marked.add(f"{SH}.rate.{kind}.{cells[0]}")
    for name in PARAMETER_SPECS:
        if name in marked_short or any(name == f"{scheme}.{short}" for scheme in SCHEMES for short in marked_short):
            marked.add(name)
    local = {name for name, entry in _pack_parameters().items() if entry["local_setting"]}
    assert marked == local


def test_rule_ids_exist_in_rules_md():
    names = {spec.rule for spec in PARAMETER_SPECS.values()}
    assert all(re.fullmatch(r"R-[A-Z0-9]+-\d+|§\d+", r) for r in names), names
    text = RULES_MD.read_text(encoding="utf-8")
    for rule in names:
        if rule.startswith("R-"):
            assert f"**{rule}**" in text, rule
        else:
            assert re.search(rf"^## {rule[1:]}\. ", text, re.M), rule


def test_a_count_is_a_whole_number_however_it_is_written():
    # "6.0" as a scenario file keeps it is the count 6; "6.5" and "6e0" are not counts
    assert coerce_value(f"{PH}.claim_window_months", "6.0") == coerce_value(f"{PH}.claim_window_months", 6) == 6
    for raw in ("6.5", "6e0", "six"):
        with pytest.raises(PolicyError):
            coerce_value(f"{PH}.claim_window_months", raw)
