"""Bitemporal snapshots: the books as effective on a valid date V, as known at a time T (R-TIME-3).

R-TIME-3 [RULES.md §1]: a point-in-time snapshot is taken at a pair (valid date V, known-at time
T): the state of every account and cap as effective on V, from the events recorded up to T. The
snapshot is computed from the event log (:func:`commands.timeline.cut`), never from projections,
so it is right for any past T. Per recipient, the categories held on V (R-CAT-1), the street and
the fund, it gives:

- ``caps_used_inpatient`` / ``caps_used_outpatient``: aid due that counts against the annual
  limits (R-CAP-1, R-CAP-2) in the cap year of V, from expenses served on or before V whose
  invoice falls in that year;
- ``aid_due``: what the decided expenses served on or before V should get, recomputed with the
  facts and policy known at T (``engine.assess(known_at=T)``, decisions recorded by T);
- ``aid_paid``: payouts recorded by T for those expenses (offset parts included);
- ``clearing_open``: open clearing balances as of T on those expenses (R-CLR-2, R-CLR-3);
- ``supplementary_pending``: supplementary payouts due and unpaid as of T on them (R-CLR-2);
- ``other_paid``: social-organisation help (R-4L-5) and enrolment subsidies (R-INS-2) recorded
  by T and dated on or before V.

Exports (JSON, CSV, XLSX) carry Chinese labels beside the English keys and contain nothing that
depends on when they were made, so the same request gives the same bytes; a manifest names the
store position, V, T, the policy versions, the row count and the SHA-256 of each file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from commands.app import LedgerApp
from commands.timeline import Cut, cut, policy_versions
from ledger import engine
from ledger.aggregates import Recipient
from ledger.eligibility import categories_on
from ledger.money import ZERO, fmt
from ledger.policy.params import PolicyBook
from ledger.values import CATEGORY_PRECEDENCE, CATEGORY_ZH, FUNDS, local_date

FORMATS = ("json", "csv", "xlsx")

FUND_ZH = {"city": "市级财政", "district": "区级财政", "mutual_aid": "互助帮困资金", "social": "社会组织"}

#: (key, 中文) in export order; money columns are the ones after ``fund_zh``.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("recipient", "救助对象编号"),
    ("street", "街镇"),
    ("category", "救助对象类别"),
    ("category_zh", "类别名称"),
    ("fund", "资金来源"),
    ("fund_zh", "资金名称"),
    ("caps_used_inpatient", "住院年度限额已用"),
    ("caps_used_outpatient", "门诊年度限额已用"),
    ("aid_due", "应救助金额"),
    ("aid_paid", "已支付金额"),
    ("clearing_open", "清算未结余额"),
    ("supplementary_pending", "待补发金额"),
    ("other_paid", "其他救助支出"),
)
MONEY_COLUMNS = tuple(k for k, _ in COLUMNS[6:])


def label(key: str) -> str:
    """The header of a column: the English key, then its Chinese label (``aid_due 应救助金额``)."""
    return f"{key} {dict(COLUMNS)[key]}"


# --------------------------------------------------------------------------- computing


@dataclass
class Snapshot:
    valid: date
    known_at: datetime | None  # as requested (None: everything recorded)
    resolved_known_at: datetime | None
    position: int
    jurisdiction: str
    policy: dict[str, Any]
    rows: list[dict[str, Any]]  # money as Decimal
    recipients: int  # recipients enrolled by T
    valid_requested: date | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return f"snapshot_V{self.valid.isoformat()}_P{self.position}"

    def totals(self) -> dict[str, str]:
        return {k: fmt(sum((r[k] for r in self.rows), ZERO)) for k in MONEY_COLUMNS}

    def header(self) -> dict[str, Any]:
        return {
            "valid": self.valid.isoformat(),
            "known_at": self.resolved_known_at.isoformat() if self.resolved_known_at else None,
            "store_position": self.position,
            "jurisdiction": self.jurisdiction,
            "policy_hash": self.policy.get("book_hash"),
        }

    def plain_rows(self) -> list[dict[str, Any]]:
        return [{k: (fmt(v) if k in MONEY_COLUMNS else v) for k, v in row.items()} for row in self.rows]

    def document(self) -> dict[str, Any]:
        """The JSON export's content."""
        return {
            "snapshot": self.header(),
            "columns": [{"key": k, "zh": zh, "label": label(k)} for k, zh in COLUMNS],
            "rows": self.plain_rows(),
            "totals": self.totals(),
        }

    # -- exports ----------------------------------------------------------------------------
    def render(self, fmt_name: str) -> bytes:
        if fmt_name == "json":
            return _json_bytes(self.document())
        if fmt_name == "csv":
            return _csv_bytes(self)
        if fmt_name == "xlsx":
            return _xlsx_bytes(self)
        raise ValueError(f"unknown format {fmt_name!r} (one of {', '.join(FORMATS)})")

    def export(self, formats: tuple[str, ...] | list[str] = FORMATS) -> dict[str, bytes]:
        """File name → bytes for each format, and the manifest naming them all."""
        files = {f"{self.stem}.{f}": self.render(f) for f in sorted(set(formats), key=FORMATS.index)}
        files[f"{self.stem}.manifest.json"] = _json_bytes(self.manifest(files))
        return files

    def manifest(self, files: dict[str, bytes]) -> dict[str, Any]:
        return {
            "kind": "medical-aid ledger snapshot (R-TIME-3)",
            "valid": self.valid.isoformat(),
            "valid_requested": self.valid_requested.isoformat() if self.valid_requested else None,
            "known_at": self.resolved_known_at.isoformat() if self.resolved_known_at else None,
            "known_at_requested": self.known_at.isoformat() if self.known_at else None,
            "store_position": self.position,
            "jurisdiction": self.jurisdiction,
            "policy": self.policy,
            "recipients": self.recipients,
            "rows": len(self.rows),
            "columns": [label(k) for k, _ in COLUMNS],
            "totals": self.totals(),
            "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in sorted(files.items())},
        }

    def as_report(self) -> dict[str, Any]:
        """For the scenario runner: the JSON document with the policy versions and its SHA-256."""
        doc = self.document()
        return {
            **doc,
            "policy": self.policy,
            "recipients": self.recipients,
            "row_count": len(self.rows),
            "sha256": hashlib.sha256(_json_bytes(doc)).hexdigest(),
        }


