"""Bitemporal snapshots: the books as effective on a valid date V, as known at a time T (R-TIME-3).

R-TIME-3 [RULES.md §1]: a point-in-time snapshot is taken at a pair (valid date V, known-at time
T): the state of every account and cap as effective on V, from the events recorded up to T. The
snapshot is computed from the event log, or from cuts of it taken as it was recorded, never from
the current state of the other read models, so it is right for any past T. Per recipient, the
categories held on V (R-CAT-1), the street and the fund, it gives:

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

Two ways to the same rows: :func:`take_snapshot` replays the log (:func:`commands.timeline.cut`;
the reference), :func:`snapshot_from_cuts` reads the persisted cuts (``projections.cuts``) and
rebuilds only the recipients a cut does not cover; :func:`write_export` streams the files row by
row.

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
import shutil
import tempfile
import uuid
import zipfile
from json.encoder import encode_basestring as _json_text  # json.dumps(text, ensure_ascii=False)
from collections.abc import Iterable, Iterator
from pathlib import Path
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, BinaryIO

from commands.app import LedgerApp
from commands.repository import Kept
from commands.timeline import Cut, cut, policy_versions
from ledger import engine, reconcile
from ledger.aggregates import Recipient
from ledger.eligibility import categories_on
from ledger.money import ZERO, fmt, money
from ledger.policy.params import PolicyBook
from ledger.values import CATEGORY_PRECEDENCE, CATEGORY_ZH, CST, FUND_ZH, FUNDS, local_date

FORMATS = ("json", "csv", "xlsx")


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
    # aid_paid − aid_due explained per fund (ledger.reconcile, R-CLR-2, R-CLR-3):
    # aid_paid − aid_due = clearing_owed − supplementary_pending − decided_unpaid + uncleared
    *reconcile.COLUMNS,
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

    def manifest(self, files: dict[str, bytes], chain_head: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()}
        return self.manifest_for(meta, len(self.rows), self.totals(), chain_head)

    def manifest_for(self, files: dict[str, dict[str, Any]], rows: int, totals: dict[str, str], chain_head: dict[str, Any] | None = None) -> dict[str, Any]:
        """The manifest: V, T, the store position, the policy known at T, the row count, totals,
        each file's SHA-256 and (when given) the integrity-chain head at the store position."""
        out = {
            "kind": "medical-aid ledger snapshot (R-TIME-3)",
            "valid": self.valid.isoformat(),
            "valid_requested": self.valid_requested.isoformat() if self.valid_requested else None,
            "known_at": self.resolved_known_at.isoformat() if self.resolved_known_at else None,
            "known_at_requested": self.known_at.astimezone(CST).isoformat() if self.known_at else None,
            "store_position": self.position,
            "jurisdiction": self.jurisdiction,
            "policy": self.policy,
            "recipients": self.recipients,
            "rows": rows,
            "columns": [label(k) for k, _ in COLUMNS],
            "totals": totals,
            "files": dict(sorted(files.items())),
        }
        if chain_head is not None:
            out["chain_head"] = chain_head
        return out

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
        for column, by_fund in reconcile.explain(r, eid, a.by_fund if a.granted else {}).items():
            _add(per_fund, column, by_fund)
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
    return _row_dicts(str(r.id), r.street, held, per_fund)


def _row_dicts(rid: str, street: str, held: list[str], per_fund: dict[str, dict[str, Decimal]]) -> list[dict[str, Any]]:
    """One row per fund with money, funds in their fixed order."""
    rows = []
    for f in sorted(per_fund, key=lambda f: (FUNDS.index(f) if f in FUNDS else len(FUNDS), f)):
        money = {k: per_fund[f].get(k, ZERO) for k in MONEY_COLUMNS}
        if not any(money.values()):
            continue
        rows.append(
            {
                "recipient": rid,
                "street": street,
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
    buf = io.BytesIO()
    xlsx = XlsxWriter(s, buf)
    for row in s.rows:
        xlsx.add(row)
    xlsx.close()
    return buf.getvalue()


# --------------------------------------------------------------------------- streaming


def _nest(obj: Any, level: int) -> bytes:
    """``obj`` as it appears ``level`` deep in an ``indent=2`` sorted JSON document."""
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True).replace("\n", "\n" + "  " * level).encode("utf-8")


def _flat(obj: dict[str, Any], level: int) -> bytes:
    """A flat dict of scalars as ``_nest`` gives it, without the pure-Python indenting encoder
    (json builds it anew on every call with ``indent``: most of the export's time); text goes
    straight to json's own string encoder (what ``json.dumps(text, ensure_ascii=False)`` calls)."""
    if not obj:
        return b"{}"
    pad = "\n" + "  " * (level + 1)
    body = ",".join(f"{pad}{_json_text(k)}: {_json_scalar(v)}" for k, v in sorted(obj.items()))
    return (f"{{{body}\n" + "  " * level + "}").encode("utf-8")


def _json_scalar(value: Any) -> str:
    return _json_text(value) if type(value) is str else json.dumps(value, ensure_ascii=False)


_MONEY_SET = frozenset(MONEY_COLUMNS)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (fmt(v) if k in _MONEY_SET else v) for k, v in row.items()}


