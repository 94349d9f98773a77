"""The month's settlements, brought in from a file (R-PH-2 [002 3.2]: the expenses pushed by the
四医联动 system and the insurance settlement records).

A CSV or XLSX file holds one receipt a row, in the columns of ``record_expense`` under Chinese or
English headers (:data:`COLUMNS`; ``ledger import --template`` writes a template). The import:

1. reads the table (file-level problems: unreadable file, unknown or repeated column, a required
   column missing) - nothing is recorded from such a file;
2. checks EVERY row through the same command model as ``ledger do record_expense``
   (``commands.models.RecordExpense``), after naming the recipient (a resident id number is
   resolved with ``LedgerApp.recipient_id_for``; an unknown person is a row error) - each problem
   names its line, column, field and rule;
3. records the rows through the write path with group commit (``LedgerApp.run_many``: a
   hundred rows a transaction, each row its own command and idempotency record). Each row's ``command_id``
   is its receipt (R-CLR-1(b) [002 4.5]: facility code and invoice number, normalised by
   ``ledger.values.receipt_identity``) with its recipient, so a file imported again records
   nothing twice: the row answers with its first result.

A file with invalid rows records nothing unless ``skip_invalid``: then the good rows are recorded
and the rejected ones are written to a file of the same kind, with an error column, that the
officer can fix and import again. Adapters (the CLI, the HTTP upload, the console) call
:func:`read_table`, :func:`run_import` and :func:`rejects_file`, and nothing else.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from commands import models as m
from commands.app import LedgerApp, WriteConflict
from infra.input_errors import ID_NUMBER_RULE, describe_ledger_error, describe_validation
from ledger import errors
from ledger.aggregates import CommandRecord
from ledger.values import CST, receipt_identity, validate_id_number

#: The column the rejects file adds (ignored when that file is imported again).
ERROR_COLUMN = "错误 error"
XLSX_MEDIA = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA = "text/csv; charset=utf-8"
#: Rule cited by file-level problems (the table's shape), with the document that lists the columns.
TEMPLATE_RULE = "docs/import.md: the columns of record_expense (ledger import --template)"
RECIPIENT_RULE = "RULES.md §10: the recipient must be enrolled first"
STREET_RULE = "R-PH-1 [002 4.1]: a street handler acts for the recipients of their own street only"
SAME_RECEIPT_RULE = "R-CLR-1(b) [002 4.5]: one receipt (facility code and invoice number) is one record"


@dataclass(frozen=True)
class Column:
    """One column of the import file: the command field it fills and its headers."""

    field: str  # RecordExpense field, dotted for the facility; ``id_number`` names the recipient by id number
    zh: str
    en: str
    meaning: str
    example: str
    required: bool = False
    kind: str = "text"  # text, money, date, bool, level, choice
    choices: tuple[tuple[str, str], ...] = ()  # (Chinese word, command value)


_YES_NO = (("是", "true"), ("否", "false"))
COLUMNS: tuple[Column, ...] = (
    Column("id_number", "身份证号", "id_number", "the recipient's resident id number (or give 救助对象编号 recipient)", "310105195803122013"),
    Column("recipient", "救助对象编号", "recipient", "the recipient's id in the ledger (instead of 身份证号 id_number)", ""),
    Column("visit_type", "就诊类型", "visit_type", "outpatient 门诊, inpatient 住院, outpatient_critical 门诊大病", "门诊", True, "choice",
           (("门诊", "outpatient"), ("门急诊", "outpatient"), ("住院", "inpatient"), ("门诊大病", "outpatient_critical"))),
    Column("service_date", "就诊日期", "service_date", "service (discharge) date, YYYY-MM-DD", "2026-11-03", True, "date"),
    Column("invoice_date", "票据开具日期", "invoice_date", "invoice date, YYYY-MM-DD, on or after the service date", "2026-11-03", True, "date"),
    Column("invoice_no", "票据号", "invoice_no", "the invoice number (with the facility code: the receipt's identity, R-CLR-1(b))", "HY2611-0001", True),
    Column("facility.code", "机构编码", "facility_code", "the facility's code", "CN-CHC-HY"),
    Column("facility.kind", "机构类型", "facility_kind", "community_health_centre 社区卫生服务中心, hospital 医院, pharmacy 药店", "社区卫生服务中心", True, "choice",
           (("社区卫生服务中心", "community_health_centre"), ("社区", "community_health_centre"), ("医院", "hospital"),
            ("药店", "pharmacy"), ("零售药店", "pharmacy"))),
    Column("facility.level", "机构等级", "facility_level", "1, 2 or 3 (一级, 二级, 三级)", "1", True, "level"),
    Column("facility.district_designated", "区属定点", "district_designated", "是/否: a district-designated facility (R-4L-1 [000 第二条(二)2])", "是", False, "bool", _YES_NO),
    Column("facility.out_of_province", "异地就医", "out_of_province", "是/否: a facility outside the province", "否", False, "bool", _YES_NO),
    Column("total", "总医疗费用", "total", "total medical cost, yuan", "150.00", True, "money"),
    Column("in_scope", "医保范围内费用", "in_scope", "the part within basic insurance's scope, yuan", "120.00", True, "money"),
    Column("basic_insurance_paid", "基本医疗保险支付", "basic_insurance_paid", "paid by basic insurance, yuan", "30.00", True, "money"),
    Column("referred", "转诊", "referred", "是/否: referred by a community health centre (R-4L-1 [000 第二条(二)2])", "否", False, "bool", _YES_NO),
    Column("dispensing_only", "仅配药", "dispensing_only", "是/否: a visit only to collect medicine 配药 (R-4L-1 [000 第四条(二)2])", "否", False, "bool", _YES_NO),
    Column("critical_illness_related", "大病相关", "critical_illness_related", "是/否: related to a critical illness (R-INS-5 [002 3.6])", "否", False, "bool", _YES_NO),
    Column("critical_illness_evidence", "大病凭证", "critical_illness_evidence", "none 无, settlement_slip 结算单, receipt_marking 票据标注 (R-INS-5 [002 3.6])", "无", False, "choice",
           (("无", "none"), ("结算单", "settlement_slip"), ("大病结算单", "settlement_slip"), ("票据标注", "receipt_marking"))),
    Column("basic_insurance_settled", "医保已结算", "basic_insurance_settled", "是/否: basic insurance has settled the receipt (R-INS-4)", "是", False, "bool", _YES_NO),
    Column("handle", "费用编号", "handle", "the expense's handle, if the file gives one", ""),
)
_BY_FIELD = {c.field: c for c in COLUMNS}
_REQUIRED = [c for c in COLUMNS if c.required]


def _key(header: str) -> str:
    """A header as compared: NFKC, case folded, without spaces, stars, dots or underscores."""
    text = unicodedata.normalize("NFKC", header).casefold()
    return re.sub(r"[\s*._\-:：()（）]", "", text)


_HEADERS: dict[str, str] = {}
for _c in COLUMNS:
    for _h in (_c.zh, _c.en, _c.field, f"{_c.zh} {_c.en}", f"{_c.zh}{_c.en}"):
        _HEADERS[_key(_h)] = _c.field
_IGNORED = {_key(ERROR_COLUMN), _key("错误"), _key("error")}


# ------------------------------------------------------------------------------ reading a file
@dataclass(frozen=True)
class Problem:
    """What is wrong with a row (or, at line 1, with the file)."""

    line: int
    column: str
    field: str
    message: str
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "field": self.field, "message": self.message, "rule": self.rule}

    def text(self) -> str:
        where = f"{self.column} ({self.field})" if self.column and self.column != self.field else self.field
        return f"{where}: {self.message} [{self.rule}]"


class ImportFileError(Exception):
    """The file cannot be imported at all (nothing is recorded); ``problems`` says why."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.text() for p in problems))
        self.problems = problems


