"""A recipient's statement exported for people (``ledger projections statement --csv/--xlsx``):
every line with its +08:00 time, the whole expense handle and the amount as a number, then the
totals per kind of line (aid decided, paid, offsets, repayments, ...). The table itself is
:func:`projections.statement.export_table`; this module only writes files."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger.money import fmt
from projections.statement import export_table

TOTALS_HEADER = ["合计", "笔数", "金额"]


def handles_of(app: Any, recipient: str) -> dict[str, str]:
    """Expense id → handle as recorded (``E004997``), from the recipient's own stream."""
    import uuid

    r = app.recipient(uuid.UUID(recipient))
    return {eid: acc.handle for eid, acc in r.expenses.items() if acc.handle}


def write_csv(rows: list[dict[str, Any]], path: Path, handles: dict[str, str] | None = None) -> Path:
    """UTF-8 with BOM (for Excel): the lines, a blank line, the totals per kind."""
    header, table, totals = export_table(rows, handles)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for line in table:
            w.writerow([fmt(v) if isinstance(v, Decimal) else v for v in line])
        w.writerow([])
        w.writerow(TOTALS_HEADER)
        for label, amount, count in totals:
            w.writerow([label, count, fmt(amount)])
    return path


def write_xlsx(rows: list[dict[str, Any]], path: Path, handles: dict[str, str] | None = None, title: str = "对账单") -> Path:
    """Sheet 对账单 (amounts as numbers, an autofilter, widths, the header frozen) and sheet 合计
    (lines and amount per kind, and their count in all)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    from infra.reports import _width

    header, table, totals = export_table(rows, handles)
    wb = Workbook()
    sheets = (
        (wb.active, title, header, table, {"金额"}),
        (wb.create_sheet(), "合计", TOTALS_HEADER, [[label, count, amount] for label, amount, count in totals], {"金额"}),
    )
    for ws, name, head, body, money in sheets:
        ws.title = name
        ws.append(head)
        for line in body:
            ws.append(line)
        for cell in ws[1]:
            cell.font = Font(bold=True)
        for i, col in enumerate(head, start=1):
            if col in money:
                for (cell,) in ws.iter_rows(min_row=2, max_row=ws.max_row, min_col=i, max_col=i):
                    cell.number_format = "#,##0.00"
            width = max([_width(col), *(_width(line[i - 1]) for line in body)])
            ws.column_dimensions[get_column_letter(i)].width = min(max(width + 2, 8), 80)
        ws.freeze_panes = "A2"
        ws.auto_filter.ref = f"A1:{get_column_letter(len(head))}{max(ws.max_row, 1)}"
    total = wb["合计"]
    total.append(["全部", sum(c for _, _, c in totals), None])
    total.cell(row=total.max_row, column=1).font = Font(bold=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path