class RenderedRow(dict):
    """A snapshot row with its text form (``plain``: :func:`_plain`) and its line of the JSON
    export (``flat``: :func:`_flat`) made once. A service keeps each recipient's rows under the cut
    they came from (``snapshot_from_cuts``'s ``kept``) and writes the same rows into many exports;
    each export gets a copy of the row with the same renders. Not to be changed once made."""

    __slots__ = ("plain", "flat")

    @classmethod
    def of(cls, row: dict[str, Any]) -> "RenderedRow":
        out = cls(row)
        out.plain = _plain(row)
        out.flat = _flat(out.plain, 2)
        return out

    def copy(self) -> "RenderedRow":  # type: ignore[override]
        out = RenderedRow(self)
        out.plain, out.flat = self.plain, self.flat
        return out


class _Hashing:
    """A binary sink that hashes and counts what passes through it."""

    def __init__(self, sink: BinaryIO):
        self.sink, self.sha, self.size = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.sink.write(data)


class JsonWriter:
    """The JSON export, row by row: the same bytes as ``_json_bytes(snapshot.document())``."""

    def __init__(self, head: Snapshot, out: Any):
        self.head, self.out, self.first = head, out, True
        self.totals = {k: ZERO for k in MONEY_COLUMNS}
        out.write(b'{\n  "columns": ' + _nest([{"key": k, "zh": zh, "label": label(k)} for k, zh in COLUMNS], 1) + b',\n  "rows": [')

    def add(self, row: dict[str, Any], plain: dict[str, Any] | None = None) -> None:
        for k in MONEY_COLUMNS:
            self.totals[k] += row[k]
        flat = row.flat if type(row) is RenderedRow else _flat(plain if plain is not None else _plain(row), 2)
        self.out.write((b"\n    " if self.first else b",\n    ") + flat)
        self.first = False

    def close(self) -> None:
        totals = {k: fmt(v) for k, v in self.totals.items()}
        self.out.write((b"]" if self.first else b"\n  ]") + b',\n  "snapshot": ' + _nest(self.head.header(), 1) + b',\n  "totals": ' + _nest(totals, 1) + b"\n}\n")


class CsvWriter:
    """The CSV export, row by row (BOM, CRLF): the same bytes as ``_csv_bytes``."""

    def __init__(self, head: Snapshot, out: Any):
        self.out = out
        self.buf = io.StringIO(newline="")
        self.writer = csv.writer(self.buf, lineterminator="\r\n")
        self.out.write(b"\xef\xbb\xbf")
        self._line([label(k) for k, _ in COLUMNS])

    def _line(self, values: list[Any]) -> None:
        self.buf.seek(0)
        self.buf.truncate()
        self.writer.writerow(values)
        self.out.write(self.buf.getvalue().encode("utf-8"))

    def add(self, row: dict[str, Any], plain: dict[str, Any] | None = None) -> None:
        if plain is None:
            plain = _plain(row)
        self._line([plain[k] for k, _ in COLUMNS])

    def close(self) -> None:
        pass


#: Column widths (characters) of the snapshot sheet, by key.
_WIDTHS = {"recipient": 38, "street": 14, "category": 24, "category_zh": 20, "fund": 12, "fund_zh": 14}


