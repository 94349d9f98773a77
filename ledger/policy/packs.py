"""Policy packs: each scheme's parameters as dated, cited data, parsed and checked (pure).

A pack is one YAML document per scheme (``ledger/policy/packs/<scheme>.yaml``, read by
``infra.policy_files``), in the OpenFisca shape: per parameter a description, a unit, the R-id, a
``local_setting`` mark and ``values`` keyed by effective date, each with its clause reference. A
``null`` value ends a rule from its date. Parsing turns a pack into :class:`ParameterVersion`s
whose source carries the pack version and a content hash (the policy version); loading publishes
them as events. ``set_parameter`` amendments go through :func:`make_amendment`; packs and
amendments alike pass :func:`validate` before anything is added to a :class:`PolicyBook`, so a
refused one changes nothing (R-LYG-1: ``POLICY_FLOOR``).

The accepted names, their units and bounds are declared here in code (:data:`PARAMETER_SPECS`),
not read from the pack files: this module does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Mapping

from ledger.money import MoneyError, parse_money
from ledger.policy.params import ParameterVersion, PolicyBook, PolicyError, UnknownParameter
from ledger.values import Category

SHANGHAI_MEDICAL_AID = "shanghai.medical_aid"
CHANGNING_FOUR_LINKAGE = "changning.four_linkage"
CHANGNING_POST_HOC = "changning.post_hoc_procedure"
SHANGHAI_MUTUAL_AID = "shanghai.community_mutual_aid"
LIANYUNGANG_MEDICAL_AID = "lianyungang.medical_aid"

SCHEMES: tuple[str, ...] = (
    SHANGHAI_MEDICAL_AID,
    CHANGNING_FOUR_LINKAGE,
    CHANGNING_POST_HOC,
    SHANGHAI_MUTUAL_AID,
    LIANYUNGANG_MEDICAL_AID,
)

#: The schemes that apply in each place (seeds/README.md: the first four work together in
#: Changning; Lianyungang is another city's scheme).
JURISDICTIONS: dict[str, tuple[str, ...]] = {
    "shanghai.changning": (SHANGHAI_MEDICAL_AID, CHANGNING_FOUR_LINKAGE, CHANGNING_POST_HOC, SHANGHAI_MUTUAL_AID),
    "shanghai": (SHANGHAI_MEDICAL_AID, SHANGHAI_MUTUAL_AID),
    "lianyungang": (LIANYUNGANG_MEDICAL_AID,),
}

UNITS = frozenset({"rate", "yuan", "count", "bool", "text", "bands", "categories"})

INVALID_VALUE = "INVALID_VALUE"
POLICY_FLOOR = "POLICY_FLOOR"

ZERO = Decimal("0")
ONE = Decimal("1")


@dataclass(frozen=True)
class ParameterSpec:
    """What a parameter name accepts: its unit, its rule, and the bounds a value must keep.

    ``minimum``/``maximum`` are the bounds beyond a unit's own (rates in [0, 1], yuan and counts
    at least 0); ``bound_rule`` and ``bound_clause`` cite where a bound comes from.
    """

    name: str
    unit: str
    rule: str  # RULES.md R-id, or "§N" where RULES.md states the value without an R-id
    clause: str  # the seed clause of the rule (the pack's reference for its default)
    local_setting: bool = False  # a RULES.md **PARAMETER** default: a local setting, not policy
    minimum: Decimal | int | None = None
    maximum: Decimal | int | None = None
    bound_rule: str = ""
    bound_clause: str = ""
    nullable: bool = False  # may be unset (None) by an amendment
    choices: tuple[str, ...] = ()

    @property
    def scheme(self) -> str:
        return _scheme_of(self.name)


def _scheme_of(name: str) -> str:
    for scheme in SCHEMES:
        if name.startswith(scheme + "."):
            return scheme
    return ""


def _build_specs() -> dict[str, ParameterSpec]:
    specs: list[ParameterSpec] = []

    def add(name: str, unit: str, rule: str, clause: str, **kw: Any) -> None:
        specs.append(ParameterSpec(name=name, unit=unit, rule=rule, clause=clause, **kw))

    # --- shanghai.medical_aid: RULES §4, [001 二(二)4] -------------------------------------
    sh = SHANGHAI_MEDICAL_AID
    add(f"{sh}.in_force", "bool", "§4", "[001 通知]")
    add(f"{sh}.categories", "categories", "§4", "[001 二(一); 001 四]")
    # (category, inpatient local?, outpatient local?, clause)
    sh_categories = (
        # [001 二(二)4] 特殊救济对象等医疗救助标准另行制定: a local setting, 100% by default (the figure
        # of 沪医保规〔2022〕12号 as cited in [000 第四条(二)1]).
        ("special_relief", True, True, "[001 二(二)4]"),
        ("destitute", True, True, "[001 二(一)]"),
        ("dibao", False, False, "[001 二(二)4]"),
        ("low_income", False, False, "[001 二(二)4]"),
        ("expenditure_poor_1", True, True, "[001 二(二)4]"),
        ("expenditure_poor_2", True, True, "[001 二(二)4]"),
        ("orphan", False, False, "[001 二(二)4]"),
        ("child_in_distress", False, False, "[001 二(二)4]"),
    )
    for cat, in_local, out_local, clause in sh_categories:
        if cat.startswith("expenditure_poor_"):
            # Expenditure-poor inpatient aid "按照50%－70%的水平予以救助" [001 二(二)4] (classes: [001 四]).
            add(f"{sh}.rate.inpatient.{cat}", "rate", "§4", clause, local_setting=in_local,
                minimum=Decimal("0.50"), maximum=Decimal("0.70"), bound_rule="§4",
                bound_clause="[001 二(二)4] 按照50%－70%的水平予以救助")
        else:
            add(f"{sh}.rate.inpatient.{cat}", "rate", "§4", clause, local_setting=in_local)
        add(f"{sh}.rate.outpatient.{cat}", "rate", "§4", clause, local_setting=out_local)
    for cat, *_ in sh_categories:
        # R-CAP-1: annual limits per category, figures left to the city [001 二(二)4].
        add(f"{sh}.annual_cap.inpatient.{cat}", "yuan", "R-CAP-1", "[001 二(二)4]", local_setting=True)
        add(f"{sh}.annual_cap.outpatient.{cat}", "yuan", "R-CAP-1", "[001 二(二)4]", local_setting=True)
    add(f"{sh}.funding.city_share", "rate", "§4", "[000 第六条]")
    # R-INS-2: fixed subsidy for low-income 60+, standard not yet set [001 二(二)1].
    add(f"{sh}.enrolment_subsidy.low_income_60plus", "yuan", "R-INS-2", "[001 二(二)1]", local_setting=True)

    # --- changning.four_linkage: RULES §5 [000] --------------------------------------------
    fl = CHANGNING_FOUR_LINKAGE
    add(f"{fl}.in_force", "bool", "§5", "[000 第八条]")
    add(f"{fl}.categories", "categories", "§5", "[000 第二条(一)]")
    add(f"{fl}.coverage.special_relief", "rate", "R-4L-2", "[000 第四条(二)1]")
    add(f"{fl}.coverage.community_health_centre", "rate", "R-4L-2", "[000 第四条(二)2]")
    add(f"{fl}.coverage.hospital", "rate", "R-4L-2", "[000 第四条(二)2]")
    add(f"{fl}.monthly_cap.community_outpatient", "yuan", "R-4L-4", "[000 第四条(三)]", local_setting=True)
    add(f"{fl}.monthly_visits.community_outpatient", "count", "R-4L-4", "[000 第四条(三)]", local_setting=True)
    add(f"{fl}.social_help.grants_per_period", "count", "R-4L-5", "[000 第四条(四)]")
    add(f"{fl}.funding.city_share", "rate", "R-4L-3", "[000 第六条]")

    # --- changning.post_hoc_procedure: RULES §6 [002] --------------------------------------
    ph = CHANGNING_POST_HOC
    day = dict(minimum=1, maximum=31, bound_clause="a day of the month")
    add(f"{ph}.in_force", "bool", "§6", "[002 通知]")
    add(f"{ph}.claim_window_months", "count", "R-PH-5", "[002 4.3]", minimum=1, maximum=120, bound_rule="R-PH-5",
        bound_clause="[002 4.3] a claim window of whole months (1 to 120)")
    add(f"{ph}.critical_illness_evidence", "text", "R-INS-5", "[002 3.6]",
        choices=("settlement_slip", "receipt_marking"))
    add(f"{ph}.auto_claim_day", "count", "R-PH-3", "[002 3.3]", bound_rule="R-PH-3", **day)
    add(f"{ph}.summary_due_day", "count", "R-PH-6", "[002 3.5]", bound_rule="R-PH-6", **day)
    add(f"{ph}.payment_due_day", "count", "R-PH-6", "[002 3.5]", bound_rule="R-PH-6", **day)

    # --- shanghai.community_mutual_aid: RULES §8 [003 五] ----------------------------------
    ma = SHANGHAI_MUTUAL_AID
    add(f"{ma}.in_force", "bool", "§8", "[003 七 末段]")
    add(f"{ma}.categories", "categories", "§8", "[003 二; 003 三]")
    add(f"{ma}.outpatient.allowance", "yuan", "R-MA-1", "[003 五(一)]")
    add(f"{ma}.outpatient.cash_threshold", "yuan", "R-MA-1", "[003 五(二)]")
    for level in (1, 2, 3):
        add(f"{ma}.outpatient.rate.level_{level}", "rate", "R-MA-1", "[003 五(二)]")
    add(f"{ma}.inpatient.rate.with_home_insurance", "rate", "R-MA-2", "[003 五(三)]")
    add(f"{ma}.inpatient.rate.without_home_insurance", "rate", "R-MA-2", "[003 五(三)]")
    add(f"{ma}.inpatient.threshold.without_home_insurance", "yuan", "R-MA-2", "[003 五(三)]")

    # --- lianyungang.medical_aid: RULES §9 [004 五] ----------------------------------------
    ly = LIANYUNGANG_MEDICAL_AID
    add(f"{ly}.in_force", "bool", "§9", "[004 通知]")
    add(f"{ly}.categories", "categories", "§9", "[004 二(一); 004 二(二)]")
    # R-LYG-1: key recipients "按照不低于70%的比例给予救助" [004 五(一)].
    add(f"{ly}.rate.key", "rate", "R-LYG-1", "[004 五(一)]", local_setting=True,
        minimum=Decimal("0.70"), bound_rule="R-LYG-1", bound_clause="[004 五(一)] 按照不低于70%的比例给予救助")
    add(f"{ly}.basic_insurance_cap", "yuan", "R-LYG-2", "[004 五(一)]", local_setting=True)
    # R-LYG-2: inpatient cap "原则上不低于当地城乡基本医疗保险封顶线的50%" [004 五(一)].
    add(f"{ly}.annual_cap.key_share", "rate", "R-LYG-2", "[004 五(一)]",
        minimum=Decimal("0.50"), bound_rule="R-LYG-2",
        bound_clause="[004 五(一)] 住院费用年度最高救助限额原则上不低于当地城乡基本医疗保险封顶线的50%")
    # R-LYG-3: banded rates, higher for higher self-pay, below the key rate [004 五(二)].
    add(f"{ly}.bands.extended", "bands", "R-LYG-3", "[004 五(二)]", local_setting=True,
        bound_rule="R-LYG-3", bound_clause="[004 五(二)] 个人自负费用数额越大，救助比例越高")
    add(f"{ly}.annual_cap.extended", "yuan", "R-LYG-3", "[004 五(二)]", local_setting=True, nullable=True)
    # R-INS-2: dibao, destitute and orphans have the resident contribution paid in full; for the
    # others the county sets the subsidy [004 四(一)] (a local setting, 0 until set).
    add(f"{ly}.enrolment_subsidy.other", "yuan", "R-INS-2", "[004 四(一)]", local_setting=True)

    return {s.name: s for s in specs}


#: Every accepted full parameter name. ``set_parameter`` takes exactly these names.
PARAMETER_SPECS: dict[str, ParameterSpec] = _build_specs()


def spec_for(name: str) -> ParameterSpec:
    """The spec of a full dotted parameter name; :class:`UnknownParameter` if there is none."""
    try:
        return PARAMETER_SPECS[name]
    except (KeyError, TypeError):
        raise UnknownParameter(str(name)) from None


# --- values ---------------------------------------------------------------------------------


def _invalid(name: str, message: str) -> PolicyError:
    return PolicyError(f"{name}: {message}", code=INVALID_VALUE, field=name)


_PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def _decimal(name: str, raw: object) -> Decimal:
    if isinstance(raw, bool) or raw is None:
        raise _invalid(name, f"expected a decimal number, got {raw!r}")
    try:
        if isinstance(raw, Decimal):
            value = raw
        elif isinstance(raw, float):
            value = Decimal(repr(raw))  # 0.9 -> Decimal("0.9"), never the binary expansion
        elif isinstance(raw, int):
            value = Decimal(raw)
        elif isinstance(raw, str):
            text = raw.strip()
            if not _PLAIN_NUMBER.fullmatch(text):
                # Decimal() takes any Unicode digit ("０.５", "٠.٥"), exponents and underscores:
                # a parameter is written as money is, in plain digits (RULES.md preamble)
                raise _invalid(name, f"{raw!r} is not a plain number (digits 0-9, an optional sign and decimal point)")
            value = Decimal(text)
        else:
            raise _invalid(name, f"expected a decimal number, got {raw!r}")
    except InvalidOperation:
        raise _invalid(name, f"{raw!r} is not a number") from None
    if not value.is_finite():
        raise _invalid(name, f"{raw!r} is not a finite number")
    return value


_CENT = Decimal("0.01")


def _rate(name: str, raw: object) -> Decimal:
    """A rate keeps its exact value, shown with at least two places (YAML's 0.90 reads as 0.9)."""
    value = _decimal(name, raw)
    exponent = value.as_tuple().exponent
    return value.quantize(_CENT) if isinstance(exponent, int) and exponent > -2 else value


def _yuan(name: str, raw: object) -> Decimal:
    # Negative amounts parse here so that validate() refuses them with POLICY_FLOOR.
    try:
        return parse_money(raw, field=name, allow_negative=True)
    except MoneyError as exc:
        raise _invalid(name, str(exc)) from None


def _count(name: str, raw: object) -> int:
    if isinstance(raw, bool) or raw is None:
        raise _invalid(name, f"expected a whole number, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, (float, Decimal)):
        try:
            if raw == int(raw):
                return int(raw)
        except (ValueError, OverflowError):
            pass
    elif isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
        if _PLAIN_NUMBER.fullmatch(text) and Decimal(text) == Decimal(text).to_integral_value():
            return int(Decimal(text))  # 6.0 as written in a file is the count 6
    raise _invalid(name, f"expected a whole number, got {raw!r}")


def _bool(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise _invalid(name, f"expected true or false, got {raw!r}")


def _text(name: str, raw: object, choices: tuple[str, ...]) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _invalid(name, f"expected text, got {raw!r}")
    value = raw.strip()
    if choices and value not in choices:
        raise _invalid(name, f"{value!r} is not one of {', '.join(choices)}")
    return value


_CATEGORY_IDS = frozenset(c.value for c in Category)


def _categories(name: str, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise _invalid(name, f"expected a non-empty list of categories, got {raw!r}")
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str) or item not in _CATEGORY_IDS:
            raise _invalid(name, f"{item!r} is not a recipient category (RULES.md §2)")
        if item in out:
            raise _invalid(name, f"category {item!r} is listed twice")
        out.append(item)
    return tuple(out)


def _bands(name: str, raw: object) -> tuple[dict[str, Any], ...]:
    """Shape only; ordering and rates are bounds, checked by :func:`validate` (R-LYG-3)."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise _invalid(name, f"expected a non-empty list of bands {{upto, rate}}, got {raw!r}")
    out = []
    for i, band in enumerate(raw):
        if not isinstance(band, Mapping) or set(band) != {"upto", "rate"}:
            raise _invalid(name, f"band {i + 1} must have exactly the keys upto and rate, got {band!r}")
        upto = None if band["upto"] is None else _yuan(name, band["upto"])
        out.append({"upto": upto, "rate": _rate(name, band["rate"])})
    return tuple(out)


def _coerce(spec: ParameterSpec, raw: object) -> Any:
    name, unit = spec.name, spec.unit
    if raw is None:
        if spec.nullable:
            return None
        raise _invalid(name, "a value is required (only a value that may be unset takes null)")
    if unit == "rate":
        return _rate(name, raw)
    if unit == "yuan":
        return _yuan(name, raw)
    if unit == "count":
        return _count(name, raw)
    if unit == "bool":
        return _bool(name, raw)
    if unit == "text":
        return _text(name, raw, spec.choices)
    if unit == "categories":
        return _categories(name, raw)
    if unit == "bands":
        return _bands(name, raw)
    raise _invalid(name, f"unknown unit {unit!r}")  # pragma: no cover - specs are declared above


def coerce_value(name: str, raw: object) -> Any:
    """The typed value of ``raw`` for parameter ``name`` (as a ``set_parameter`` amendment gives it).

    ``raw`` may be str, int, float, bool, list or None. Unknown name: :class:`UnknownParameter`;
    a value of the wrong type: ``PolicyError(code="INVALID_VALUE", field=name)``. Bounds and floors
    are not checked here but by :func:`validate`.
    """
    return _coerce(spec_for(name), raw)


# --- bounds and floors ----------------------------------------------------------------------


def _floor(spec: ParameterSpec, message: str, *, rule: str = "", clause: str = "") -> PolicyError:
    rule = rule or spec.bound_rule or spec.rule
    clause = clause or spec.bound_clause or spec.clause
    return PolicyError(f"{spec.name}: {message} ({rule}, {clause})", code=POLICY_FLOOR, rule=rule, field=spec.name)


def _check_rate(spec: ParameterSpec, value: Decimal, what: str = "") -> None:
    """Every rate is a share of an amount: in [0, 1] (RULES.md preamble)."""
    label = f"{what} rate {value}" if what else f"rate {value}"
    if not ZERO <= value <= ONE:
        raise _floor(spec, f"{label} is outside [0, 1]", rule=spec.rule, clause="a rate is a share of the amount")


_TYPES: dict[str, tuple[type, ...]] = {
    "rate": (Decimal,),
    "yuan": (Decimal,),
    "count": (int,),
    "bool": (bool,),
    "text": (str,),
    "categories": (tuple,),
    "bands": (tuple,),
}


def _check_bounds(spec: ParameterSpec, value: Any) -> None:
    if value is None:
        if not spec.nullable:
            raise _invalid(spec.name, "a value is required")
        return
    if not isinstance(value, _TYPES[spec.unit]) or (spec.unit == "count" and isinstance(value, bool)):
        raise _invalid(spec.name, f"a {spec.unit} parameter cannot hold {value!r} (coerce it first)")
    if spec.unit == "rate":
        _check_rate(spec, value)
    elif spec.unit == "yuan" and value < 0:
        raise _floor(spec, f"{value} yuan is below the floor 0.00", rule=spec.rule, clause="an amount is never negative")
    elif spec.unit == "count" and value < 0:
        raise _floor(spec, f"{value} is below the floor 0", rule=spec.rule, clause="a count is never negative")
    elif spec.unit == "bands":
        _check_bands(spec, value)
    if spec.minimum is not None and value < spec.minimum:
        raise _floor(spec, f"{value} is below the floor {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise _floor(spec, f"{value} is above the ceiling {spec.maximum}")


def _check_bands(spec: ParameterSpec, bands: tuple[dict[str, Any], ...]) -> None:
    """R-LYG-3 [004 五(二)]: bands ascend (only the top one open), rates rise with self-pay."""
    previous: dict[str, Any] | None = None
    for i, band in enumerate(bands):
        upto, rate = band["upto"], band["rate"]
        _check_rate(spec, rate, what=f"band {i + 1}")
        if upto is not None and upto <= 0:
            raise _floor(spec, f"band {i + 1} ends at {upto}, not above 0")
        if upto is None and i != len(bands) - 1:
            raise _floor(spec, f"band {i + 1} is open (upto null) but is not the last band")
        if upto is not None and i == len(bands) - 1:
            raise _floor(spec, f"the last band ends at {upto}: the top band must be open (upto null)")
        if previous is not None:
            if upto is not None and upto <= previous["upto"]:
                raise _floor(spec, f"bands are not ascending: band {i + 1} ends at {upto}, after {previous['upto']}")
            if rate <= previous["rate"]:
                raise _floor(spec, f"band {i + 1} rate {rate} is not higher than the band below ({previous['rate']})")
        previous = band


@dataclass(frozen=True)
class _CrossCheck:
    """A bound between parameters, checked on every date either of them could change."""

    names: tuple[str, ...]
    check: Callable[[PolicyBook, date, str], None]


def _bands_below_key(book: PolicyBook, on: date, field: str) -> None:
    """R-LYG-3 [004 五(二)]: every extended band's rate is below the key rate in force (R-LYG-1)."""
    key = book.lookup(f"{LIANYUNGANG_MEDICAL_AID}.rate.key", on)
    bands = book.lookup(f"{LIANYUNGANG_MEDICAL_AID}.bands.extended", on)
    if key is None or bands is None or key.value is None or bands.value is None:
        return
    for i, band in enumerate(bands.value):
        if band["rate"] >= key.value:
            top = "open top band" if band["upto"] is None else f"band up to {band['upto']}"
            raise PolicyError(
                f"{field}: on {on.isoformat()} the extended {top} (band {i + 1}) rate {band['rate']} is not below "
                f"the key rate {key.value} in force (R-LYG-3, [004 五(二)] 原则上重点医疗救助对象的救助比例高于拓展医疗救助对象)",
                code=POLICY_FLOOR,
                rule="R-LYG-3",
                field=field,
            )


_CROSS_CHECKS: tuple[_CrossCheck, ...] = (
    _CrossCheck((f"{LIANYUNGANG_MEDICAL_AID}.rate.key", f"{LIANYUNGANG_MEDICAL_AID}.bands.extended"), _bands_below_key),
)


def _boundaries(versions: Iterable[ParameterVersion]) -> set[date]:
    """The dates on which any of these versions starts or stops: values are constant in between."""
    out: set[date] = set()
    for v in versions:
        out.add(v.effective_from)
        if v.effective_to is not None:
            out.add(v.effective_to + timedelta(days=1))
    return out


def validate(book: PolicyBook, candidate: list[ParameterVersion]) -> None:
    """Refuse candidate versions that break a bound or a floor, on any date they cover.

    Checked against the book plus the candidates (cross-parameter bounds use the values in force
    on the same dates). Raises ``PolicyError(code="POLICY_FLOOR", rule=..., field=...)``; the book
    is never touched, so a refused pack or amendment changes nothing. Bounds: every rate in
    [0, 1]; yuan and counts ≥ 0; ``lianyungang.medical_aid.rate.key`` ≥ 0.70 (R-LYG-1
    [004 五(一)]); ``annual_cap.key_share`` ≥ 0.50 (R-LYG-2 [004 五(一)]); ``bands.extended``
    ascending, rates rising and each below the key rate in force (R-LYG-3 [004 五(二)]);
    ``shanghai.medical_aid.rate.inpatient.expenditure_poor_{1,2}`` in [0.50, 0.70] (§4
    [001 二(二)4]).
    """
    candidate = list(candidate)
    for v in candidate:
        spec = spec_for(v.name)
        if not isinstance(v.effective_from, date) or isinstance(v.effective_from, datetime):
            raise _invalid(v.name, f"effective_from must be a date, got {v.effective_from!r}")
        if v.effective_to is not None and v.effective_to < v.effective_from:
            raise _invalid(v.name, f"effective_to {v.effective_to} is before effective_from {v.effective_from}")
        _check_bounds(spec, v.value)

    combined: PolicyBook | None = None
    for cross in _CROSS_CHECKS:
        touched = [v for v in candidate if v.name in cross.names]
        if not touched:
            continue
        if combined is None:
            combined = PolicyBook(list(book.versions) + candidate)
        edges = _boundaries(v for v in combined.versions if v.name in cross.names)
        for v in touched:
            for on in sorted(d for d in edges if v.covers(d)):
                cross.check(combined, on, v.name)


def publish(book: PolicyBook, versions: Iterable[ParameterVersion]) -> None:
    """Validate, then add: either every version is added or none is."""
    versions = list(versions)
    validate(book, versions)
    book.extend(versions)


# --- packs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pack:
    """One parsed policy pack: its identity, its policy version (content hash) and its versions."""

    scheme: str
    title: str
    document: str
    version: str
    content_hash: str
    versions: list[ParameterVersion]
    seed: str = ""
    issued: date | None = None
    published_at: datetime | None = None

    @property
    def source(self) -> str:
        return pack_source(self.scheme, self.version, self.content_hash)


def pack_source(scheme: str, version: str, content_hash: str) -> str:
    return f"pack:{scheme}@{version}+{content_hash}"


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {_canonical_key(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (date, datetime)):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)
    return obj


def _canonical_key(key: Any) -> str:
    return key.isoformat() if isinstance(key, (date, datetime)) else str(key)


def content_hash(data: Mapping[str, Any]) -> str:
    """The pack's policy version: sha256 of its canonical JSON, first 12 hex digits."""
    text = json.dumps(_canonical(data), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _as_date(value: object, *, field: str) -> date:
    if isinstance(value, datetime):
        raise PolicyError(f"{field}: {value!r} is a time, not a date", code=INVALID_VALUE, field=field)
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise PolicyError(f"{field}: {value!r} is not a date (YYYY-MM-DD)", code=INVALID_VALUE, field=field)


def _required_text(data: Mapping[str, Any], key: str, *, field: str, hint: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{field}: {key} must be non-empty text{hint}, got {value!r}", field=field)
    return value.strip()


def parse_pack(data: dict, *, published_at: datetime) -> Pack:
    """Parse one pack's data (as loaded from its YAML) into versions published at ``published_at``.

    Each dated value runs to the day before the next one (or stays open); a ``null`` value emits
    no version but closes the one before it. The pack must also keep its own bounds and floors
    (:func:`validate` on an empty book). A bad pack raises :class:`PolicyError` naming the
    parameter in ``field``.
    """
    if not isinstance(data, Mapping):
        raise PolicyError(f"a policy pack is a mapping, got {type(data).__name__}", field="")
    scheme = _required_text(data, "scheme", field="scheme")
    if scheme not in SCHEMES:
        raise PolicyError(f"unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})", code="UNKNOWN_SCHEME", field="scheme")
    title = _required_text(data, "title", field=f"{scheme}.title")
    document = _required_text(data, "document", field=f"{scheme}.document")
    version = _required_text(data, "version", field=f"{scheme}.version", hint=' (quote it: version: "2026.1")')
    seed = str(data.get("seed") or "")
    issued = _as_date(data["issued"], field=f"{scheme}.issued") if data.get("issued") is not None else None
    parameters = data.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        raise PolicyError(f"{scheme}: parameters must be a non-empty mapping", field=f"{scheme}.parameters")

    digest = content_hash(data)
    source = pack_source(scheme, version, digest)
    versions: list[ParameterVersion] = []
    for short, entry in parameters.items():
        name = f"{scheme}.{short}"
        spec = spec_for(name)
        versions.extend(_parse_parameter(spec, entry, published_at=published_at, source=source))

    validate(PolicyBook(), versions)
    return Pack(
        scheme=scheme,
        title=title,
        document=document,
        version=version,
        content_hash=digest,
        versions=versions,
        seed=seed,
        issued=issued,
        published_at=published_at,
    )


def _parse_parameter(spec: ParameterSpec, entry: object, *, published_at: datetime, source: str) -> list[ParameterVersion]:
    name = spec.name
    if not isinstance(entry, Mapping):
        raise PolicyError(f"{name}: expected a mapping with description, unit, rule, local_setting, values", field=name)
    _required_text(entry, "description", field=name)
    if entry.get("unit") != spec.unit:
        raise PolicyError(f"{name}: unit must be {spec.unit!r}, got {entry.get('unit')!r}", field=name)
    if entry.get("rule") != spec.rule:
        raise PolicyError(f"{name}: rule must be {spec.rule!r}, got {entry.get('rule')!r}", field=name)
    if entry.get("local_setting") is not spec.local_setting:
        raise PolicyError(
            f"{name}: local_setting must be {str(spec.local_setting).lower()} (RULES.md PARAMETER marks), "
            f"got {entry.get('local_setting')!r}",
            field=name,
        )
    values = entry.get("values")
    if not isinstance(values, Mapping) or not values:
        raise PolicyError(f"{name}: values must be a non-empty mapping of date to {{value, reference}}", field=name)

    dated: list[tuple[date, Any, str]] = []
    for key, item in values.items():
        start = _as_date(key, field=name)
        if not isinstance(item, Mapping) or "value" not in item:
            raise PolicyError(f"{name}: the value from {start} must be {{value: ..., reference: ...}}", field=name)
        reference = item.get("reference")
        if not isinstance(reference, str) or not reference.strip():
            raise PolicyError(f"{name}: the value from {start} has no reference (seed file and clause)", field=name)
        dated.append((start, item["value"], reference.strip()))
    dated.sort(key=lambda d: d[0])
    for (a, _, _), (b, _, _) in zip(dated, dated[1:]):
        if a == b:
            raise PolicyError(f"{name}: two values from {a}", field=name)

    out: list[ParameterVersion] = []
    for i, (start, raw, reference) in enumerate(dated):
        if raw is None:
            continue  # the rule ends (or stays unset) from this date
        end = dated[i + 1][0] - timedelta(days=1) if i + 1 < len(dated) else None
        out.append(
            ParameterVersion(
                name=name,
                value=_coerce(spec, raw),
                effective_from=start,
                effective_to=end,
                reference=reference,
                local_setting=spec.local_setting,
                published_at=published_at,
                source=source,
            )
        )
    return out


# --- amendments -----------------------------------------------------------------------------


def make_amendment(
    name: str,
    raw_value: object,
    effective_from: date,
    effective_to: date | None,
    published_at: datetime,
    reference: str = "amendment",
) -> ParameterVersion:
    """A ``set_parameter`` amendment: a later publication that wins on the dates it covers.

    The value is coerced as :func:`coerce_value` does; bounds are left to :func:`validate`, which
    the caller runs (or :func:`publish`) before adding it to a book.
    """
    spec = spec_for(name)
    value = _coerce(spec, raw_value)
    start = _as_date(effective_from, field=name)
    end = None if effective_to is None else _as_date(effective_to, field=name)
    if end is not None and end < start:
        raise _invalid(name, f"effective_to {end} is before effective_from {start}")
    return ParameterVersion(
        name=name,
        value=value,
        effective_from=start,
        effective_to=end,
        reference=reference,
        local_setting=spec.local_setting,
        published_at=published_at,
        source="amendment",
    )
