"""Why this amount: an expense's stored decision trace, as a structure (``ledger explain``).

Auditors ask of any payout which scheme paid it, which category won (就高不重复, R-CAT-2), which
rate from which clause, which cap bound it, and which policy version was in force on the service
date as it was known when the decision was made (R-TIME-1). The answer is already stored: every
``AidDecided`` event carries each expense's summary with its trace and the knowledge position it
was computed at, and every ``AidReassessed`` event the recomputation (R-TIME-2, R-CLR-2). This
module only reads those events and arranges them; it decides nothing and records nothing.

The structure is plain JSON-ready data with the Chinese term beside each English one, so the CLI
renders it as text and the HTTP API can return it as is. Parameters that are RULES.md
**PARAMETER** defaults are marked ``local_setting`` (本地设定): every explanation that uses one
must say so.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from commands import queries
from commands.app import LedgerApp, recipient_of
from commands.timeline import project
from ledger import errors, traces
from ledger.citations import cite, clause_of
from ledger.policy.packs import spec_for
from ledger.policy.params import UnknownParameter
from ledger.aggregates import Claim, Recipient
from ledger.money import ZERO, fmt
from ledger.values import CATEGORY_ZH, CST, FUND_ZH, SCHEME_ZH, VISIT_ZH

#: 中文 beside the English terms of an explanation.
TERMS_ZH = {
    "total": "总医疗费用",
    "out_of_scope": "自费（医保范围外）",
    "in_scope": "医保范围内费用",
    "basic_insurance": "基本医疗保险支付",
    "critical_illness": "居保大病",
    "union_mutual_aid": "职工互助保障",
    "burden_reduction": "综合减负",
    "children_fund": "少儿住院互助基金",
    "other": "其他补充保障",
    "supplements": "其他政策性补充保障",
    "self_pay": "自负医疗费用",
    "aid": "救助金额",
    "city_part": "市级医疗救助部分",
    "top_up": "区级补足（四医联动）",
    "coverage": "四医联动保障比例",
    "rate": "救助比例",
    "annual_cap": "年度救助限额",
    "monthly_cap": "每月一站式医疗救助封顶线",
    "monthly_visits": "每月就诊合理次数",
    "local_setting": "本地设定",
    "policy_version": "政策版本",
    "knowledge": "决定时所知",
    "category": "救助对象类别",
    "reassessment": "重新核定",
    "clearing_case": "个人清算",
    "supplementary": "补发",
}
CHANNEL_ZH = {"one_stop": "一站式结算", "post_hoc": "事后救助", "auto": "免申即享", "supplementary": "补发"}
TRIGGER_ZH = {
    "late_insurance": "保险后到（先救助后保险）",
    "duplicate": "重复救助",
    "category_change": "身份类别变更",
    "parameter_change": "政策参数调整",
    "cap_overrun": "超出限额（年度限额或四医联动月度限额）",
}
FACILITY_ZH = {"community_health_centre": "社区卫生服务中心", "hospital": "医院", "pharmacy": "药店"}


def _zh(scheme: str) -> str:
    return SCHEME_ZH.get(scheme, scheme)


def _parameter(pv: dict[str, Any] | None) -> dict[str, Any] | None:
    """A parameter version as stored in a trace, with its Chinese label for a local setting."""
    if not pv:
        return None
    out = {
        "name": pv.get("name"),
        "value": pv.get("value"),
        "reference": pv.get("reference"),
        "local_setting": bool(pv.get("local_setting")),
        "effective_from": pv.get("effective_from"),
        "effective_to": pv.get("effective_to"),
        "source": pv.get("source"),
        "published_at": pv.get("published_at"),
    }
    out["setting_zh"] = TERMS_ZH["local_setting"] if out["local_setting"] else "政策规定"
    if out["source"] == "amendment":
        # an amendment is the office's, not the text's: say so, and name the clause it amends (a rate
        # set to 0.70 is not what [001 二(二)4] says)
        out["amended"] = True
        out["setting_zh"] = "修订 amendment"
        try:
            out["amends_clause"] = spec_for(str(out["name"])).clause
        except UnknownParameter:  # a name no longer known: nothing to cite
            out["amends_clause"] = None
    return out


def _waterfall(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """R-INS-3 [001 四; 001 二(二)3]: total → in scope → basic insurance → 居保大病 → other
    supplements → self-pay → aid."""
    w = (summary.get("trace") or {}).get("waterfall") or {}
    settlements = w.get("settlements") or []
    critical = sum((Decimal(s["amount"]) for s in settlements if s["scheme"] == "critical_illness"), ZERO)
    others = [s for s in settlements if s["scheme"] != "critical_illness"]
    rows = [
        ("total", w.get("total"), None),
        ("out_of_scope", w.get("out_of_scope"), "never aided (R-INS-3)"),
        ("in_scope", w.get("in_scope"), None),
        ("basic_insurance", w.get("basic_insurance"), None),
        ("critical_illness", fmt(critical), None),
        ("supplements", fmt(sum((Decimal(s["amount"]) for s in others), ZERO)), None),
        ("self_pay", w.get("self_pay", summary.get("self_pay")), "R-INS-3, R-INS-4"),
        ("aid", summary.get("total"), None),
    ]
    out = []
    for step, amount, note in rows:
        row: dict[str, Any] = {"step": step, "zh": TERMS_ZH[step], "amount": amount}
        if note:
            row["note"] = note
        if step == "supplements" and others:
            row["items"] = [{"scheme": s["scheme"], "zh": TERMS_ZH.get(s["scheme"], s["scheme"]), "amount": s["amount"]} for s in others]
        out.append(row)
    return out


def _category(summary: dict[str, Any]) -> dict[str, Any]:
    """R-CAT-1, R-CAT-2 [002 3.2; 001 二(一)]: held on the service date; the largest aid wins."""
    trace = summary.get("trace") or {}
    choice = trace.get("category_choice") or {}
    chosen = summary.get("category")
    return {
        "chosen": chosen,
        "zh": CATEGORY_ZH.get(chosen or "", None),
        "rule": choice.get("rule", "R-CAT-2"),
        "clause": choice.get("clause", "[001 二(一)] 就高不重复"),
        "why": choice.get("why"),
        "held": [{**h, "zh": CATEGORY_ZH.get(h["category"])} for h in trace.get("categories_held", [])],
        "considered": [{**c, "zh": CATEGORY_ZH.get(c["category"])} for c in trace.get("considered", [])],
    }


def _schemes(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per scheme the trace mentions: what it paid and from which parameters."""
    parts = {p["scheme"]: p for p in summary.get("parts", [])}
    traces = [t for t in (summary.get("trace") or {}).get("schemes", []) if "scheme" in t]
    city_trace = next((t for t in traces if t["scheme"] == "shanghai.medical_aid"), None)
    out = []
    for t in traces:
        scheme = t["scheme"]
        part = parts.get(scheme)
        entry: dict[str, Any] = {
            "scheme": scheme,
            "zh": _zh(scheme),
            "applied": part is not None,
            "amount": part["amount"] if part else fmt(ZERO),
            "by_fund": {f: {"amount": a, "zh": FUND_ZH.get(f, f)} for f, a in (part or {}).get("by_fund", {}).items()},
            "rules": t.get("rules", []),
            "clause": t.get("clause"),
            # each rule with its own clause (R-CAP-2 is [002 4.3], not the rates' [001 二(二)4])
            "citations": cite(t.get("rules", [])),
        }
        if part is None:
            entry["why_not"] = t.get("suspended") or t.get("eligibility")
            out.append(entry)
            continue
        if "base" in t:
            entry["base"] = t["base"]
        if t.get("rate"):
            entry["rate"] = _parameter(t["rate"])
        if "computed" in t:
            entry["computed"] = t["computed"]
        cap = t.get("cap")
        if cap:
            entry["cap"] = {
                **{k: v for k, v in cap.items() if k not in ("parameter", "basic_insurance_cap", "key_share", "extended")},
                "zh": TERMS_ZH["annual_cap"],
                "parameter": _parameter(cap.get("parameter") or cap.get("extended")),
                "basic_insurance_cap": _parameter(cap.get("basic_insurance_cap")),
                "key_share": _parameter(cap.get("key_share")),
            }
        if scheme == "changning.four_linkage":
            # R-4L-3 [000 第四条(二), 第六条]: total = self-pay × coverage; the city part is §4's;
            # the district tops up the rest.
            entry.update(
                {
                    "coverage": _parameter(t.get("coverage")),
                    "total_four_linkage": t.get("total"),
                    "city_part": {"amount": t.get("city_part"), "zh": TERMS_ZH["city_part"], "rate": _parameter((city_trace or {}).get("rate"))},
                    "top_up": {"amount": t.get("top_up"), "zh": TERMS_ZH["top_up"], "funding": t.get("funding")},
                    "eligibility": t.get("eligibility"),
                }
            )
            monthly = t.get("monthly")
            if monthly:
                entry["monthly"] = {
                    **{k: v for k, v in monthly.items() if k not in ("ceiling", "visits_allowed")},
                    "ceiling": _parameter(monthly.get("ceiling")),
                    "ceiling_zh": TERMS_ZH["monthly_cap"],
                    "visits_allowed": _parameter(monthly.get("visits_allowed")),
                    "visits_zh": TERMS_ZH["monthly_visits"],
                }
        for key in ("bands", "bands_used", "cumulative_before", "cumulative_after", "allowance", "allowance_used_before",
                    "from_allowance", "cash_threshold", "cash_before", "participant_cash", "above_threshold",
                    "from_fund_above_threshold", "threshold", "basis", "subtype", "funding"):
            if key in t and key not in entry:
                value = t[key]
                entry[key] = _parameter(value) if isinstance(value, dict) and "reference" in value else value
        out.append(entry)
    return out