class XlsxWriter:
    """The XLSX export: amounts as numbers with two decimals, a 合计 totals row, column widths and
    an autofilter on each sheet; entry and document times fixed (T), so the bytes repeat.

    openpyxl (write-only mode) makes the package: the header row, the styles, the "about" sheet,
    the workbook with its filter names. The data rows, ~18,000 of 16 cells for a district, would
    cost several seconds through openpyxl's per-cell objects: they are encoded here, as the XML
    openpyxl writes for the same values (:func:`_xlsx_row`), into a temporary file, and spliced
    into the sheet with the totals row when the zip is rewritten (:func:`_normalise_zip`)."""

    def __init__(self, head: Snapshot, out: Any):
        from openpyxl import Workbook
        from openpyxl.utils import get_column_letter

        self.head, self.out, self.count = head, out, 0
        self.totals = {k: ZERO for k in MONEY_COLUMNS}
        self.wb = Workbook(write_only=True)
        self.ws = self.wb.create_sheet("snapshot 快照")
        self.last_col = get_column_letter(len(COLUMNS))
        for i, (k, _) in enumerate(COLUMNS, start=1):
            self.ws.column_dimensions[get_column_letter(i)].width = _WIDTHS.get(k, 18)
        self.ws.freeze_panes = "A2"
        self.ws.append([self._cell(label(k), bold=True) for k, _ in COLUMNS])
        # The style ids of the cells written here, registered in openpyxl's order of first use
        # (bold: the header; 0.00: the first amount; bold 0.00: the totals), as openpyxl would.
        self.bold = self._cell("", bold=True).style_id
        self.amount: int | None = None
        self.cols = [(get_column_letter(i), k, k in MONEY_COLUMNS) for i, (k, _) in enumerate(COLUMNS, start=1)]
        self.rows = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._text: dict[str, str] = {}
        # A data row of text then amounts (what _row_dicts makes) in one format: the same XML.
        n_text = len(COLUMNS) - len(MONEY_COLUMNS)
        self._kinds = (str,) * n_text + (Decimal,) * len(MONEY_COLUMNS)
        self._plain_row = "".join(
            ['<row r="{0}">']
            + [f'<c r="{col}{{0}}" t="inlineStr">{{{i}}}</c>' for i, (col, _, _) in enumerate(self.cols[:n_text], start=1)]
            + [f'<c r="{col}{{0}}" s="{{{len(COLUMNS) + 1}}}" t="n"><v>{{{i}}}</v></c>' for i, (col, _, _) in enumerate(self.cols[n_text:], start=n_text + 1)]
            + ["</row>"]
        )

    def _cell(self, value: Any, *, bold: bool = False, money: bool = False) -> Any:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Font

        cell = WriteOnlyCell(self.ws, value=value)
        if bold:
            cell.font = Font(bold=True)
        if money:
            cell.number_format = "0.00"
        return cell

    def _string(self, value: str) -> str:
        """The ``<is>`` part of an inline-string cell (memoised: streets, categories, funds repeat)."""
        done = self._text.get(value)
        if done is None:
            done = _xlsx_inline(value)
            if len(self._text) < 4096:
                self._text[value] = done
        return done

    def _row(self, n: int, values: list[Any], style: int, money_style: int) -> bytes:
        """Row ``n`` as openpyxl writes it: no cell for None, strings inline, numbers ``%.16g`` (exact
        for amounts under 10^12 with two decimals)."""
        parts = [f'<row r="{n}">']
        s = f' s="{style}"' if style else ""
        ms = f' s="{money_style}"'
        for (col, _, _), value in zip(self.cols, values):
            kind = type(value)
            if kind is Decimal or (kind in (int, float)):
                parts.append(f'<c r="{col}{n}"{ms} t="n"><v>{"%.16g" % value}</v></c>')
            elif isinstance(value, str):
                parts.append(f'<c r="{col}{n}"{s} t="inlineStr">{self._string(value)}</c>')
            elif value is not None:
                raise ValueError(f"Cannot convert {value!r} to Excel")
        parts.append("</row>")
        return "".join(parts).encode("ascii")

    def add(self, row: dict[str, Any], plain: dict[str, Any] | None = None) -> None:
        for k in MONEY_COLUMNS:
            self.totals[k] += row[k]
        self.count += 1
        if self.amount is None:
            self.amount = self._cell(0, money=True).style_id
        values = [row[k] for _, k, _ in self.cols]
        if tuple(map(type, values)) == self._kinds:
            n_text = len(self._kinds) - len(MONEY_COLUMNS)
            self.rows.write(self._plain_row.format(
                self.count + 1, *map(self._string, values[:n_text]), *("%.16g" % x for x in values[n_text:]), self.amount,
            ).encode("ascii"))
        else:
            self.rows.write(self._row(self.count + 1, values, 0, self.amount))

    def close(self) -> None:
        s = self.head
        first_money = len(COLUMNS) - len(MONEY_COLUMNS)
        totals_row = self._row(
            self.count + 2,
            ["合计 total"] + [None] * (first_money - 1) + [money(self.totals[k]) for k in MONEY_COLUMNS],
            self.bold, self._cell(0, bold=True, money=True).style_id,
        )
        self.ws.auto_filter.ref = f"A1:{self.last_col}{self.count + 1}"
        about = self.wb.create_sheet("about 说明")
        about.column_dimensions["A"].width = 48
        about.column_dimensions["B"].width = 30
        lines: list[list[Any]] = [[self._cell("key 项目", bold=True), self._cell("value 值", bold=True)]]
        for key, zh, value in (
            ("valid", "有效日期 V", s.valid.isoformat()),
            ("known_at", "知悉时间 T", s.resolved_known_at.isoformat() if s.resolved_known_at else ""),
            ("store_position", "事件日志位置", s.position),
            ("jurisdiction", "辖区", s.jurisdiction),
            ("policy_hash", "政策版本", s.policy.get("book_hash") or ""),
            ("rows", "行数", self.count),
        ):
            lines.append([f"{key} {zh}", value])
        for key in MONEY_COLUMNS:
            lines.append([f"total.{label(key)}", self._cell(money(self.totals[key]), money=True)])
        for line in lines:
            about.append(line)
        about.auto_filter.ref = f"A1:B{len(lines)}"
        # Document properties: a fixed creation time (the snapshot's T) instead of the clock's.
        fixed = (s.resolved_known_at or datetime(2000, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
        self.wb.properties.creator = "medical-aid ledger"
        self.wb.properties.created = fixed
        try:
            self.rows.write(totals_row)
            self.rows.seek(0)
            with tempfile.TemporaryFile() as tmp:
                self.wb.save(tmp)
                tmp.seek(0)
                _normalise_zip(tmp, self.out, fixed, {self.ws.path.lstrip("/"): self.rows})
        finally:
            self.rows.close()


#: XML text as lxml writes it in openpyxl's sheets: ASCII, ``&<>`` and CR escaped, other
#: characters beyond ASCII as decimal character references.
_XML_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _xlsx_inline(value: str) -> str:
    """An inline string as openpyxl writes it: at most 32,767 characters, none of the control
    characters a worksheet refuses, ``xml:space`` kept when it starts or ends with white space.
    (openpyxl would make a text starting with ``=`` a formula: the ledger's text is text.)"""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.utils.exceptions import IllegalCharacterError

    value = value[:32767]
    if ILLEGAL_CHARACTERS_RE.search(value):
        raise IllegalCharacterError(f"{value} cannot be used in worksheets.")
    if value == "":
        return ""
    text = value.translate(_XML_TEXT).encode("ascii", "xmlcharrefreplace").decode("ascii")
    space = ' xml:space="preserve"' if value != value.strip() else ""
    return f"<is><t{space}>{text}</t></is>"


_MODIFIED = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")


def _normalise_zip(src_file: Any, out: Any, fixed: datetime, rows: dict[str, BinaryIO] | None = None) -> None:
    """Copy the XLSX zip with fixed entry times and a fixed modified time (openpyxl stamps the
    clock's time into both), keeping the entries' order and contents; entry by entry. ``rows``:
    sheet entry → a file of encoded rows, copied in just before the end of that sheet's data."""
    stamp = fixed.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    target = io.BytesIO() if not hasattr(out, "seek") else out
    with zipfile.ZipFile(src_file) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o600 << 16
            if info.filename == "docProps/core.xml":
                dst.writestr(entry, _MODIFIED.sub(rb"\g<1>" + stamp + rb"\g<2>", src.read(info.filename)))
                continue
            if rows and info.filename in rows:
                sheet = src.read(info.filename)
                end = sheet.index(b"</sheetData>")
                with dst.open(entry, "w") as b:
                    b.write(sheet[:end])
                    shutil.copyfileobj(rows[info.filename], b, 1 << 20)
                    b.write(sheet[end:])
                continue
            with src.open(info) as a, dst.open(entry, "w") as b:
                shutil.copyfileobj(a, b, 1 << 20)
    if target is not out:
        out.write(target.getvalue())


WRITERS = {"json": JsonWriter, "csv": CsvWriter, "xlsx": XlsxWriter}


def write_export(
    head: Snapshot, rows: Iterable[dict[str, Any]], formats: Iterable[str], out: Path, chain_head: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the exports of a snapshot whose rows come one at a time (``rows``; ``head.rows`` is
    not used) into ``out``, then the manifest; returns the manifest. Memory stays bounded: each
    row goes to every file as it comes (the XLSX through openpyxl's write-only mode)."""
    chosen = sorted(set(formats), key=FORMATS.index)
    out.mkdir(parents=True, exist_ok=True)
    files = {f: open(out / f"{head.stem}.{f}", "wb") for f in chosen}  # noqa: SIM115 - closed below
    try:
        sinks = {f: _Hashing(files[f]) for f in chosen}
        writers = {f: WRITERS[f](head, sinks[f]) for f in chosen}
        count = 0
        totals = {k: ZERO for k in MONEY_COLUMNS}
        texts = [w for f, w in writers.items() if f != "xlsx"]  # they share the row's text form
        for row in rows:
            count += 1
            for k in MONEY_COLUMNS:
                totals[k] += row[k]
            plain = (row.plain if type(row) is RenderedRow else _plain(row)) if texts else None
            for w in writers.values():
                w.add(row, plain)
        for w in writers.values():
            w.close()
    finally:
        for f in files.values():
            f.close()
    meta = {f"{head.stem}.{f}": {"sha256": sinks[f].sha.hexdigest(), "bytes": sinks[f].size} for f in chosen}
    manifest = head.manifest_for(meta, count, {k: fmt(v) for k, v in totals.items()}, chain_head)
    (out / f"{head.stem}.manifest.json").write_bytes(_json_bytes(manifest))
    return manifest


# --------------------------------------------------------------------------- from persisted cuts


def snapshot_from_cuts(
    app: LedgerApp, engine: Any, valid: date | None = None, known_at: datetime | None = None, *, catch_up: bool = True,
    kept: Kept | None = None,
) -> tuple[Snapshot, Iterator[dict[str, Any]]]:
    """R-TIME-3 from the persisted cuts (``projections.cuts``, ADR 0010): the same rows as
    :func:`take_snapshot`, recipient by recipient. The cuts view is first brought to the log's
    head; "known at T" is then range reads on the recorded-time table; each recipient's latest cut
    at or before T is used when it was taken at the recipient and policy versions T knew, and a
    recipient touched since (or under other policy) is rebuilt from its own stream up to T.
    Returns the header (``rows`` left empty) and the rows in the export's order. ``kept``: for a
    service answering many snapshots, each recipient's rows as earlier snapshots of this process
    computed them from a cut, under the cut's key (recipient, period, the recipient and policy
    versions it was taken at, when it was recorded, its street) and V: a recipient whose cut has
    not moved is not read and summed again. Used and filled."""
    from ledger.policy import packs as policy_packs
    from projections import cuts
    from projections.common import reading

    if catch_up:  # else the caller has just brought the view to the head (the service's followed runner)
        cuts.catch_up(engine, app.recorder, app.mapper)
    with reading(engine) as conn:
        k = cuts.known_at(conn, known_at)
    policy = app.policy(version=k.policy_version) if k.policy_version else None
    book = policy.book if policy is not None else PolicyBook()
    v = valid or today()
    reuse = policy is None or tuple(policy_packs.JURISDICTIONS.get(policy.jurisdiction, ())) == tuple(app.schemes)
    the_cut = Cut(known_at=known_at, position=k.position, last_recorded_at=k.last_recorded_at)
    order: list[tuple[str, str, str | None]] = []
    rebuilt: dict[str, list[dict[str, Any]]] = {}
    cut_keys: dict[str, tuple] = {}
    for rid, (version, c) in k.recipients.items():
        if reuse and c is not None and c["recipient_version"] == version and c["policy_version"] == k.policy_version:
            order.append((c["street"], rid, c["period"]))
            cut_keys[rid] = (rid, c["period"], c["recipient_version"], c["policy_version"], c["recorded_us"], c["street"], v)
        else:
            r = app.repository.get(uuid.UUID(rid), version=version)
            rebuilt[rid] = _recipient_rows(r, v, the_cut, book, app.schemes)
            order.append((r.street, rid, None))
    order.sort(key=lambda o: (o[0], o[1]))
    head = Snapshot(
        valid=v,
        known_at=known_at,
        resolved_known_at=k.resolved_known_at,
        position=k.position,
        jurisdiction=app.jurisdiction,
        policy=policy_versions(policy),
        rows=[],
        recipients=len(k.recipients),
        valid_requested=valid,
    )

    def rows() -> Iterator[dict[str, Any]]:
        with reading(engine) as conn:
            for part in cuts.iter_chunks(order, 500):
                known = {rid: kept.get(cut_keys[rid]) for _, rid, period in part if period is not None} if kept is not None else {}
                states = cuts.states(conn, [(rid, period) for _, rid, period in part if period is not None and known.get(rid) is None])
                for street, rid, period in part:
                    if period is None:
                        yield from rebuilt.pop(rid)
                    elif known.get(rid) is not None:
                        yield from (row.copy() for row in known[rid])
                    else:
                        st = states[rid]
                        computed = _row_dicts(rid, street, cuts.held_on(st, v), cuts.money_on(st, v))
                        if kept is not None:
                            rendered = tuple(RenderedRow.of(row) for row in computed)
                            kept.put(cut_keys[rid], rendered)
                            computed = [row.copy() for row in rendered]
                        yield from computed

    return head, rows()