def today() -> date:
    return local_date(datetime.now(timezone.utc))


def take_snapshot(app: LedgerApp, valid: date | None = None, known_at: datetime | None = None) -> Snapshot:
    """R-TIME-3: the snapshot at (V, T); V defaults to today, T to everything recorded."""
    the_cut = cut(app, known_at)
    v = valid or today()
    book = the_cut.policy.book if the_cut.policy is not None else PolicyBook()
    rows: list[dict[str, Any]] = []
    for rid in sorted(the_cut.recipients, key=lambda i: (the_cut.recipients[i].street, str(i))):
        rows.extend(_recipient_rows(the_cut.recipients[rid], v, the_cut, book, app.schemes))
    return Snapshot(
        valid=v,
        known_at=known_at,
        resolved_known_at=the_cut.resolved_known_at,
        position=the_cut.position,
        jurisdiction=app.jurisdiction,
        policy=policy_versions(the_cut.policy),
        rows=rows,
        recipients=len(the_cut.recipients),
        valid_requested=valid,
    )


def _add(acc: dict[str, dict[str, Decimal]], column: str, by_fund: dict[str, Any]) -> None:
    for f, amount in by_fund.items():
        value = Decimal(amount)
        if value:
            acc.setdefault(f, {k: ZERO for k in MONEY_COLUMNS})[column] += value


