"""``ledger explain EXPENSE``: why an expense got what it got (the stored decision trace).

An adapter over :func:`commands.explain.explain_expense`, which arranges what the ``AidDecided``
and ``AidReassessed`` events recorded; this module only renders it (text with 中文 beside the
English, or ``--json``). EXPENSE is the ledger's expense id (``<recipient uuid>:<n>``) in the store
named by ``LEDGER_DATABASE_URL``; with ``--scenario FILE --expense HANDLE`` the scenario is
replayed into a fresh in-memory ledger first and the expense is named by its handle there.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import typer

from infra.cli import app


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@app.command("explain")
def explain(
    expense: Optional[str] = typer.Argument(None, help="the expense: its handle as shown (E004997) or its id (<recipient uuid>:<n>); a handle in the file with --scenario"),
    as_json: bool = typer.Option(False, "--json", help="print the explanation as JSON"),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="replay this scenario file first (in memory)"),
    handle: Optional[str] = typer.Option(None, "--expense", help="with --scenario: the expense's handle in the file"),
) -> None:
    """Explain an expense's aid: waterfall, category (就高不重复), rates and clauses, caps, policy version."""
    from commands.explain import explain_expense
    from ledger import errors

    handles: dict[str, str] = {}
    if scenario is not None:
        from infra.scenario import ScenarioError, replay

        name = handle or expense
        if not name:
            _fail("--scenario needs --expense HANDLE (the expense's handle in the file)", 2)
        try:
            _, runner = replay(scenario.read_text(encoding="utf-8"))
        except OSError as exc:
            _fail(f"cannot read {scenario}: {exc}", 2)
        except ScenarioError as exc:
            _fail(f"malformed scenario {scenario}: {exc}", 2)
        if name not in runner.expenses:
            _fail(f"no expense {name!r} in {scenario} (handles: {', '.join(runner.expenses) or 'none'})", 1)
        ledger, expense_id = runner.app, runner.expenses[name]
        handles = {v: k for k, v in runner.expenses.items()}
    else:
        if not expense:
            _fail("give an EXPENSE id, or --scenario FILE --expense HANDLE", 2)
        from infra.settings import get_settings
        from infra.wiring import build_app

        from commands.lookup import resolve_expense

        ledger = build_app(get_settings())
        try:  # the expense id, or its handle as the ledger shows it (E004997), ADR 0019
            expense_id = resolve_expense(ledger, expense)
        except errors.LedgerError as exc:
            _fail(f"cannot explain {expense!r}: {exc.message}", 4 if isinstance(exc, errors.UnknownEntity) else 1)  # 4: not found
    try:
        data = explain_expense(ledger, expense_id, handles=handles)
    except errors.LedgerError as exc:
        _fail(f"cannot explain {expense_id!r}: {exc.message}", 4 if isinstance(exc, errors.UnknownEntity) else 1)  # 4: not found
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    else:
        sys.stdout.write("\n".join(render(data)) + "\n")


# ---------------------------------------------------------------------------------- text