@dataclass
class Row:
    line: int
    cells: list[Any]  # as read, in the file's column order


@dataclass
class Table:
    kind: str  # csv or xlsx
    name: str
    headers: list[str]
    fields: list[str | None]  # the field each header fills (None: the rejects file's error column)
    rows: list[Row]


def kind_of(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".xlsx"):
        return "xlsx"
    if lower.endswith(".csv"):
        return "csv"
    raise ImportFileError([Problem(1, "", "file", f"{name!r} is neither a .csv nor an .xlsx file", TEMPLATE_RULE)])


def read_table(data: bytes, name: str) -> Table:
    """The file's header and rows; :class:`ImportFileError` when its shape is wrong."""
    kind = kind_of(name)
    grid = _xlsx_grid(data) if kind == "xlsx" else _csv_grid(data)
    header_at = next((i for i, row in enumerate(grid) if any(_blank(c) is False for c in row)), None)
    if header_at is None:
        raise ImportFileError([Problem(1, "", "file", "the file is empty: the first row names the columns", TEMPLATE_RULE)])
    header_line = header_at + 1
    raw_headers = list(grid[header_at])
    while raw_headers and _blank(raw_headers[-1]):
        raw_headers.pop()
    headers = ["" if h is None else str(h).strip() for h in raw_headers]
    problems: list[Problem] = []
    fields: list[str | None] = []
    seen: dict[str, str] = {}
    for h in headers:
        k = _key(h)
        if k in _IGNORED:
            fields.append(None)
            continue
        f = _HEADERS.get(k)
        if f is None:
            problems.append(Problem(header_line, h, "header", f"unknown column {h!r}: the columns are those of record_expense, "
                                    "in Chinese or English (ledger import --template writes them)", TEMPLATE_RULE))
        elif f in seen:
            problems.append(Problem(header_line, h, f, f"the column {h!r} repeats {seen[f]!r}", TEMPLATE_RULE))
        else:
            seen[f] = h
        fields.append(f)
    present = set(seen)
    if not {"id_number", "recipient"} & present:
        problems.append(Problem(header_line, "身份证号 id_number", "id_number",
                                "no column names the recipient: give 身份证号 id_number or 救助对象编号 recipient", TEMPLATE_RULE))
    for c in _REQUIRED:
        if c.field not in present:
            problems.append(Problem(header_line, f"{c.zh} {c.en}", c.field, f"the required column {c.zh} ({c.en}) is missing", TEMPLATE_RULE))
    if problems:
        raise ImportFileError(problems)
    rows = []
    for i, cells in enumerate(grid[header_at + 1 :], start=header_line + 1):
        cells = list(cells[: len(headers)]) + [None] * (len(headers) - len(cells))
        extra = grid[i - 1][len(headers) :]
        if any(_blank(c) is False for c in extra):
            raise ImportFileError([Problem(i, "", "row", f"line {i} has more cells than the header has columns", TEMPLATE_RULE)])
        if all(_blank(c) for c in cells):
            continue  # blank lines are no receipts
        rows.append(Row(i, cells))
    if not rows:
        raise ImportFileError([Problem(header_line, "", "file", "the file holds no rows below its header: nothing to import", TEMPLATE_RULE)])
    return Table(kind, name, headers, fields, rows)


