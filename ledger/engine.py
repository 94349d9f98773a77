"""The decision engine: what each decided expense of one recipient should get.

Pure: facts and policy in, assessments out. The same function decides a new claim (with the new
expenses added to the decided set) and recomputes "due" for clearing (R-CLR-2), so a decision
and its later recomputation can never disagree in method, only in knowledge.

Decided expenses are processed in one canonical order per recipient: invoice date, then service
date, then the order they were first decided, then the order listed in their claim (SCENARIOS.md:
"expenses are assessed in invoice-date order"). Annual caps (R-CAP-1..3), the 四医联动 monthly
ceiling and visit count (R-4L-4), the mutual-aid year (R-MA-1, R-MA-2) and the Lianyungang bands
(R-LYG-3) are consumed in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ledger import errors, traces
from ledger.eligibility import Holding, categories_on, category_periods, insured_on, mutual_aid_year
from ledger.facts import DecisionRef, ExpenseFacts, Knowledge, city_read
from ledger.money import ZERO, clamp0, fmt, money, split_city_district
from ledger.policy.params import ParameterVersion, PolicyBook
from ledger.values import CATEGORY_PRECEDENCE, FacilityKind, Fund, Scheme, VisitType, receipt_identity

MONEY_SCHEMES = (
    Scheme.SHANGHAI_MEDICAL_AID.value,
    Scheme.FOUR_LINKAGE.value,
    Scheme.COMMUNITY_MUTUAL_AID.value,
    Scheme.LIANYUNGANG.value,
)


# --------------------------------------------------------------------------- results


@dataclass
class SchemePart:
    scheme: str
    amount: Decimal
    by_fund: dict[str, Decimal]
    kind: str  # annual row kind: "inpatient" | "outpatient"
    counts_against_cap: bool
    trace: dict[str, Any]


@dataclass
class Assessment:
    expense_id: str
    granted: bool
    self_pay: Decimal
    category: str | None = None
    parts: list[SchemePart] = field(default_factory=list)
    code: str | None = None
    rule: str | None = None
    message: str | None = None
    suspension_started: date | None = None
    trace: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> Decimal:
        return money(sum((p.amount for p in self.parts), ZERO))

    @property
    def by_scheme(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for p in self.parts:
            out[p.scheme] = out.get(p.scheme, ZERO) + p.amount
        return out

    @property
    def by_fund(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for p in self.parts:
            for f, a in p.by_fund.items():
                out[f] = out.get(f, ZERO) + a
        return out

    def rejection(self) -> errors.Rejected:
        cls = _REJECTIONS.get(self.code or "", errors.Rejected)
        return cls(self.message or "", code=self.code, rule=self.rule)

    def summary(self) -> dict[str, Any]:
        """The decision as stored in events: resolved amounts and the full explanation."""
        return {
            "expense": self.expense_id,
            "granted": self.granted,
            "code": self.code,
            "rule": self.rule,
            "message": self.message,
            "category": self.category,
            "self_pay": fmt(self.self_pay),
            "total": fmt(self.total),
            "by_scheme": {k: fmt(v) for k, v in self.by_scheme.items()},
            "by_fund": {k: fmt(v) for k, v in self.by_fund.items()},
            "parts": [
                {
                    "scheme": p.scheme,
                    "amount": fmt(p.amount),
                    "by_fund": {k: fmt(v) for k, v in p.by_fund.items()},
                    "kind": p.kind,
                    "counts_against_cap": p.counts_against_cap,
                }
                for p in self.parts
            ],
            "suspension_started": self.suspension_started.isoformat() if self.suspension_started else None,
            "trace": self.trace,
        }


_REJECTIONS = {
    c.code: c
    for c in (
        errors.NotARecipient,
        errors.NotInsured,
        errors.NotEligible,
        errors.Duplicate,
        errors.DeadlinePassed,
        errors.EvidenceMissing,
        errors.NotYetSettled,
    )
}


class _Refusal(Exception):
    def __init__(self, code: str, rule: str, message: str):
        super().__init__(message)
        self.code, self.rule, self.message = code, rule, message


# --------------------------------------------------------------------------- running state


@dataclass
class PassState:
    caps_used: dict[tuple[str, int, str], Decimal] = field(default_factory=dict)
    caps_value: dict[tuple[str, int, str], Decimal | None] = field(default_factory=dict)
    month: dict[tuple[int, int], list] = field(default_factory=dict)  # [aid, visits]
    suspension: tuple[str, datetime] | None = None  # (expense id that started it, its decision time)
    reopened: datetime | None = None  # the district review whose restart of the month count the pass has applied
    ma_outpatient: dict[int, list] = field(default_factory=dict)  # year -> [allowance used, cash]
    ma_inpatient: dict[int, tuple[Decimal, Decimal]] = field(default_factory=dict)  # year -> (self-pay, total)
    lyg_cumulative: dict[int, Decimal] = field(default_factory=dict)

    def copy(self) -> "PassState":
        """An independent copy for one option (R-CAT-2: each category is tried on its own copy).
        Every value is immutable (Decimal, int, tuple) and the two-item lists are replaced, never
        changed in place, so copying the dicts is a deep copy, at a fraction of ``copy.deepcopy``'s
        cost (ADR 0017)."""
        return PassState(
            dict(self.caps_used),
            dict(self.caps_value),
            {k: list(v) for k, v in self.month.items()},
            self.suspension,
            self.reopened,
            {k: list(v) for k, v in self.ma_outpatient.items()},
            dict(self.ma_inpatient),
            dict(self.lyg_cumulative),
        )


class Policy:
    """Parameter look-ups that remember what they used, for the explanation."""

    def __init__(self, book: PolicyBook):
        self.book = book
        self.used: dict[int, ParameterVersion] = {}  # by identity: the versions the pass looked up

    def get(self, scheme: str, name: str, on: date) -> ParameterVersion | None:
        version = self.book.lookup(f"{scheme}.{name}", on)
        if version is not None:
            self.used[id(version)] = version
        return version

    def value(self, scheme: str, name: str, on: date, default: Any = None) -> Any:
        version = self.get(scheme, name, on)
        return default if version is None or version.value is None else version.value

    def need(self, scheme: str, name: str, on: date) -> ParameterVersion:
        version = self.get(scheme, name, on)
        if version is None or version.value is None:
            raise _Refusal("NOT_ELIGIBLE", "R-TIME-1", f"no value of {scheme}.{name} in force on {on}")
        return version

    def in_force(self, scheme: str, on: date) -> bool:
        return bool(self.value(scheme, "in_force", on, False))

    def categories(self, scheme: str, on: date) -> tuple[str, ...]:
        return tuple(self.value(scheme, "categories", on, ()) or ())


def _pv(version: ParameterVersion | None) -> dict[str, Any] | None:
    """A parameter version as a decision's trace stores it: its key and the value applied
    (ledger.traces; the PolicyLedger at the decision's policy version holds the rest)."""
    return None if version is None else traces.ref(version)


# --------------------------------------------------------------------------- the schemes


def _city_aid(pol: Policy, k: Knowledge, e: ExpenseFacts, h: Holding, self_pay: Decimal, st: PassState) -> SchemePart:
    """Shanghai municipal medical aid [001 二(二)]: rate on self-pay by category and visit type,
    no deductible (R-CAP-1 [001 二(二)4]), bounded by the annual limit of the invoice year
    (R-CAP-2 [002 4.3]); the expense that would cross it gets exactly what remains (R-CAP-3)."""
    scheme = Scheme.SHANGHAI_MEDICAL_AID.value
    on, kind = e.service_date, e.cap_kind
    rate_v = pol.need(scheme, f"rate.{kind}.{h.category}", on)
    raw = money(self_pay * rate_v.value)
    # R-CAP-2 [002 4.3 按发票日期所在年度]: the cap year is the invoice date's calendar year, and
    # the limit that bounds it is the annual_cap in force on the invoice date (rates still follow
    # the service date, R-TIME-1): a December visit invoiced in January counts against, and is
    # bounded by, the new year's limit.
    cap_v = pol.need(scheme, f"annual_cap.{kind}.{h.category}", e.invoice_date)
    bucket = (scheme, e.invoice_date.year, kind)
    # R-CAP-4 [001; 000 第七条]: the city scheme's limits are the person's, city-wide: a bucket first
    # used here starts from what the year already used in the district the person moved from.
    carried = k.carried_caps.get(bucket, ZERO)
    here = st.caps_used.get(bucket, carried)
    # R-CAP-4: and, where the district reads the city view (ADR 0020), what the other districts
    # used, as the decision of this expense read it and recorded it (never re-read). It bounds
    # this expense only: the pass's own running usage stays this district's (plus carried).
    elsewhere, city_trace = city_read(k.city_block(e.id), e.id, bucket) or (ZERO, None)
    used = here + elsewhere
    remaining = clamp0(cap_v.value - used)
    amount = min(raw, remaining)
    st.caps_used[bucket] = here + amount
    st.caps_value[bucket] = cap_v.value
    share = pol.value(scheme, "funding.city_share", on, Decimal("0.5"))
    city, district = split_city_district(amount, share)
    rules = ["R-INS-3", "R-INS-4", "R-CAP-1", "R-CAP-2"] + (["R-CAP-3"] if amount < raw else []) + (["R-CAP-4"] if carried or elsewhere else [])
    if e.visit_type is VisitType.OUTPATIENT_CRITICAL and not e.critical_illness_related:
        rules.append("R-PH-8")
    return SchemePart(
        scheme,
        amount,
        {Fund.CITY.value: city, Fund.DISTRICT.value: district},
        kind,
        True,
        {
            "scheme": scheme,
            "zh": "市级医疗救助",
            "category": h.category,
            "base": fmt(self_pay),
            "rate": _pv(rate_v),
            "computed": fmt(raw),
            "cap": {
                "year": e.invoice_date.year,
                "kind": kind,
                "parameter": _pv(cap_v),
                "used_before": fmt(used),
                "remaining_before": fmt(remaining),
                "bound": amount < raw,
                **({"carried_in": fmt(carried), "carried_rule": "R-CAP-4 [001; 000 第七条]: used in the district the person moved from"} if carried else {}),
                **({"city_view": city_trace} if city_trace is not None else {}),
            },
            "amount": fmt(amount),
            "funding": {"rule": "[000 第六条] city:district 1:1, odd fen to the district", "city_share": str(share)},
            "rules": rules,
            "clause": "[001 二(二)4]",
        },
    )


def _four_linkage_eligible(e: ExpenseFacts) -> tuple[bool, str]:
    """R-4L-1 [000 第二条(二)2, 第四条(二)2]."""
    f = e.facility
    if f.kind is FacilityKind.PHARMACY:
        return False, "a pharmacy is never eligible (R-4L-1)"
    if f.out_of_province:
        return False, "a facility out of the province is not in Changning's own network (R-4L-1)"
    if not f.district_designated:
        return False, "not a district-designated facility of Changning's own network (R-4L-1)"
    if f.kind is FacilityKind.COMMUNITY_HEALTH_CENTRE:
        return True, "Changning community health centre (R-4L-1)"
    if f.level < 2:
        return False, "a hospital below secondary level (R-4L-1)"
    if not e.referred:
        return False, "district hospital without referral from a community health centre (R-4L-1)"
    if e.dispensing_only:
        return False, "outpatient dispensing at a hospital is excluded [000 第四条(二)2] (R-4L-1)"
    return True, "district-designated secondary+ hospital on referral (R-4L-1)"


def _four_linkage(
    pol: Policy, e: ExpenseFacts, h: Holding, self_pay: Decimal, city_amount: Decimal, st: PassState
) -> tuple[SchemePart | None, dict[str, Any], date | None]:
    """Changning 四医联动 (R-4L-2..4 [000 第四条]): total aid = self-pay × coverage; the district
    tops up what the city part leaves (R-4L-3, reference interpretation, ADR 0007)."""
    scheme = Scheme.FOUR_LINKAGE.value
    on = e.service_date
    note: dict[str, Any] = {"scheme": scheme, "zh": "四医联动"}
    ok, why = _four_linkage_eligible(e)
    note["eligibility"] = why
    if not ok:
        note["applied"] = False
        return None, note, None
    if st.suspension is not None:
        note["applied"] = False
        note["suspended"] = "eligibility suspended since an earlier expense passed the monthly limit (R-4L-4)"
        return None, note, None
    if h.category == "special_relief":
        cov_v = pol.need(scheme, "coverage.special_relief", on)
    elif e.at_community_centre:
        cov_v = pol.need(scheme, "coverage.community_health_centre", on)
    else:
        cov_v = pol.need(scheme, "coverage.hospital", on)
    total = money(self_pay * cov_v.value)
    top_up = clamp0(total - city_amount)
    rules = ["R-4L-1", "R-4L-2", "R-4L-3"]
    suspended_from = None
    monthly: dict[str, Any] | None = None
    if e.at_community_centre and e.cap_kind == "outpatient":
        ceiling_v = pol.need(scheme, "monthly_cap.community_outpatient", on)
        visits_v = pol.need(scheme, "monthly_visits.community_outpatient", on)
        key = (on.year, on.month)
        aid_before, visits_before = st.month.get(key, [ZERO, 0])
        visit_no = visits_before + 1
        monthly = {
            "month": f"{on.year:04d}-{on.month:02d}",
            "aid_before": fmt(aid_before),
            "visit": visit_no,
            "ceiling": _pv(ceiling_v),
            "visits_allowed": _pv(visits_v),
        }
        if visit_no > int(visits_v.value):
            monthly["outcome"] = "one visit more than allowed: no top-up, eligibility suspended (R-4L-4)"
            top_up = ZERO
            suspended_from = on
        elif aid_before + city_amount + top_up > ceiling_v.value:
            fits = clamp0(ceiling_v.value - aid_before - city_amount)
            top_up = min(top_up, fits)
            monthly["outcome"] = "monthly ceiling reached: top-up limited to what fits, eligibility suspended (R-4L-4)"
            suspended_from = on
        st.month[key] = [aid_before + city_amount + top_up, visit_no]
        rules.append("R-4L-4")
    note.update(
        {
            "applied": True,
            "category": h.category,
            "base": fmt(self_pay),
            "coverage": _pv(cov_v),
            "total": fmt(total),
            "city_part": fmt(city_amount),
            "top_up": fmt(top_up),
            "monthly": monthly,
            "funding": "top-up paid by the district alone [000 第六条]",
            "rules": rules,
            "clause": "[000 第四条(二)]",
        }
    )
    # [000 第六条] the top-up is the district's alone; the city's share is shown as zero.
    part = SchemePart(scheme, top_up, {Fund.CITY.value: ZERO, Fund.DISTRICT.value: top_up}, e.cap_kind, False, note)
    return part, note, suspended_from


def _mutual_aid(pol: Policy, k: Knowledge, e: ExpenseFacts, self_pay: Decimal, st: PassState) -> SchemePart:
    """Shanghai community medical mutual aid [003 五]. Outpatient (R-MA-1): a 150 allowance pays
    first, the participant pays cash up to 500 a year, above that the fund pays 85/80/75% by
    facility level. Inpatient (R-MA-2): 60% of the year's self-pay above the home deductible with
    employee insurance elsewhere, else 50% of the year's total above 1,000."""
    scheme = Scheme.COMMUNITY_MUTUAL_AID.value
    on = e.service_date
    joined = mutual_aid_year(k, on.year)
    if joined is None:
        raise _Refusal("NOT_ELIGIBLE", "R-MA-1", f"no mutual-aid contribution paid for {on.year} [003 三]")
    year = e.invoice_date.year
    if e.visit_type is VisitType.INPATIENT:
        # R-MA-2 [003 五(三)]: the year's two running figures, each inpatient expense adding to both, so that a
        # year whose expenses are judged under two contribution records (a December stay invoiced
        # in January) sums self-pay with self-pay and totals with totals.
        cum_self_pay, cum_total = st.ma_inpatient.get(year, (ZERO, ZERO))
        st.ma_inpatient[year] = (cum_self_pay + self_pay, cum_total + e.total)
        if joined.has_home_insurance:
            rate_v = pol.need(scheme, "inpatient.rate.with_home_insurance", on)
            threshold = joined.home_insurance_deductible
            base, cum_before = self_pay, cum_self_pay
            basis = "year's cumulative inpatient self-pay above the home deductible"
        else:
            rate_v = pol.need(scheme, "inpatient.rate.without_home_insurance", on)
            thr_v = pol.need(scheme, "inpatient.threshold.without_home_insurance", on)
            threshold = thr_v.value
            base, cum_before = e.total, cum_total
            basis = "year's cumulative inpatient total above the threshold"
        cum_after = cum_before + base
        added = clamp0(cum_after - threshold) - clamp0(cum_before - threshold)
        amount = money(added * rate_v.value)
        trace = {
            "scheme": scheme,
            "zh": "社区医疗互助帮困（住院）",
            "basis": basis,
            "base": fmt(base),
            "threshold": fmt(threshold),
            "cumulative_before": fmt(cum_before),
            "cumulative_after": fmt(cum_after),
            "above_threshold": fmt(added),
            "rate": _pv(rate_v),
            "amount": fmt(amount),
            "rules": ["R-MA-2"],
            "clause": "[003 五(三)]",
        }
    else:
        allowance_v = pol.need(scheme, "outpatient.allowance", on)
        threshold_v = pol.need(scheme, "outpatient.cash_threshold", on)
        rate_v = pol.need(scheme, f"outpatient.rate.level_{max(1, min(3, e.facility.level))}", on)
        used, cash = st.ma_outpatient.get(year, [ZERO, ZERO])
        # R-MA-1 [003 五(二)]: the outpatient base is the expense's in-scope amount (the plan's
        # participants are outside Shanghai basic insurance), not the self-pay of R-INS-3.
        base = e.in_scope
        from_allowance = min(base, clamp0(allowance_v.value - used))
        rest = base - from_allowance
        cash_part = min(rest, clamp0(threshold_v.value - cash))
        above = rest - cash_part
        from_fund = above * rate_v.value
        amount = money(from_allowance + from_fund)
        st.ma_outpatient[year] = [used + from_allowance, cash + cash_part]
        trace = {
            "scheme": scheme,
            "zh": "社区医疗互助帮困（门急诊）",
            "base": fmt(base),
            "allowance": _pv(allowance_v),
            "allowance_used_before": fmt(used),
            "from_allowance": fmt(from_allowance),
            "cash_threshold": _pv(threshold_v),
            "cash_before": fmt(cash),
            "participant_cash": fmt(cash_part + (above - money(from_fund))),
            "above_threshold": fmt(above),
            "rate": _pv(rate_v),
            "from_fund_above_threshold": fmt(money(from_fund)),
            "amount": fmt(amount),
            "rules": ["R-MA-1"],
            "clause": "[003 五(一)(二)]",
        }
    return SchemePart(scheme, amount, {Fund.MUTUAL_AID.value: amount}, e.cap_kind, False, trace)


def _bands(bands: Any, before: Decimal, after: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    """Marginal bands over a cumulative figure, like tax brackets (R-LYG-3)."""
    aid, lower, used = ZERO, ZERO, []
    for band in bands:
        upper = band["upto"]
        lo, hi = max(before, lower), after if upper is None else min(after, upper)
        if hi > lo:
            aid += (hi - lo) * band["rate"]
            used.append({"from": fmt(lo), "to": fmt(hi), "rate": str(band["rate"])})
        if upper is None:
            break
        lower = upper
    return aid, used


def _lianyungang(pol: Policy, e: ExpenseFacts, h: Holding, self_pay: Decimal, st: PassState) -> SchemePart:
    """Lianyungang medical aid [004 五]: key recipients at least 70% (R-LYG-1); extended recipients
    by bands below the key rate over the year's cumulative self-pay (R-LYG-3); inpatient annual
    cap of 50% of the basic insurance cap (R-LYG-2)."""
    scheme = Scheme.LIANYUNGANG.value
    on, year, kind = e.service_date, e.invoice_date.year, e.cap_kind
    trace: dict[str, Any] = {"scheme": scheme, "zh": "连云港医疗救助", "category": h.category, "subtype": h.subtype, "base": fmt(self_pay)}
    if h.category == "lyg_key":
        rate_v = pol.need(scheme, "rate.key", on)
        raw = money(self_pay * rate_v.value)
        trace.update({"rate": _pv(rate_v), "rules": ["R-LYG-1"], "clause": "[004 五(一)]"})
    else:
        bands_v = pol.need(scheme, "bands.extended", on)
        before = st.lyg_cumulative.get(year, ZERO)
        after = before + self_pay
        st.lyg_cumulative[year] = after
        aid, used = _bands(bands_v.value, before, after)
        raw = money(aid)
        trace.update(
            {
                "bands": _pv(bands_v),
                "cumulative_before": fmt(before),
                "cumulative_after": fmt(after),
                "bands_used": used,
                "rules": ["R-LYG-3"],
                "clause": "[004 五(二)]",
            }
        )
    amount, capped = raw, False
    if kind == "inpatient":
        # R-LYG-2 with R-CAP-2: the year's limit is the one in force on the invoice date.
        basic_v = pol.need(scheme, "basic_insurance_cap", e.invoice_date)
        share_v = pol.need(scheme, "annual_cap.key_share", e.invoice_date)
        cap = money(basic_v.value * share_v.value)
        cap_trace: dict[str, Any] = {"basic_insurance_cap": _pv(basic_v), "key_share": _pv(share_v)}
        if h.category == "lyg_extended":
            ext_v = pol.get(scheme, "annual_cap.extended", e.invoice_date)
            if ext_v is not None and ext_v.value is not None:
                cap = ext_v.value
                cap_trace["extended"] = _pv(ext_v)
        bucket = (scheme, year, kind)
        used_cap = st.caps_used.get(bucket, ZERO)
        remaining = clamp0(cap - used_cap)
        amount = min(raw, remaining)
        capped = amount < raw
        st.caps_used[bucket] = used_cap + amount
        st.caps_value[bucket] = cap
        cap_trace.update({"year": year, "cap": fmt(cap), "used_before": fmt(used_cap), "bound": capped})
        trace["cap"] = cap_trace
        trace["rules"] = trace["rules"] + ["R-LYG-2"]
    trace.update({"computed": fmt(raw), "amount": fmt(amount)})
    return SchemePart(scheme, amount, {Fund.CITY.value: amount}, kind, kind == "inpatient", trace)


# --------------------------------------------------------------------------- one expense


@dataclass
class _Option:
    holding: Holding
    parts: list[SchemePart]
    state: PassState
    suspension_started: date | None
    notes: list[dict[str, Any]]

    @property
    def total(self) -> Decimal:
        return sum((p.amount for p in self.parts), ZERO)


def _option(
    pol: Policy, k: Knowledge, e: ExpenseFacts, h: Holding, self_pay: Decimal, st: PassState, schemes: tuple[str, ...]
) -> _Option:
    on = e.service_date
    covering = [s for s in schemes if s in MONEY_SCHEMES and pol.in_force(s, on) and h.category in pol.categories(s, on)]
    if not covering:
        raise _Refusal(
            "NOT_ELIGIBLE",
            "R-CAT-1",
            f"category {h.category} is not aided by any scheme in force here on {on}",
        )
    state = st.copy()
    parts: list[SchemePart] = []
    notes: list[dict[str, Any]] = []
    started = None
    shanghai = [s for s in covering if s in (Scheme.SHANGHAI_MEDICAL_AID.value, Scheme.FOUR_LINKAGE.value)]
    if shanghai:
        insured = insured_on(k, on)
        if insured is None:
            raise _Refusal(
                "NOT_INSURED",
                "R-INS-1",
                # [001 二(二)1] for the city's aid; Changning's 四医联动 restates it [000 第二条(二)1]
                f"not enrolled in Shanghai basic medical insurance on {on} "
                + ("[001 二(二)1; 000 第二条(二)1]" if Scheme.FOUR_LINKAGE.value in shanghai else "[001 二(二)1]"),
            )
        notes.append({"rule": "R-INS-1", "insured": insured})
        if e.facility.out_of_province and not e.basic_insurance_settled:
            raise _Refusal(
                "NOT_YET_SETTLED",
                "R-INS-6",
                "out-of-province expense not yet settled by basic insurance: 零星报销 first [002 4.2]",
            )
        city_amount = ZERO
        if Scheme.SHANGHAI_MEDICAL_AID.value in shanghai:
            city = _city_aid(pol, k, e, h, self_pay, state)
            parts.append(city)
            city_amount = city.amount
        if Scheme.FOUR_LINKAGE.value in shanghai:
            fl, note, started = _four_linkage(pol, e, h, self_pay, city_amount, state)
            if fl is not None:
                parts.append(fl)
            else:
                notes.append(note)
                if not parts and "suspended" not in note:
                    raise _Refusal("NOT_ELIGIBLE", "R-4L-1", note["eligibility"])
    if Scheme.COMMUNITY_MUTUAL_AID.value in covering:
        parts.append(_mutual_aid(pol, k, e, self_pay, state))
    if Scheme.LIANYUNGANG.value in covering:
        parts.append(_lianyungang(pol, e, h, self_pay, state))
    return _Option(h, parts, state, started, notes)


def _no_category(k: Knowledge, on: date, schemes: tuple[str, ...]) -> tuple[str, str]:
    """Why no category counts on the service date (R-CAT-1 [002 3.2]). In Lianyungang a category
    granted from an earlier day but determined by the county after the service date is aided only
    from the determination (R-CAT-5 [004 三]): the refusal says so, with the date, under R-CAT-1."""
    if Scheme.LIANYUNGANG.value in schemes:
        for category, spans in category_periods(k).items():
            for start, end, src in spans:
                if src.valid_from <= on < start and (end is None or on <= end):
                    # the code's rule stays R-CAT-1 (no category counts that day); the message names R-CAT-5
                    return "R-CAT-1", (f"no recipient category counts on the service date {on}: {category} is held from "
                                       f"{src.valid_from} but aided only from the county's determination date {start} "
                                       "(R-CAT-5 [004 三])")
        return "R-CAT-1", f"no recipient category held on the service date {on} [004 二]"
    return "R-CAT-1", f"no recipient category held on the service date {on} [002 3.2]"


def _assess_one(
    pol: Policy, k: Knowledge, e: ExpenseFacts, st: PassState, schemes: tuple[str, ...], known_at: datetime | None
) -> tuple[Assessment, PassState]:
    self_pay = e.self_pay(known_at)
    waterfall = {
        "total": fmt(e.total),
        "in_scope": fmt(e.in_scope),
        "out_of_scope": fmt(e.total - e.in_scope),
        "basic_insurance": fmt(e.basic_insurance_paid),
        "settlements": [
            {"scheme": s.scheme, "amount": fmt(s.amount), "recorded_at": s.recorded_at.isoformat()}
            for s in e.settlements_known_at(known_at)
        ],
        "self_pay": fmt(self_pay),
        "rules": ["R-INS-3", "R-INS-4"],
        "clause": "[001 四; 001 二(二)3]",
    }
    held = categories_on(k, e.service_date)
    trace: dict[str, Any] = {"waterfall": waterfall, "categories_held": [h.as_trace() for h in held]}
    if not held:
        rule, message = _no_category(k, e.service_date, schemes)
        a = Assessment(e.id, False, self_pay, code="NOT_A_RECIPIENT", rule=rule, message=message, trace=trace)
        return a, st
    options: list[_Option] = []
    refusals: list[tuple[Holding, _Refusal]] = []
    for h in sorted(held, key=lambda h: CATEGORY_PRECEDENCE.index(h.category)):
        try:
            options.append(_option(pol, k, e, h, self_pay, st, schemes))
        except _Refusal as r:
            refusals.append((h, r))
    considered = [
        {"category": o.holding.category, "total": fmt(o.total), "basis": o.holding.basis} for o in options
    ] + [{"category": h.category, "refused": r.code, "rule": r.rule, "why": r.message} for h, r in refusals]
    trace["considered"] = considered
    if not options:
        h, r = refusals[0]
        return Assessment(e.id, False, self_pay, code=r.code, rule=r.rule, message=r.message, trace=trace), st
    # R-CAT-2 [001 二(一)] 就高不重复: aided once, under the category giving the largest aid;
    # ties go to the category listed first in CATEGORY_PRECEDENCE.
    best = max(options, key=lambda o: (o.total, -CATEGORY_PRECEDENCE.index(o.holding.category)))
    trace["category_choice"] = {
        "chosen": best.holding.category,
        "rule": "R-CAT-2",
        "clause": "[001 二(一)] 就高不重复",
        "why": "largest aid among the categories held" if len(options) > 1 else "the only category that qualifies",
    }
    trace["schemes"] = [p.trace for p in best.parts] + best.notes
    a = Assessment(
        e.id,
        True,
        self_pay,
        category=best.holding.category,
        parts=best.parts,
        suspension_started=best.suspension_started,
        trace=trace,
    )
    if best.suspension_started is not None:
        best.state.suspension = (e.id, datetime.min)  # decision time is set by the caller
    return a, best.state


# --------------------------------------------------------------------------- the whole recipient


@dataclass
class PassResult:
    assessments: dict[str, Assessment]
    caps: dict[tuple[str, int, str], tuple[Decimal, Decimal | None]]  # bucket -> (used, cap)
    policy_used: list[str]  # keys of the parameter versions this pass looked up (ledger.traces)
    policy_version: str
    #: R-4L-4: the expense whose crossing suspends 四医联动 at the end of the pass (no district
    #: review recorded since), or None.
    suspended_by: str | None = None
    #: The expenses this pass assessed itself; the others' assessments were carried over from the
    #: ``memo`` it was given, their inputs and everything before them in the canonical order being
    #: unchanged (None: every expense was assessed).
    recomputed: set[str] | None = None
    #: What a later pass over the same recipient can resume from (``assess(memo=...)``).
    memo: "PassMemo | None" = None
    #: What the command read from the city view for the expenses it decides (ADR 0020, R-CAP-4),
    #: to be recorded with the decision (``AidDecided.knowledge["city"]``); None: nothing read.
    city: dict[str, Any] | None = None


#: A checkpoint of the pass state is kept at the start of every invoice month (so of every cap
#: year, R-CAP-2) and at least every this many expenses, so that a pass resumes close to the first
#: expense that changed: a receipt invoiced a few weeks back (the usual late claim) resumes from
#: the start of its month, not of its year.
CHECKPOINT_EVERY = 32


def _invoice_month(e: ExpenseFacts) -> tuple[int, int]:
    return e.invoice_date.year, e.invoice_date.month


@dataclass
class PassMemo:
    """One pass over a recipient, kept so that the next pass resumes where something changed.

    The pass is a fold over the decided expenses in canonical order (invoice date, service date,
    decision order, listed order) whose state is :class:`PassState`: the annual caps, the
    mutual-aid and Lianyungang years per invoice year (R-CAP-2, R-MA-1, R-MA-2, R-LYG-3), the
    四医联动 months by service month and the suspension, which carries across years until a lift
    (R-4L-4). The state before an expense depends only on the expenses before it, so a later pass
    with the same knowledge, policy and schemes whose canonical order starts with the same expenses
    (same decision, same facts, same first decision on their receipt: R-PH-7) can start from a
    checkpoint at or before the first expense that differs and carry the earlier assessments over.
    That is exactly the full pass (``tests/unit/test_incremental_assessment.py``)."""

    knowledge: Knowledge
    policy_hash: str
    schemes: tuple[str, ...]
    entries: list[tuple[DecisionRef, ExpenseFacts, str]]  # canonical order: ref, facts, first on receipt
    assessments: list[Assessment]  # aligned with entries
    checkpoints: list[tuple[int, PassState]]  # (index, state before entries[index]), ascending
    final: PassState
    first_on_receipt: dict[tuple[str, str], str] = field(default_factory=dict)  # R-PH-7
    by_id: dict[str, Assessment] = field(default_factory=dict)  # the assessments, canonical order

    @property
    def last_key(self) -> tuple | None:
        if not self.entries:
            return None
        d, f, _ = self.entries[-1]
        return (f.invoice_date, f.service_date, d.seq, d.position)


#: ``ExpenseFacts.receipt_key`` (R-CLR-1(b), R-PH-7), remembered: a pass asks it of every expense.
_receipt_identity = lru_cache(maxsize=1 << 16)(receipt_identity)


def _receipt_key(f: ExpenseFacts) -> tuple[str, str]:
    return _receipt_identity(f.facility.code, f.invoice_no)


def _receipt_text(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def canonical_order(decided: list[DecisionRef], expenses: dict[str, ExpenseFacts]) -> list[DecisionRef]:
    return sorted(
        decided,
        key=lambda d: (expenses[d.expense_id].invoice_date, expenses[d.expense_id].service_date, d.seq, d.position),
    )


def _resume_point(memo: PassMemo, entries: list[tuple[DecisionRef, ExpenseFacts, str]]) -> tuple[int, PassState]:
    """The latest checkpoint at or before the first entry that differs from the memo's pass."""
    same = 0
    old = memo.entries
    limit = min(len(old), len(entries))
    while same < limit:
        a, b = old[same], entries[same]
        if not (a[2] == b[2] and (a[1] is b[1] or a[1] == b[1]) and a[0] == b[0]):
            break
        same += 1
    if same == len(old):
        return same, memo.final.copy()
    index, state = 0, PassState()
    for at, saved in memo.checkpoints:
        if at > same:
            break
        index, state = at, saved
    return index, state.copy()


def assess(
    knowledge: Knowledge,
    expenses: dict[str, ExpenseFacts],
    decided: list[DecisionRef],
    book: PolicyBook,
    schemes: tuple[str, ...],
    *,
    known_at: datetime | None = None,
    memo: PassMemo | None = None,
) -> PassResult:
    """Assess every decided expense of one recipient in canonical order.

    ``known_at`` cuts facts and policy to what was recorded by then (None: everything known).
    ``memo`` (an earlier pass's ``PassResult.memo``, knowledge as known now) lets the pass resume
    from a checkpoint before the first expense that changed; the result is the same.
    """
    k = knowledge.known_at(known_at)
    book = book.known_at(known_at)
    pol = Policy(book)
    out: dict[str, Assessment] = {}
    # R-CLR-1(b), R-PH-7: the first decision on a receipt keeps it; any other is a duplicate.
    receipt_of = {d.expense_id: _receipt_key(expenses[d.expense_id]) for d in decided}
    first_on_receipt: dict[tuple[str, str], str] = {}
    for d in sorted(decided, key=lambda d: (d.seq, d.position)):
        first_on_receipt.setdefault(receipt_of[d.expense_id], d.expense_id)
    order = canonical_order(decided, expenses)
    entries = [
        (d, expenses[d.expense_id].known_at(known_at), first_on_receipt[receipt_of[d.expense_id]]) for d in order
    ]
    policy_hash = book.content_hash()
    start, st = 0, PassState()
    if memo is not None and known_at is None and memo.policy_hash == policy_hash and memo.schemes == tuple(schemes) and memo.knowledge == k:
        start, st = _resume_point(memo, entries)
        for i in range(start):
            out[entries[i][0].expense_id] = memo.assessments[i]
    assessments: list[Assessment] = [memo.assessments[i] for i in range(start)] if start else []
    checkpoints: list[tuple[int, PassState]] = [c for c in (memo.checkpoints if start else []) if c[0] <= start]
    recomputed: set[str] = set()
    last_cp, last_month = (checkpoints[-1][0] if checkpoints else -CHECKPOINT_EVERY), None
    if start:
        last_month = _invoice_month(entries[start - 1][1])
    for i in range(start, len(entries)):
        d, e, first = entries[i]
        month = _invoice_month(e)
        if (month != last_month or i - last_cp >= CHECKPOINT_EVERY) and (not checkpoints or checkpoints[-1][0] != i):
            checkpoints.append((i, st.copy()))
            last_cp = i
        last_month = month
        recomputed.add(e.id)
        a, st = _step(pol, k, d, e, first, st, schemes, known_at)
        out[e.id] = a
        assessments.append(a)
    new_memo = None
    if known_at is None:
        new_memo = PassMemo(k, policy_hash, tuple(schemes), entries, assessments, checkpoints, st.copy(), first_on_receipt, out)
    return _result(out, st, k, pol, policy_hash, recomputed if start else None, new_memo)


#: A crossing the pass finds that no record names yet: known now, so no review recorded so far lifts it.
_NOT_YET_RECORDED = datetime.max.replace(tzinfo=timezone.utc)


def _step(
    pol: Policy, k: Knowledge, d: DecisionRef, e: ExpenseFacts, first: str, st: PassState, schemes: tuple[str, ...], known_at: datetime | None
) -> tuple[Assessment, PassState]:
    """One expense of the pass, in canonical order, from the state before it."""
    if first != e.id:
        a = Assessment(
            e.id,
            False,
            e.self_pay(known_at),
            code="DUPLICATE",
            rule="R-PH-7",
            message=f"receipt {_receipt_text(_receipt_key(e))} already aided as {first} (R-CLR-1(b), [002 4.5])",
        )
        return a, st
    held = st.suspension
    if held is not None:
        # R-4L-4 [000 第四条(三) 经区医疗保障局合理性审定后，再行开通]: the district's first review
        # after the suspension began reopens 四医联动 for the expenses decided after it, and the
        # month's ceiling and visit count start again from it (ADR 0007), so a reopened expense
        # is not suspended again at once. An expense later in the pass but decided before the
        # review was decided under the suspension and stays suspended: a late claim invoiced
        # earlier does not reopen what was decided before the review.
        review = min((lift.recorded_at for lift in k.lifts if held[1] < lift.recorded_at <= d.decided_at), default=None)
        if review is None:
            held = None
        else:
            if st.reopened != review:
                st.month.clear()
                st.reopened = review
            st.suspension = None
    a, st = _assess_one(pol, k, e, st, schemes, known_at)
    if a.suspension_started is not None:
        # R-4L-4 [000 第四条(三) 再行开通]: a review lifts a crossing known when it was recorded (ADR 0007): from the crossing's
        # record, or, for one this pass finds first (a late claim, a retroactive change), from
        # now, after every review there is.
        st.suspension = (e.id, k.crossing_known_since(e.id) or _NOT_YET_RECORDED)
    elif held is not None:
        st.suspension = held  # still in force for what was decided before the review
    return a, st


def _result(
    out: dict[str, Assessment], st: PassState, k: Knowledge, pol: Policy, policy_hash: str, recomputed: set[str] | None, memo: PassMemo | None
) -> PassResult:
    caps = {b: (used, st.caps_value.get(b)) for b, used in st.caps_used.items()}
    used = sorted(traces.version_key(v) for v in pol.used.values())
    suspended_by = None
    if st.suspension is not None and not any(st.suspension[1] < lift.recorded_at for lift in k.lifts):
        suspended_by = st.suspension[0]
    return PassResult(out, caps, used, policy_hash, suspended_by, recomputed, memo)


def assess_appended(
    memo: PassMemo,
    knowledge: Knowledge,
    new: list[tuple[DecisionRef, ExpenseFacts]],
    book: PolicyBook,
    schemes: tuple[str, ...],
) -> PassResult | None:
    """The pass of ``memo`` with the decisions ``new`` added, when they all come after the memo's
    last expense in the canonical order: it resumes from the memo's final state and assesses only
    them. The caller vouches that nothing else the memo's pass read has changed (the decided
    expenses, their facts); the knowledge, the policy and the schemes are compared here. None when
    this does not apply (then ``assess(memo=...)`` finds where to resume).

    Exactly ``assess`` over the memo's decided expenses plus ``new``: the state before the first of
    them is the memo's final state, and no earlier expense's first decision on its receipt changes
    (R-PH-7: a later decision never comes first)."""
    if not new or memo.policy_hash != book.content_hash() or memo.schemes != tuple(schemes) or memo.knowledge != knowledge:
        return None
    ordered = sorted(new, key=lambda p: (p[1].invoice_date, p[1].service_date, p[0].seq, p[0].position))
    last = memo.last_key
    d0, f0 = ordered[0]
    if last is not None and not last < (f0.invoice_date, f0.service_date, d0.seq, d0.position):
        return None
    first_on_receipt = dict(memo.first_on_receipt)
    for d, f in sorted(new, key=lambda p: (p[0].seq, p[0].position)):
        first_on_receipt.setdefault(_receipt_key(f), d.expense_id)
    pol = Policy(book)
    k = knowledge
    st = memo.final.copy()
    out = dict(memo.by_id)
    entries = list(memo.entries)
    assessments = list(memo.assessments)
    checkpoints = list(memo.checkpoints)
    last_cp = checkpoints[-1][0] if checkpoints else -CHECKPOINT_EVERY
    last_month = _invoice_month(entries[-1][1]) if entries else None
    recomputed: set[str] = set()
    for d, e in ordered:
        i = len(entries)
        month = _invoice_month(e)
        if month != last_month or i - last_cp >= CHECKPOINT_EVERY:
            checkpoints.append((i, st.copy()))
            last_cp = i
        last_month = month
        first = first_on_receipt[_receipt_key(e)]
        a, st = _step(pol, k, d, e, first, st, schemes, None)
        entries.append((d, e, first))
        assessments.append(a)
        out[e.id] = a
        recomputed.add(e.id)
    new_memo = PassMemo(k, memo.policy_hash, memo.schemes, entries, assessments, checkpoints, st.copy(), first_on_receipt, out)
    return _result(dict(out), st, k, pol, memo.policy_hash, recomputed, new_memo)
