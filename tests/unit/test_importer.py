"""Reading a settlement file (infra.importer), no store needed: headers in Chinese or English
however spelt, cells as spreadsheets give them, line numbers as the officer sees them, and the
file-level refusals."""

from __future__ import annotations

import io
from datetime import date, datetime

import pytest
from openpyxl import Workbook, load_workbook

from infra import importer

ROW = ["310105195803122013", "住院", "2026/1/5", "20260106", "INV-1", "CN-H-1", "医院", "二级", "否", "1000", "800.5", "500"]


def _payload(data: bytes, name: str) -> list[dict]:
    table = importer.read_table(data, name)
    return [importer._payload(table, r) for r in table.rows]  # noqa: SLF001


def test_headers_in_either_language_however_spelt_and_cells_as_the_command_takes_them() -> None:
    header = "身份证号,Visit_Type,就诊日期 service_date,invoice.date,票据号,机构编码 facility_code,Facility.Kind,FACILITY_LEVEL,区属定点,总医疗费用,in scope,基本医疗保险支付*"
    text = header + "\n" + ",".join(ROW) + "\n"
    [p] = _payload(text.encode("gb18030"), "nov.csv")  # as Chinese Windows saves a CSV
    assert p == {
        "id_number": "310105195803122013", "visit_type": "inpatient", "service_date": "2026-01-05", "invoice_date": "2026-01-06",
        "invoice_no": "INV-1", "facility": {"code": "CN-H-1", "kind": "hospital", "level": 2, "district_designated": "false"},
        "total": "1000", "in_scope": "800.5", "basic_insurance_paid": "500",
    }


def test_xlsx_cells_numbers_dates_and_blank_rows_keep_their_line_numbers() -> None:
    book = Workbook()
    s = book.active
    s.append(["recipient", "visit_type", "service_date", "invoice_date", "invoice_no", "facility_kind", "facility_level", "total", "in_scope",
              "basic_insurance_paid", "district_designated"])
    s.append([None] * 11)  # line 2: blank, skipped
    s.append(["R", "outpatient", date(2026, 1, 5), datetime(2026, 1, 6), 20250001.0, "pharmacy", 1.0, 150, 120.25, 0, True])
    buffer = io.BytesIO()
    book.save(buffer)
    table = importer.read_table(buffer.getvalue(), "nov.xlsx")
    assert [r.line for r in table.rows] == [3]
    p = importer._payload(table, table.rows[0])  # noqa: SLF001
    assert (p["service_date"], p["invoice_date"], p["invoice_no"], p["facility"]["level"], p["total"], p["in_scope"]) == (
        "2026-01-05", "2026-01-06", "20250001", 1, 150, 120.25)
    assert p["facility"]["district_designated"] is True


@pytest.mark.parametrize(("text", "line", "field"), [
    ("身份证号,就诊类型\n1,门诊\n", 1, "service_date"),  # required columns missing
    ("身份证号,备注\n", 1, "header"),  # an unknown column
    ("", 1, "file"),  # nothing at all
    (",".join(importer.COLUMNS[i].zh for i in range(len(importer.COLUMNS))) + "\n", 1, "file"),  # a header and no rows
])
def test_file_level_refusals_name_the_line_and_the_column(text: str, line: int, field: str) -> None:
    with pytest.raises(importer.ImportFileError) as refused:
        importer.read_table(text.encode("utf-8"), "x.csv")
    assert any(p.line == line and p.field == field for p in refused.value.problems), refused.value.problems
    assert all(p.rule == importer.TEMPLATE_RULE for p in refused.value.problems)


def test_repeated_columns_extra_cells_and_other_kinds_of_file_are_refused() -> None:
    header = ",".join(c.zh for c in importer.COLUMNS)
    with pytest.raises(importer.ImportFileError, match="repeats"):
        importer.read_table(f"{header},total\n".encode(), "x.csv")
    with pytest.raises(importer.ImportFileError, match="more cells"):
        importer.read_table(f"{header}\n{','.join(['1'] * (len(importer.COLUMNS) + 1))}\n".encode(), "x.csv")
    with pytest.raises(importer.ImportFileError, match="neither"):
        importer.read_table(b"a", "x.xls")
    with pytest.raises(importer.ImportFileError, match="not an XLSX"):
        importer.read_table(b"not a zip", "x.xlsx")


def test_the_template_reads_back_and_the_receipt_key_follows_the_receipts_identity() -> None:
    for kind in ("csv", "xlsx"):
        for language in ("zh", "en"):
            data = importer.template(kind, language)
            with pytest.raises(importer.ImportFileError, match="no rows"):  # its header is accepted: only the rows are missing
                importer.read_table(data, f"t.{kind}")
    notes = load_workbook(io.BytesIO(importer.template("xlsx"))).worksheets[1]
    assert [c.value for c in notes["A"]][1:] == [c.zh for c in importer.COLUMNS]
    # R-CLR-1(b): the same receipt however typed is the same key; another person's is another key
    rid = "5d84a54b-757d-5695-9adb-6f193a0bc431"
    assert importer.command_id_for(rid, "cn-h-1 ", "ＩＮＶ-1") == importer.command_id_for(rid, "CN-H-1", "inv-1")
    assert importer.command_id_for(rid, "CN-H-1", "INV-1") != importer.command_id_for("0" + rid[1:], "CN-H-1", "INV-1")
    assert importer.rejects_name("nov.rejected.xlsx") == importer.rejects_name("nov.xlsx") == "nov.rejected.xlsx"