class _Versions:
    """Parameter versions by key (``ledger.traces``), from the PolicyLedger at a recorded policy
    version: immutable history, so what an explanation reads back cannot change."""

    def __init__(self, app: LedgerApp):
        self.app = app
        self._by_version: dict[int | None, dict[str, Any]] = {}

    def at(self, knowledge: dict[str, Any]) -> dict[str, Any]:
        raw = knowledge.get("policy_version")
        version = int(raw) if isinstance(raw, (int, str)) and str(raw).isdigit() else None
        if version not in self._by_version:
            try:
                book = self.app.policy(version=version).book if version is not None else self.app.policy().book
            except (errors.LedgerError, AggregateNotFoundError):  # none recorded: references keep what they carry
                self._by_version[version] = {}
            else:
                self._by_version[version] = traces.index(book)
        return self._by_version[version]


def _decision(summary: dict[str, Any], event: Any, versions: dict[str, Any]) -> dict[str, Any]:
    knowledge = dict(getattr(event, "knowledge", {}) or {})
    summary = traces.inflate(summary, versions)
    # v1 decisions named every parameter the pass used; v2 name those of the expense's own trace.
    keys = knowledge.pop("parameters", None)
    if keys is None:
        keys = sorted(traces.keys_in((summary.get("trace") or {})))
    parameters = [_parameter(_by_key(k, versions)) for k in keys]
    return {
        "recorded_at": event.timestamp.astimezone(CST).isoformat(),  # shown in +08:00
        "channel": getattr(event, "channel", None),
        "channel_zh": CHANNEL_ZH.get(getattr(event, "channel", "") or ""),
        "claim": getattr(event, "claim_id", None),
        "granted": summary.get("granted"),
        "code": summary.get("code"),
        "rule": summary.get("rule"),
        "message": summary.get("message"),
        "self_pay": summary.get("self_pay"),
        "total": summary.get("total"),
        "by_scheme": summary.get("by_scheme", {}),
        "by_fund": summary.get("by_fund", {}),
        "waterfall": _waterfall(summary),
        "category": _category(summary),
        "schemes": _schemes(summary),
        "suspension_started": summary.get("suspension_started"),
        "policy": {
            "hash": knowledge.get("policy_hash"),
            "policy_version": knowledge.get("policy_version"),
            "recipient_version": knowledge.get("recipient_version"),
            "known_at": knowledge.get("known_at"),
            "zh": f"{TERMS_ZH['policy_version']} / {TERMS_ZH['knowledge']}",
        },
        "parameters": parameters,
        "local_settings": _local_settings((summary.get("trace") or {}).get("schemes", [])),
    }