def _setting(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    period = f"{p.get('effective_from')}–{p.get('effective_to') or ''}"
    kind = "local setting 本地设定" if p.get("local_setting") else "policy 政策规定"
    if p.get("amended"):
        kind = f"amendment 修订 of {p.get('amends_clause') or 'the pack'}" + (", a local setting" if p.get("local_setting") else "")
    return f"{p.get('name')} = {_value(p.get('value'))} {p.get('reference') or ''} ({kind}; in force {period})"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    return str(value)


def _funds(by_fund: dict[str, Any]) -> str:
    from ledger.values import FUND_ZH

    parts = []
    for fund, amount in by_fund.items():
        value = amount["amount"] if isinstance(amount, dict) else amount
        parts.append(f"{fund} {FUND_ZH.get(fund, fund)} {value}")
    return ", ".join(parts)


def _scheme_lines(s: dict[str, Any]) -> list[str]:
    head = f"    {s['scheme']} {s['zh']}: {s['amount']}"
    if not s["applied"]:
        return [f"{head} (not applied: {s.get('why_not') or 'not eligible'})"]
    cited = ", ".join(f"{c['rule']} {c['clause']}" if c.get("clause") else c["rule"] for c in s.get("citations", []))
    lines = [f"{head} ({_funds(s['by_fund'])})  {s.get('clause') or ''}".rstrip()]
    if cited or s.get("rules"):
        lines.append(f"      rules 依据: {cited or ', '.join(s.get('rules', []))}")
    if s["scheme"] == "changning.four_linkage":
        cov, city = s.get("coverage") or {}, s.get("city_part") or {}
        lines.append(
            f"      total 四医联动合计 = self-pay 自负 {s.get('base')} × coverage 保障比例 {cov.get('value')} = {s.get('total_four_linkage')}"
        )
        lines.append(f"        coverage: {_setting(cov)}")
        city_rate = city.get("rate") or {}
        lines.append(f"      city part {city.get('zh')} {city.get('amount')} at rate 救助比例 {city_rate.get('value', '—')}")
        if city_rate:
            lines.append(f"        city rate: {_setting(city_rate)}")
        top = s.get("top_up") or {}
        room = max(Decimal(str(s.get("total_four_linkage") or 0)) - Decimal(str(city.get("amount") or 0)), Decimal("0"))
        limited = f", limited to {top.get('amount')} (R-4L-4)" if Decimal(str(top.get("amount") or 0)) != room else ""
        lines.append(
            f"      top-up {top.get('zh')} = {s.get('total_four_linkage')} − {city.get('amount')} = {room:.2f}{limited} ({top.get('funding')})"
        )
        if s.get("eligibility"):
            lines.append(f"      eligible: {s['eligibility']}")
        monthly = s.get("monthly")
        if monthly:
            lines.append(
                f"      month {monthly.get('month')}: aid before {monthly.get('aid_before')}, visit no. {monthly.get('visit')}"
                + (f"; {monthly['outcome']}" if monthly.get("outcome") else "")
            )
            lines.append(f"        {monthly.get('ceiling_zh')}: {_setting(monthly.get('ceiling'))}")
            lines.append(f"        {monthly.get('visits_zh')}: {_setting(monthly.get('visits_allowed'))}")
        return lines
    rate = s.get("rate")
    if isinstance(s.get("allowance"), dict):
        # R-MA-1 [003 五(一)(二)]: allowance first, then the participant's cash up to the threshold,
        # then the fund's rate on what lies above it.
        lines.append(
            f"      in scope {s.get('base')}: allowance 门诊补贴 {s.get('from_allowance')} (used before {s.get('allowance_used_before')}); "
            f"cash before 已自负 {s.get('cash_before')}; above threshold {s.get('above_threshold')} × {rate.get('value') if rate else '—'} "
            f"= {s.get('from_fund_above_threshold')}; participant pays 个人现金 {s.get('participant_cash')}"
        )
        if rate:
            lines.append(f"        {_setting(rate)}")
    elif rate and s.get("basis"):
        # R-MA-2 [003 五(三)]: the part of the year's cumulative figure above the threshold.
        lines.append(f"      {s['basis']}: threshold {s.get('threshold')}, cumulative {s.get('cumulative_before')} → {s.get('cumulative_after')}, "
                     f"above {s.get('above_threshold')} × {rate.get('value')} = {s['amount']}")
        lines.append(f"        {_setting(rate)}")
    elif rate:
        lines.append(f"      rate 救助比例 {rate.get('value')} × base {s.get('base')} = {s.get('computed', s['amount'])}")
        lines.append(f"        {_setting(rate)}")
    for key in ("bands", "allowance", "cash_threshold"):
        p = s.get(key)
        if isinstance(p, dict):
            lines.append(f"      {key}: {_setting(p)}")
    if s.get("bands_used"):
        used = "; ".join(f"{b['from']}–{b['to']} at {b['rate']}" for b in s["bands_used"])
        lines.append(f"      bands used (cumulative {s.get('cumulative_before')} → {s.get('cumulative_after')}): {used}")
    cap = s.get("cap")
    if cap:
        bound = "the cap bound this expense (R-CAP-3)" if cap.get("bound") else "not bound"
        limit = cap.get("cap") or (cap.get("parameter") or {}).get("value")
        used = cap.get("used_before")
        remaining = cap.get("remaining_before")
        if remaining is None and limit is not None and used is not None:
            remaining = f"{max(Decimal(str(limit)) - Decimal(str(used)), Decimal('0')):.2f}"
        lines.append(
            f"      {cap.get('zh')} annual cap, invoice year 票据年度 {cap.get('year')}: {limit}; used before {used}, remaining {remaining}; {bound}"
        )
        for key in ("parameter", "basic_insurance_cap", "key_share"):
            if cap.get(key):
                lines.append(f"        {_setting(cap[key])}")
        city = cap.get("city_view")
        if city:  # R-CAP-4: the other districts' usage, as the decision read it (ADR 0020)
            elsewhere = ", ".join(f"{d} {a}" for d, a in city.get("used_elsewhere", {}).items()) or "none"
            lines.append(f"        used in other districts: {elsewhere}; counted {city.get('counted')} {city.get('as_of')} (R-CAP-4)")
            fixed = city.get("corrected")
            if fixed:  # R-CLR-1(e): a clearing run corrected the read the decision made
                lines.append(f"        corrected by a clearing run: {fixed.get('reason')}")
    return lines


def render(data: dict[str, Any]) -> list[str]:
    """The explanation as text lines (English with 中文 beside it)."""
    f = data["facts"]
    fac = f["facility"]
    where = f"{fac['kind']} {fac.get('kind_zh') or ''} (level {fac['level']}{', district-designated 区属定点' if fac.get('district_designated') else ''}{', out of province 异地' if fac.get('out_of_province') else ''})"
    lines = [
        f"Expense 费用 {data.get('handle') or ''} {data['expense']}".replace("  ", " "),
        f"  {f['visit_type']} {f.get('visit_type_zh') or ''} at {where}",
        f"  service date 就诊日期 {f['service_date']} · invoice date 票据开具日期 {f['invoice_date']} · invoice no. 票据号 {f['invoice_no']}"
        + (" · referred 转诊" if f.get("referred") else "")
        + (" · dispensing only 门诊配药" if f.get("dispensing_only") else "")
        + (f" · duplicate of 重复票据 {f['duplicate_of']}" if f.get("duplicate_of") else ""),
    ]
    for x in f.get("settlements", []):
        lines.append(f"  insurance paid on the receipt 保险支付: {x['scheme']} {x.get('zh') or ''} {x['amount']}, recorded {x['recorded_at']} "
                     f"({x['rule']} {x.get('clause') or ''})")
    if f.get("settlements"):
        lines.append(f"  self-pay now 现自负医疗费用 {f.get('self_pay_now')} (R-INS-3)")
    d = data.get("decision")
    if d is None:
        lines.append("  Not decided yet 尚未作出救助决定." if not data.get("refusals") else "  Not granted 未予救助: every claim on it was refused.")
    else:
        lines.append(f"Decision 救助决定 recorded {d['recorded_at']} · {d.get('channel')} {d.get('channel_zh') or ''} · claim {d.get('claim') or '—'}")
        o = d.get("officers")
        if o:
            lines.append(f"  signed 签字 (R-PH-4 [002 3.4, 3.5]): handler 经办 {o.get('handler') or '—'} · reviewer 审核 {o.get('reviewer') or '—'}"
                         f" · approver 审批 {o.get('approver') or '—'} · payer 拨付 {o.get('payer') or '—'}"
                         + (" · lodged by a proxy 代办 (R-PH-9 [002 4.7])" if o.get("by_proxy") else ""))
            if o.get("deadline_override"):
                lines.append(f"  window overridden 逾期特批 (R-PH-5 [002 4.3]): {o['deadline_override']}")
        if not d.get("granted"):
            lines.append(f"  refused 不予救助: {d.get('code')} ({d.get('rule')}) {d.get('message') or ''}")
        lines.append("  Waterfall 费用分解")
        for row in d["waterfall"]:
            note = f"  {row['note']}" if row.get("note") else ""
            lines.append(f"    {row['step']:<17} {row['zh']:<14} {row['amount']:>12}{note}")
            for item in row.get("items", []):
                lines.append(f"      {item['scheme']} {item['zh']} {item['amount']}")
        c = d["category"]
        if c.get("chosen"):
            lines.append(f"  Category 救助对象类别: {c['chosen']} {c.get('zh') or ''} — {c.get('rule')} {c.get('clause')}: {c.get('why') or ''}")
        for o in c.get("considered", []):
            detail = f"aid {o['total']} ({o.get('basis')})" if "total" in o else f"refused {o.get('refused')} ({o.get('rule')}): {o.get('why')}"
            lines.append(f"    considered 比较: {o['category']} {o.get('zh') or ''}: {detail}")
        lines.append("  Schemes 救助项目")
        for s in d["schemes"]:
            lines.extend(_scheme_lines(s))
        lines.append(f"  Total 救助金额 {d.get('total')}: {_funds(d.get('by_fund', {}))}")
        p = d["policy"]
        lines.append(
            f"  Policy version 政策版本 {p.get('hash')} · known at 决定时所知 {p.get('known_at')} "
            f"(recipient version {p.get('recipient_version')}, policy ledger version {p.get('policy_version')})"
        )
        if d.get("local_settings"):
            lines.append(f"  Local settings used 本地设定 (not policy): {', '.join(d['local_settings'])}")
    if data.get("reassessments"):
        lines.append("Reassessments 重新核定")
        for r in data["reassessments"]:
            outcome = r.get("total") if r.get("granted") else f"refused {r.get('code')} ({r.get('rule')})"
            lines.append(
                f"  {r['recorded_at']} {r['trigger']} {r['trigger_zh']}: {r.get('previous_total')} → {outcome} "
                f"(policy version 政策版本 {r['policy'].get('hash')})"
            )
            for s in r.get("schemes", []):
                lines.extend("  " + x for x in _scheme_lines(s))
    for case in data.get("clearing_cases", []):
        lines.append(
            f"Clearing case 个人清算 {case['case']}: {case['trigger']} {case['trigger_zh']}, amount {case['amount']}, "
            f"balance {case['balance']}, {case['status']}"
        )
    for s in data.get("supplementary", []):
        lines.append(f"Supplementary payout 补发 {s['supplementary']}: {s['trigger']} {s['trigger_zh']}, amount {s['amount']}, {s['status']}")
    for x in data.get("suspensions", []):
        if x.get("ended_by"):
            lifted = f"ended on {x['lifted']}: a recomputation no longer supports it (R-TIME-2, R-CLR-2)"
        elif x.get("lifted"):
            lifted = f"lifted 再行开通 on {x['lifted']} by district review ({x.get('reviewer')}); the month's count restarts"
        else:
            lifted = "in force until a district review"
        lines.append(f"Suspension 暂停 四医联动 from {x['from']}, started by expense {x.get('expense')} ({x['rule']} {x['clause']}): {lifted}")
    for p in data.get("payouts", []):
        line = f"Payout 支付 {p['recorded_at']} ({p.get('channel')}): {p['amount']} for this expense"
        if p.get("offsets"):
            off = ", ".join(f"{o['amount']} to case {o['case']}" + (f" ({o['expense']})" if o.get("expense") else "") for o in p["offsets"])
            line += (f"; the payout of {p['payout_total']} first offset {off} (R-CLR-3 [000 第七条]), "
                     f"{p['to_person']} reached the person")
        lines.append(line)
    for x in data.get("refusals", []):
        lines.append(f"Refused 拒绝 {x.get('recorded_at')} claim {x['claim']} ({x.get('channel')}): {x.get('code')} ({x.get('rule')}) "
                     f"{x.get('message') or ''}")
    for a in data.get("attempted_duplicates", []):
        lines.append(f"Attempted duplicate 重复申请 {a.get('at')} via {a.get('channel')}: {a.get('reason')}")
    lines.append(f"Paid 已支付 {data['paid']['total']} ({_funds(data['paid']['by_fund'])}) · due now 现应得 {data['due']['total']}")
    return lines