def _blank(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _csv_grid(data: bytes) -> list[list[Any]]:
    # Spreadsheets save CSV as UTF-8 (often with a byte-order mark) or, on Chinese Windows, GB18030.
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ImportFileError([Problem(1, "", "file", "the CSV file is neither UTF-8 nor GB18030 text", TEMPLATE_RULE)])
    try:
        return [list(r) for r in csv.reader(io.StringIO(text, newline=""))]
    except csv.Error as exc:
        raise ImportFileError([Problem(1, "", "file", f"the CSV file cannot be read: {exc}", TEMPLATE_RULE)]) from None


def _xlsx_grid(data: bytes) -> list[list[Any]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a file that is not a workbook
        raise ImportFileError([Problem(1, "", "file", f"the file is not an XLSX workbook ({type(exc).__name__})", TEMPLATE_RULE)]) from None
    try:
        sheet = book.worksheets[0]  # the first sheet holds the rows (the template's second explains them)
        return [list(r) for r in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


# ------------------------------------------------------------------------------ a row as a command
_DATE_SHAPES = (re.compile(r"^(\d{4})[/.年-](\d{1,2})[/.月-](\d{1,2})日?$"), re.compile(r"^(\d{4})(\d{2})(\d{2})$"))
_LEVELS = {"一级": 1, "二级": 2, "三级": 3}


def _cell(col: Column, value: Any) -> Any:
    """A cell as the command model takes it; anything unrecognised goes on unchanged, so that the
    model refuses it with its own rule."""
    if isinstance(value, str):
        value = value.strip()
    if col.kind == "date":
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, str):
            for shape in _DATE_SHAPES:
                hit = shape.match(value)
                if hit:
                    try:
                        return date(*(int(x) for x in hit.groups())).isoformat()
                    except ValueError:
                        return value
        return value
    if col.kind == "level":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return _LEVELS.get(value, value)
        return value
    if col.kind in ("bool", "choice"):
        if isinstance(value, str):
            return dict(col.choices).get(value, value.lower())
        return value
    if col.kind == "money":
        return value
    # text: a number typed into a spreadsheet cell comes back as a number
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if col.field == "id_number" and isinstance(value, str):
        value = value.upper()
    return value


def _payload(table: Table, row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f, value in zip(table.fields, row.cells):
        if f is None or _blank(value):
            continue
        v = _cell(_BY_FIELD[f], value)
        if "." in f:
            parent, leaf = f.split(".", 1)
            out.setdefault(parent, {})[leaf] = v
        else:
            out[f] = v
    return out


def command_id_for(recipient: str, facility_code: str | None, invoice_no: str) -> str:
    """The row's idempotency key: its receipt (R-CLR-1(b) [002 4.5], ``receipt_identity``) and its
    recipient; hashed so that no invoice text (nor anything personal) is spelt out in the key."""
    identity = json.dumps([str(recipient), *receipt_identity(facility_code, invoice_no)], ensure_ascii=False)
    return "import:" + hashlib.sha256(identity.encode("utf-8")).hexdigest()[:40]


@dataclass
class Checked:
    row: Row
    command: m.RecordExpense | None = None
    problems: list[Problem] = field(default_factory=list)
    outcome: str = ""  # recorded, duplicate, already_imported, refused
    expense: str | None = None
    duplicate_of: str | None = None


class _People:
    """Recipients looked up once per import (existence and street)."""

    def __init__(self, ledger: LedgerApp):
        self.ledger = ledger
        self.streets: dict[str, str | None] = {}

    def street(self, rid: str) -> str | None:
        """The recipient's street, or None when no such recipient is enrolled."""
        if rid not in self.streets:
            try:
                self.streets[rid] = self.ledger.recipient(rid).street
            except errors.UnknownEntity:
                self.streets[rid] = None
        return self.streets[rid]


def _column(table: Table, f: str) -> str:
    for h, hf in zip(table.headers, table.fields):
        if hf == f:
            return h
    c = _BY_FIELD.get(f)
    return f"{c.zh} {c.en}" if c else f


def check_row(ledger: LedgerApp, table: Table, row: Row, people: _People, *, street: str | None, source: str) -> Checked:
    """The row as a ``RecordExpense``, or its problems (each with line, column, field and rule):
    the recipient's and every field's, so that one pass over the file names all of them."""
    out = Checked(row)
    payload = _payload(table, row)
    problem = lambda f, message, rule: out.problems.append(Problem(row.line, _column(table, f), f, message, rule))  # noqa: E731
    rid = _recipient(ledger, payload, people, street, problem)
    payload["recipient"] = rid or "-"  # the other fields are checked all the same
    payload["source"] = source
    code = (payload.get("facility") or {}).get("code") if isinstance(payload.get("facility"), dict) else None
    invoice = payload.get("invoice_no")
    if rid and isinstance(invoice, str) and invoice:
        payload["command_id"] = command_id_for(rid, code if isinstance(code, str) else None, invoice)
    try:
        command = m.RecordExpense.model_validate(payload)
    except ValidationError as exc:
        for p in describe_validation(exc, m.RecordExpense):
            problem(p["field"], p["message"], p["rule"])
    else:
        out.command = command if rid else None
    return out


def _recipient(ledger: LedgerApp, payload: dict[str, Any], people: _People, street: str | None,
               problem: Callable[[str, str, str], None]) -> str | None:
    """The recipient a row names, by 身份证号 (resolved with ``recipient_id_for``) or by the
    ledger's id; None, with the problem noted, when it names nobody enrolled (or, for a street
    handler, someone of another street: R-PH-1 [002 4.1])."""
    id_number = payload.pop("id_number", None)
    given = payload.pop("recipient", None)
    column = "id_number" if id_number is not None else "recipient"
    if id_number is not None and given is not None:
        problem("id_number", "gives both 身份证号 and 救助对象编号: one names the recipient", TEMPLATE_RULE)
        return None
    if id_number is not None:
        try:
            valid = validate_id_number(str(id_number), today=datetime.now(CST).date())
        except ValueError as exc:
            problem("id_number", f"{_mask(str(id_number))} is not a valid resident id number ({str(exc).split(': ', 1)[-1]})", ID_NUMBER_RULE)
            return None
        rid = str(ledger.recipient_id_for(valid))
    elif given is None:
        problem("id_number", "no recipient: give 身份证号 id_number or 救助对象编号 recipient", TEMPLATE_RULE)
        return None
    else:
        try:
            rid = str(uuid.UUID(str(given)))
        except ValueError:
            problem("recipient", f"{given!r} is not a recipient id", RECIPIENT_RULE)
            return None
    known_street = people.street(rid)
    if known_street is None:
        who = f"with the id number {_mask(str(id_number))}" if id_number is not None else rid
        problem(column, f"no recipient {who} is enrolled", RECIPIENT_RULE)
        return None
    if street is not None and known_street != street:
        problem(column, f"the recipient belongs to another street office ({street} may import only its own)", STREET_RULE)
        return None
    return rid


def _mask(id_number: str) -> str:
    """An id number as the ledger's lists show it: the region (6) and the last four only."""
    n = id_number
    return "*" * len(n) if len(n) < 10 else f"{n[:6]}{'*' * (len(n) - 10)}{n[-4:]}"


# ------------------------------------------------------------------------------ the import
@dataclass
class Report:
    name: str
    kind: str
    rows: list[Checked]
    skip_invalid: bool
    file_problems: list[Problem] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for c in self.rows if c.outcome == outcome)

    @property
    def invalid(self) -> list[Checked]:
        return [c for c in self.rows if c.problems and c.outcome != "refused"]

    @property
    def status(self) -> str:
        """``recorded`` (every row recorded or already there), ``invalid`` (nothing recorded: the
        file or some row is wrong), ``partial`` (some rows skipped or refused)."""
        if self.file_problems or (self.invalid and not self.skip_invalid):
            return "invalid"
        if self.invalid or self.count("refused"):
            return "partial"
        return "recorded"

    @property
    def exit_code(self) -> int:
        """0 every row recorded (or already recorded); 1 some rows refused or skipped; 2 the file
        is invalid and nothing was recorded."""
        return {"recorded": 0, "partial": 1, "invalid": 2}[self.status]

    def problems(self) -> list[Problem]:
        return self.file_problems + [p for c in self.rows for p in c.problems]

    def summary(self) -> dict[str, int]:
        return {
            "rows": len(self.rows),
            "recorded": self.count("recorded"),
            "duplicate": self.count("duplicate"),
            "already_imported": self.count("already_imported"),
            "refused": self.count("refused"),
            "invalid": len(self.invalid),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "status": self.status,
            "summary": self.summary(),
            "problems": [p.as_dict() for p in self.problems()],
            "rows": [
                {"line": c.row.line, "outcome": c.outcome or ("invalid" if c.problems else "not_recorded"), "expense": c.expense,
                 "duplicate_of": c.duplicate_of}
                for c in self.rows
            ],
        }


Progress = Callable[[str, int, int], None]
#: Rows per transaction when recording (the group commit's own default, ADR 0017).
GROUP_SIZE = 100


def run_import(ledger: LedgerApp, table: Table, *, skip_invalid: bool = False, street: str | None = None,
               source: str = "settlement_system", progress: Progress | None = None) -> Report:
    """Check every row, then (when none is invalid, or ``skip_invalid``) record the good ones,
    one command each (grouped a hundred to a transaction), in the file's order. ``street``
    limits the rows to that street's recipients (a street handler's upload, R-PH-1 [002 4.1]);
    ``progress(stage, done, total)``."""
    people = _People(ledger)
    checked: list[Checked] = []
    seen: dict[str, tuple[int, str]] = {}
    total = len(table.rows)
    for n, row in enumerate(table.rows, start=1):
        c = check_row(ledger, table, row, people, street=street, source=source)
        if c.command is not None and c.command.command_id:
            # the same receipt twice for one recipient in the file: the same figures are one
            # receipt met twice (recorded once); other figures cannot both be right
            body = c.command.model_dump_json()
            first = seen.setdefault(c.command.command_id, (row.line, body))
            if first[1] != body:
                c.problems.append(Problem(row.line, _column(table, "invoice_no"), "invoice_no",
                                          f"the same receipt is on line {first[0]} with other figures", SAME_RECEIPT_RULE))
                c.command = None
        checked.append(c)
        if progress:
            progress("checking", n, total)
    report = Report(table.name, table.kind, checked, skip_invalid)
    if report.invalid and not skip_invalid:
        return report
    todo = [c for c in checked if c.command is not None]
    # Which rows were imported before (their command_id is recorded, or met earlier in this
    # file): they answer with their first result and record nothing.
    met: set[str] = set()
    for c in todo:
        cid = c.command.command_id or ""  # type: ignore[union-attr]
        c.outcome = "already_imported" if cid in met or CommandRecord.id_for(cid) in ledger.repository else ""
        met.add(cid)
    fresh = [c for c in todo if not c.outcome]
    done = 0
    for start in range(0, len(fresh), GROUP_SIZE):
        chunk = fresh[start : start + GROUP_SIZE]
        # Group commit (commands.group): one transaction per GROUP_SIZE rows, each row with its own
        # savepoint and idempotency record; a conflict at commit re-runs the rows one by one.
        outcomes = ledger.run_many([c.command for c in chunk], GROUP_SIZE)  # type: ignore[misc]
        if len(outcomes) != len(chunk):  # not one outcome a row: ask each row (idempotent) on its own
            outcomes = [_run_one(ledger, c.command) for c in chunk]  # type: ignore[arg-type]
        for c, outcome in zip(chunk, outcomes):
            _note(c, outcome, table)
        done += len(chunk)
        if progress:
            progress("recording", done, len(todo))
    # Rows imported before answer with their first result (a read: nothing is written), or are
    # refused when their figures changed since (IDEMPOTENCY_MISMATCH).
    for c in todo:
        if c.outcome == "already_imported":
            _note(c, _run_one(ledger, c.command), table)  # type: ignore[arg-type]
            done += 1
            if progress:
                progress("recording", done, len(todo))
    return report


def _run_one(ledger: LedgerApp, cmd: m.RecordExpense) -> Any:
    try:
        return ledger.run(cmd)
    except (WriteConflict, errors.LedgerError) as exc:
        return exc


def _note(c: Checked, outcome: Any, table: Table) -> None:
    """What recording the row did: recorded, flagged as a duplicate, already imported, refused."""
    already = c.outcome == "already_imported"
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, (WriteConflict, errors.LedgerError)):
            raise outcome
        for p in describe_ledger_error(outcome):
            message = p["message"]
            if p.get("code") == "IDEMPOTENCY_MISMATCH":
                message = ("this receipt was already imported for this recipient with other figures: one receipt is recorded "
                           "once; correct it in the ledger rather than by importing it again")
                p = {**p, "field": "invoice_no", "rule": SAME_RECEIPT_RULE}
            c.problems.append(Problem(c.row.line, _column(table, p["field"]), p["field"], message, p["rule"]))
        c.outcome = "refused"
        return
    result = outcome
    if result.status != "accepted":
        c.problems.append(Problem(c.row.line, _column(table, result.field_name or "input"), result.field_name or "input",
                                  result.message or result.code or "refused", result.rule or result.code or ""))
        c.outcome = "refused"
        return
    c.expense = result.ids.get("expense")
    c.duplicate_of = result.ids.get("duplicate_of")
    c.outcome = "already_imported" if already else ("duplicate" if c.duplicate_of else "recorded")


# ------------------------------------------------------------------------------ files written
def rejects_file(table: Table, report: Report) -> bytes | None:
    """The rows not recorded (invalid or refused), as the file was, with an error column: fix
    them and import the file again. None when every row went in."""
    bad = [c for c in report.rows if c.problems]
    if not bad:
        return None
    keep = [i for i, f in enumerate(table.fields) if f is not None]  # a previous error column goes
    headers = [table.headers[i] for i in keep] + [ERROR_COLUMN]
    rows = [[_plain(c.row.cells[i]) for i in keep] + ["; ".join(p.text() for p in c.problems)] for c in bad]
    return _write(table.kind, headers, rows)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def template(kind: str, language: str = "zh") -> bytes:
    """An empty import file: the header row (Chinese or English), and in an XLSX a second sheet
    explaining each column."""
    headers = [c.zh if language == "zh" else c.en for c in COLUMNS]
    if kind == "csv":
        return _write("csv", headers, [])
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    sheet.title = "结算记录 settlements"
    sheet.append(headers)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for i, c in enumerate(COLUMNS, start=1):
        sheet.column_dimensions[sheet.cell(1, i).column_letter].width = max(12, len(c.en) + 4)
        if c.kind in ("text",) or c.field == "id_number":
            for r in range(2, 1002):  # id numbers and invoice numbers stay text, never numbers
                sheet.cell(r, i).number_format = "@"
    sheet.freeze_panes = "A2"
    notes = book.create_sheet("说明 columns")
    notes.append(["表头 header", "English header", "字段 field", "必填 required", "含义 meaning", "示例 example"])
    for cell in notes[1]:
        cell.font = Font(bold=True)
    for c in COLUMNS:
        required = "是 yes" if c.required else ("二选一 one of the two" if c.field in ("id_number", "recipient") else "")
        notes.append([c.zh, c.en, c.field, required, c.meaning, c.example])
    for letter, width in zip("ABCDEF", (16, 26, 30, 20, 80, 22)):
        notes.column_dimensions[letter].width = width
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _write(kind: str, headers: list[str], rows: Iterable[list[Any]]) -> bytes:
    if kind == "csv":
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(headers)
        writer.writerows(rows)
        return text.getvalue().encode("utf-8-sig")  # with a byte-order mark: spreadsheets then read it as UTF-8
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "rejected"
    sheet.append(headers)
    for r in rows:
        sheet.append(r)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def media_type(kind: str) -> str:
    return XLSX_MEDIA if kind == "xlsx" else CSV_MEDIA


def rejects_name(name: str) -> str:
    """``settlements-2026-11.xlsx`` → ``settlements-2026-11.rejected.xlsx``."""
    stem, dot, ext = name.rpartition(".")
    base = stem if dot else name
    base = base.removesuffix(".rejected")
    return f"{base}.rejected.{ext if dot else 'csv'}"
