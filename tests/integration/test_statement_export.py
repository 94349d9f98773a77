"""A recipient's statement exported for people, on SQLite and PostgreSQL: CSV and XLSX with +08:00
times, whole expense handles, amounts as numbers and totals per kind of line that add up."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

from openpyxl import load_workbook

from clearing_story import Story, app_on, at, id_number, parse
from commands import models as m
from infra import statement_export
from infra.settings import Settings
from projections import statement
from projections_support import engine_for, runner


def test_a_statement_exports_to_csv_and_xlsx_with_totals(settings_for: Settings, database_url: str, tmp_path: Path) -> None:
    story = Story(app_on(settings_for))
    story.person("R1", id_number(71), "low_income")
    rid = str(story.recipient("R1").id)
    for n, amount in ((1, "100.00"), (2, "250.00")):
        result = story.app.run(m.RecordExpense(
            recipient=rid, handle=f"E00000{n}", visit_type="outpatient",
            facility={"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CHC-1"},
            service_date="2026-03-02", invoice_date="2026-03-02", invoice_no=f"INV-{n}", total=amount, in_scope=amount,
            basic_insurance_paid="0.00", at=parse(at("2026-03-02", "23:30:00")),
        ))
        story.runner.expenses[f"E{n}"] = result.ids["expense"]
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1", "E2"])
    engine = engine_for(database_url)
    try:
        runner(engine, story.app, names=["statement"]).catch_up()
        with engine.connect() as conn:
            rows = statement.for_recipient(conn, rid)
    finally:
        engine.dispose()
    handles = statement_export.handles_of(story.app, rid)
    assert sorted(handles.values()) == ["E000001", "E000002"]

    path = statement_export.write_csv(rows, tmp_path / "s.csv", handles)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        lines = list(csv.reader(fh))
    header, body = lines[0], lines[1:lines.index([])]
    totals = {r[0]: (int(r[1]), Decimal(r[2])) for r in lines[lines.index([]) + 2:]}
    recorded = [r for r in body if r[1] == "医疗费用"]
    # the expense recorded at 23:30 in Shanghai is shown on its own day, in +08:00, with its whole handle
    assert [(r[0], r[2], r[4]) for r in recorded] == [
        ("2026-03-02T23:30:00+08:00", "E000001", "100.00"),
        ("2026-03-02T23:30:00+08:00", "E000002", "250.00"),
    ]
    assert all(r[0].endswith("+08:00") for r in body)
    assert totals["医疗费用"] == (2, Decimal("350.00"))
    decided = [Decimal(r[4]) for r in body if r[1] == "救助核定"]
    paid = [Decimal(r[4]) for r in body if r[1] == "救助发放"]
    assert totals["救助核定"] == (2, sum(decided)) and totals["救助发放"] == (len(paid), sum(paid)) and sum(paid) > 0

    book = load_workbook(statement_export.write_xlsx(rows, tmp_path / "s.xlsx", handles))
    sheet = book["对账单"]
    assert [c.value for c in sheet[1]] == header
    values = [[c.value for c in row] for row in sheet.iter_rows(min_row=2)]
    assert len(values) == len(body)
    amounts = [v[4] for v in values if v[1] == "医疗费用"]
    assert amounts == [100, 250] and all(isinstance(a, (int, float)) for a in amounts)
    assert sheet.auto_filter.ref == f"A1:F{len(body) + 1}"
    summed = {r[0].value: (r[1].value, r[2].value) for r in book["合计"].iter_rows(min_row=2) if r[2].value is not None}
    assert summed["医疗费用"] == (2, 350)