def _by_key(key: str, versions: dict[str, Any]) -> dict[str, Any]:
    """The parameter version a key names, in full (or what the key itself says, if unknown); an
    event read without its upcaster still carries the version itself."""
    if isinstance(key, dict):
        return key
    found = versions.get(key)
    if found is not None:
        return found.as_trace()
    name, effective_from, published_at = (key.split("@", 2) + ["", ""])[:3]
    return {"name": name, "value": None, "effective_from": effective_from, "published_at": published_at}


def _local_settings(value: Any) -> list[str]:
    """The RULES.md PARAMETER defaults (local settings) this expense's own computation used."""
    found: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if v.get("local_setting") and "name" in v:
                found.add(v["name"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return sorted(found)


def explain_expense(app: LedgerApp, expense_id: str, *, handles: dict[str, str] | None = None) -> dict[str, Any]:
    """The explanation of one expense from the stored events (raises ``UnknownEntity``)."""
    rid = recipient_of(expense_id)
    # One read of the stream: the recipient is rebuilt from the same events the explanation
    # walks (ADR 0017: reading them twice was half of an explanation's time).
    events = list(app.events.get(uuid.UUID(str(rid))))
    if not events:
        app.recipient(rid)  # UnknownEntity, as before
    recipient: Recipient = project(events)
    acc = recipient.expenses.get(expense_id)
    if acc is None:
        raise errors.UnknownEntity(f"expense {expense_id!r} is not an expense of this recipient", field="expense")
    facts = acc.facts
    decision: dict[str, Any] | None = None
    reassessments: list[dict[str, Any]] = []
    books = _Versions(app)
    for event in events:
        if isinstance(event, Recipient.AidDecided):
            for summary in event.decisions:
                if summary.get("expense") == expense_id and decision is None:
                    decision = _decision(summary, event, books.at(event.knowledge or {}))
        elif isinstance(event, Recipient.AidReassessed):
            for item in event.results:
                if item.get("expense") != expense_id:
                    continue
                due = traces.inflate(item.get("due") or {}, books.at(event.knowledge or {}))
                knowledge = dict(event.knowledge or {})
                knowledge.pop("parameters", None)
                reassessments.append(
                    {
                        "recorded_at": event.timestamp.astimezone(CST).isoformat(),  # shown in +08:00
                        "trigger": event.trigger,
                        "trigger_zh": TRIGGER_ZH.get(event.trigger, event.trigger),
                        "cause": event.cause,
                        "previous_total": (item.get("previous") or {}).get("total"),
                        "granted": due.get("granted"),
                        "code": due.get("code"),
                        "rule": due.get("rule"),
                        "category": due.get("category"),
                        "self_pay": due.get("self_pay"),
                        "total": due.get("total"),
                        "by_scheme": due.get("by_scheme", {}),
                        "by_fund": due.get("by_fund", {}),
                        "schemes": _schemes(due) if due.get("granted") else [],
                        "policy": {"hash": knowledge.get("policy_hash"), "policy_version": knowledge.get("policy_version"),
                                   "recipient_version": knowledge.get("recipient_version"), "known_at": knowledge.get("known_at")},
                    }
                )
    view = queries.expense_view(recipient, expense_id)
    if decision is not None and decision.get("claim"):
        decision["officers"] = _officers(app, decision["claim"])
    return {
        "expense": expense_id,
        "handle": (handles or {}).get(expense_id, acc.handle),
        "recipient": str(recipient.id),
        "facts": {
            "visit_type": facts.visit_type.value,
            "visit_type_zh": VISIT_ZH.get(facts.visit_type.value),
            "facility": {**facts.facility.to_dict(), "kind_zh": FACILITY_ZH.get(facts.facility.kind.value)},
            "service_date": facts.service_date.isoformat(),
            "invoice_date": facts.invoice_date.isoformat(),
            "invoice_no": facts.invoice_no,
            "referred": facts.referred,
            "dispensing_only": facts.dispensing_only,
            "critical_illness_related": facts.critical_illness_related,
            "critical_illness_evidence": facts.critical_illness_evidence,
            "duplicate_of": (handles or {}).get(facts.duplicate_of or "", facts.duplicate_of),
            # Every insurance payment recorded on the receipt, and the self-pay they leave now
            # (R-INS-3, R-INS-4): one recorded after the latest decision that moved no money (the
            # aid was held at a cap, say) is shown here, as no reassessment records it.
            "settlements": [
                {"scheme": x.scheme, "zh": TERMS_ZH.get(x.scheme, x.scheme), "amount": fmt(x.amount),
                 "recorded_at": x.recorded_at.astimezone(CST).isoformat(), "rule": "R-INS-4", "clause": clause_of("R-INS-4")}
                for x in facts.settlements
            ],
            "self_pay_now": view.get("self_pay"),
        },
        "decision": decision,
        "reassessments": reassessments,
        "paid": view["paid"],
        "due": view["due"],
        "clearing_cases": [
            {**queries.case_view(c), "trigger_zh": TRIGGER_ZH.get(c.trigger, c.trigger)} for c in recipient.cases.values() if c.expense_id == expense_id
        ],
        "supplementary": [
            {**queries.supplementary_view(s), "trigger_zh": TRIGGER_ZH.get(s.trigger, s.trigger)}
            for s in recipient.supplementary.values()
            if s.expense_id == expense_id
        ],
        "attempted_duplicates": list(acc.attempted_duplicates),
        "refusals": _refusals(app, events, expense_id),
        "payouts": _payouts(recipient, expense_id, handles),
        "suspensions": _suspensions(recipient, facts.service_date.isoformat(), handles),
    }


def _suspensions(r: Recipient, service_date: str, handles: dict[str, str] | None) -> list[dict[str, Any]]:
    """The person's 四医联动 suspensions in force by the expense's service date (R-4L-4 [000
    第四条(三)]: 暂停享受, 经区医疗保障局合理性审定后再行开通): from when, started by which expense and why,
    and the district review that lifted it (who, on which day), so a part "not applied: suspended"
    says which suspension."""
    out = []
    for x in r.suspensions:
        if x.get("from") and str(x["from"]) > service_date:
            continue
        out.append({
            "scheme": x.get("scheme"),
            "from": str(x.get("from")),
            "expense": (handles or {}).get(x.get("expense") or "", x.get("expense")),
            "reason": x.get("reason"),
            "lifted": x.get("lifted"),
            "reviewer": x.get("reviewer"),
            "ended_by": x.get("ended_by"),  # "recomputation": a retroactive change no longer supports it
            "rule": "R-4L-4",
            "clause": "[000 第四条(三)]",
        })
    return out


def _payouts(r: Recipient, expense_id: str, handles: dict[str, str] | None) -> list[dict[str, Any]]:
    """Every payout that paid this expense, and where its money went: a payout first offsets what
    the person owes on open clearing cases, oldest first, and only the rest reaches them (R-CLR-3
    [000 第七条]). ``paid`` counts the whole payout (SCENARIOS.md); the offsets show why the person
    received less."""
    out: list[dict[str, Any]] = []
    for p in r.payouts:
        mine = [x for x in p["payments"] if x.get("expense") == expense_id]
        if not mine:
            continue
        offsets = [
            {"case": o["case"], "expense": (handles or {}).get(r.cases[o["case"]].expense_id, r.cases[o["case"]].expense_id)
             if o["case"] in r.cases else None, "amount": fmt(Decimal(str(o["amount"]))), "by_fund": o.get("by_fund", {})}
            for o in p.get("offsets") or []
        ]
        out.append({
            "recorded_at": p["at"].astimezone(CST).isoformat(),
            "claim": p.get("claim"),
            "channel": p.get("channel"),
            "amount": fmt(sum((Decimal(str(x["total"])) for x in mine), ZERO)),
            "payout_total": fmt(sum((Decimal(str(x["total"])) for x in p["payments"]), ZERO)),
            "supplementary": [sid for x in mine for sid in x.get("supplementary", [])],
            "offsets": offsets,
            "to_person": fmt(Decimal(str(p["to_person"]))),
            "rule": "R-CLR-3" if offsets else None,
        })
    return out


def _officers(app: LedgerApp, claim_id: str) -> dict[str, Any] | None:
    """Who signed the claim (R-PH-4 [002 3.4, 3.5]): handler, reviewer, approver and the payer who
    disbursed it (the fourth signature); a proxy is named by the masked number it was lodged with."""
    try:
        c = app.claim(claim_id)
    except (errors.UnknownEntity, AggregateNotFoundError, ValueError):
        return None  # a one-stop settlement has no claim
    return {"handler": c.handler, "reviewer": c.reviewer, "approver": c.approver, "payer": getattr(c, "payer", None),
            "channel": c.channel, "status": c.status, "by_proxy": bool(c.proxy_id_number),
            # R-PH-5 [002 4.3]: lodged past the six-month window on the district's decision, and why
            "deadline_override": getattr(c, "deadline_override", None)}


def _refusals(app: LedgerApp, events: list[Any], expense_id: str) -> list[dict[str, Any]]:
    """Every claim on this expense that a rule refused, with the refusal as recorded: code, rule and
    message (clause included), when, and the expense the claim was refused on (a claim is refused
    whole when any of its expenses is, SCENARIOS.md). The claims are the ones the person's own
    stream names (``ClaimAttached``, recorded for a claim refused at lodging too): an explanation
    reads one person, never the district (issue 16: explain one payout, p99 < 50 ms)."""
    named: list[str] = []
    for e in events:
        if isinstance(e, Recipient.ClaimAttached) and expense_id in e.expense_ids and e.claim_id not in named:
            named.append(e.claim_id)
    out: list[dict[str, Any]] = []
    for cid in named:
        claim_events = list(app.events.get(uuid.UUID(cid)))
        refused = next((e for e in claim_events if isinstance(e, Claim.Rejected)), None)
        lodged = next((e for e in claim_events if isinstance(e, Claim.Lodged)), None)
        if refused is None or lodged is None:
            continue
        out.append({
            "claim": cid,
            "channel": lodged.channel,
            "lodged_on": lodged.lodged_on,
            "recorded_at": refused.timestamp.astimezone(CST).isoformat(),
            "code": refused.code,
            "rule": refused.rule,
            "message": refused.message,
            "on_expense": refused.expense_id,
        })
    return sorted(out, key=lambda x: x["recorded_at"])