def _recipient_rows(r: Recipient, v: date, the_cut: Cut, book: PolicyBook, schemes: tuple[str, ...]) -> list[dict[str, Any]]:
    t = the_cut.known_at
    k = r.knowledge()
    held = sorted((h.category for h in categories_on(k.known_at(t), v)), key=CATEGORY_PRECEDENCE.index)
    refs = r.decided_refs()
    result = engine.assess(k, r.expense_facts(), refs, book, schemes, known_at=t) if refs else None
    per_fund: dict[str, dict[str, Decimal]] = {}
    effective = {eid for eid, acc in r.expenses.items() if acc.facts.service_date <= v}
    for eid, acc in r.expenses.items():
        if eid not in effective or acc.decision is None or result is None:
            continue
        a = result.assessments[eid]
        if a.granted:
            _add(per_fund, "aid_due", a.by_fund)
            if acc.facts.invoice_date.year == v.year:  # R-CAP-2: the cap year is the invoice's
                for part in a.parts:
                    if part.counts_against_cap:
                        _add(per_fund, f"caps_used_{part.kind}", part.by_fund)
        _add(per_fund, "aid_paid", acc.paid_by_fund)
    for case in r.cases.values():
        if case.expense_id in effective:
            _add(per_fund, "clearing_open", case.balance_by_fund)
    for s in r.supplementary.values():
        if s.expense_id in effective and s.paid_at is None:
            _add(per_fund, "supplementary_pending", s.by_fund)
    for g in r.social_help:
        if local_date(g["at"]) <= v:
            _add(per_fund, "other_paid", {"social": g["amount"]})
    for s in r.subsidies:
        if local_date(datetime.fromisoformat(s["at"])) <= v and Decimal(s.get("amount") or "0"):
            _add(per_fund, "other_paid", {s.get("fund", "city"): s["amount"]})
    rows = []
    for f in sorted(per_fund, key=lambda f: (FUNDS.index(f) if f in FUNDS else len(FUNDS), f)):
        money = per_fund[f]
        if not any(money.values()):
            continue
        rows.append(
            {
                "recipient": str(r.id),
                "street": r.street,
                "category": "+".join(held),
                "category_zh": "+".join(CATEGORY_ZH.get(c, c) for c in held),
                "fund": f,
                "fund_zh": FUND_ZH.get(f, f),
                **money,
            }
        )
    return rows


# --------------------------------------------------------------------------- rendering


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _csv_bytes(s: Snapshot) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([label(k) for k, _ in COLUMNS])
    for row in s.plain_rows():
        writer.writerow([row[k] for k, _ in COLUMNS])
    # A byte-order mark so that spreadsheet programs read the Chinese labels as UTF-8.
    return buf.getvalue().encode("utf-8-sig")


#: Fixed zip entry time: an XLSX is a zip whose entries carry times; fixed, the bytes repeat.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _xlsx_bytes(s: Snapshot) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "snapshot 快照"
    ws.append([label(k) for k, _ in COLUMNS])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in s.rows:
        ws.append([row[k] for k, _ in COLUMNS])
    for line in ws.iter_rows(min_row=2, min_col=7, max_col=len(COLUMNS)):
        for cell in line:
            cell.number_format = "0.00"
    ws.freeze_panes = "A2"
    about = wb.create_sheet("about 说明")
    for key, zh, value in (
        ("valid", "有效日期 V", s.valid.isoformat()),
        ("known_at", "知悉时间 T", s.resolved_known_at.isoformat() if s.resolved_known_at else ""),
        ("store_position", "事件日志位置", s.position),
        ("jurisdiction", "辖区", s.jurisdiction),
        ("policy_hash", "政策版本", s.policy.get("book_hash") or ""),
        ("rows", "行数", len(s.rows)),
    ):
        about.append([f"{key} {zh}", value])
    for key, total in s.totals().items():
        about.append([f"total.{label(key)}", Decimal(total)])
    # Document properties: a fixed creation time (the snapshot's T) instead of the clock's.
    fixed = (s.resolved_known_at or datetime(2000, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
    wb.properties.creator = "medical-aid ledger"
    wb.properties.created = fixed
    buf = io.BytesIO()
    wb.save(buf)
    return _normalise_zip(buf.getvalue(), fixed)


_MODIFIED = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")


def _normalise_zip(data: bytes, fixed: datetime) -> bytes:
    """Rewrite the XLSX zip with fixed entry times and a fixed modified time (openpyxl stamps the
    clock's time into both), keeping the entries' order and contents."""
    stamp = fixed.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = _MODIFIED.sub(rb"\g<1>" + stamp + rb"\g<2>", content)
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o600 << 16
            dst.writestr(entry, content)
    return out.getvalue()
