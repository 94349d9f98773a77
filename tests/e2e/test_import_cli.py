"""``ledger import FILE`` end to end through the CLI, on SQLite and PostgreSQL: CSV and XLSX,
Chinese and English headers, every bad row named by line, column, field and rule with nothing
recorded, ``--skip-invalid`` with the rejects file fixed and imported again, a second import that
records nothing twice, and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path

from openpyxl import Workbook, load_workbook

from infra.settings import Settings
from infra.wiring import build_app
from ledger.values import CST

WANG = "310105195803122013"  # enrolled at 华阳路街道
LI = "11010519491231002X"  # enrolled at 天山路街道
NOBODY = "310105194003120015"  # a valid number nobody is enrolled under
DAY = (datetime.now(CST).date() - timedelta(days=6)).isoformat()

ZH = ["身份证号", "就诊类型", "就诊日期", "票据开具日期", "票据号", "机构编码", "机构类型", "机构等级", "区属定点", "总医疗费用", "医保范围内费用", "基本医疗保险支付"]
EN = ["id_number", "visit_type", "service_date", "invoice_date", "invoice_no", "facility_code", "facility_kind", "facility_level",
      "district_designated", "total", "in_scope", "basic_insurance_paid"]


def row(who: str, invoice: str, total: str = "150.00", in_scope: str = "120.00", paid: str = "30.00", *, visit: str = "门诊",
        kind: str = "社区卫生服务中心", level: str = "1", day: str = DAY) -> list[str]:
    return [who, visit, day, day, invoice, "CN-CHC-HY", kind, level, "是", total, in_scope, paid]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(text.getvalue().encode("utf-8-sig"))
    return path


def enrol(ledger) -> dict[str, str]:
    ids = {}
    for number, name, street in ((WANG, "王秀英", "华阳路街道"), (LI, "李建国", "天山路街道")):
        r = ledger("do", "enrol", f"id_number={number}", f"name={name}", f"street={street}")
        assert r.exit_code == 0, r.output
        ids[number] = json.loads(r.stdout)["ids"]["recipient"]
        assert ledger("do", "grant_category", f"recipient={ids[number]}", "category=dibao", "from=2025-01-01").exit_code == 0
    return ids


def events(ledger) -> int:
    return json.loads(ledger("status", "--json").stdout)["events"]


def report(result) -> dict:
    return json.loads(result.stdout)


def expenses(database_url: str, rid: str) -> list:
    app = build_app(Settings(database_url=database_url, data_key="cli-test-key"))
    try:
        return [acc.facts for acc in app.recipient(rid).expenses.values()]
    finally:
        app.close()


def test_csv_with_chinese_headers_is_recorded_once_however_often_imported(ledger, database_url, tmp_path) -> None:
    ids = enrol(ledger)
    f = write_csv(tmp_path / "settlements-11.csv", ZH, [row(WANG, "HY-0001"), row(LI, "TS-0002", "1000", "800", "500", visit="住院", kind="医院", level="三级")])

    first = ledger("import", str(f), "--json")
    assert first.exit_code == 0, first.output
    assert report(first)["summary"] == {"rows": 2, "recorded": 2, "duplicate": 0, "already_imported": 0, "refused": 0, "invalid": 0}
    assert "recording" in first.stderr  # the progress bar
    [wang] = expenses(database_url, ids[WANG])
    [li] = expenses(database_url, ids[LI])
    assert (wang.invoice_no, str(wang.total), str(wang.in_scope), str(wang.basic_insurance_paid)) == ("HY-0001", "150.00", "120.00", "30.00")
    assert (li.visit_type.value, li.facility.kind.value, li.facility.level, str(li.total)) == ("inpatient", "hospital", 3, "1000.00")
    assert wang.service_date == date.fromisoformat(DAY) and wang.facility.district_designated is True

    stored = events(ledger)
    again = ledger("import", str(f), "--json")
    assert again.exit_code == 0, again.output
    assert report(again)["summary"]["already_imported"] == 2 and report(again)["summary"]["recorded"] == 0
    assert events(ledger) == stored  # nothing recorded twice
    assert [r["expense"] for r in report(again)["rows"]] == [r["expense"] for r in report(first)["rows"]]


def test_xlsx_with_english_headers_dates_and_numbers_as_cells(ledger, database_url, tmp_path) -> None:
    ids = enrol(ledger)
    book = Workbook()
    sheet = book.active
    sheet.append(["recipient", *EN[1:]])
    day = date.fromisoformat(DAY)
    sheet.append([ids[WANG], "outpatient", day, datetime.combine(day, datetime.min.time()), 20250001, "CN-CHC-HY", "community_health_centre", 1, "yes",
                  150, 120.5, 30.25])
    f = tmp_path / "settlements.xlsx"
    book.save(f)

    done = ledger("import", str(f), "--json")
    assert done.exit_code == 0, done.output
    [e] = expenses(database_url, ids[WANG])
    assert (e.invoice_no, str(e.total), str(e.in_scope), str(e.basic_insurance_paid), e.invoice_date) == ("20250001", "150.00", "120.50", "30.25", day)


def test_a_file_with_bad_rows_records_nothing_and_names_line_field_and_rule(ledger, tmp_path) -> None:
    enrol(ledger)
    f = write_csv(tmp_path / "bad.csv", ZH, [
        row(WANG, "HY-0001"),
        row(WANG, "HY-0002", "150.00", "200.00"),  # line 3: in scope above the total
        row(NOBODY, "HY-0003", level="四级"),  # line 4: nobody enrolled under that number, and no such level
        row(WANG, "HY-0004", visit="spa"),  # line 5: no such visit type
        row(WANG, "HY-0005", "12.345", "10", "0"),  # line 6: a third decimal
        row(LI, "HY-0001", "99.00", "90.00", "0"),  # another recipient, same receipt: recorded and flagged, no error
    ])
    stored = events(ledger)
    refused = ledger("import", str(f), "--json")
    assert refused.exit_code == 2, refused.output
    out = report(refused)
    assert out["status"] == "invalid" and out["summary"]["recorded"] == 0
    assert events(ledger) == stored
    found = {(p["line"], p["column"], p["field"]): p for p in out["problems"]}
    assert set(found) == {(3, "医保范围内费用", "in_scope"), (4, "身份证号", "id_number"), (4, "机构等级", "facility.level"),
                          (5, "就诊类型", "visit_type"), (6, "总医疗费用", "total")}
    assert found[(3, "医保范围内费用", "in_scope")]["rule"] == "R-INS-3"
    assert "enrolled first" in found[(4, "身份证号", "id_number")]["rule"]
    assert NOBODY not in refused.output  # the id number is masked in the report
    assert "visit_type is outpatient" in found[(5, "就诊类型", "visit_type")]["rule"]
    assert "two decimals" in found[(6, "总医疗费用", "total")]["message"]
    assert "line 3: 医保范围内费用 (in_scope)" in refused.stderr


def test_skip_invalid_records_the_good_rows_and_the_fixed_rejects_go_in_after(ledger, database_url, tmp_path) -> None:
    ids = enrol(ledger)
    f = write_csv(tmp_path / "nov.csv", ZH, [row(WANG, "HY-0001"), row(WANG, "HY-0002", "150.00", "200.00"), row(LI, "HY-0003")])
    partial = ledger("import", str(f), "--skip-invalid", "--json")
    assert partial.exit_code == 1, partial.output
    out = report(partial)
    assert out["summary"] == {"rows": 3, "recorded": 2, "duplicate": 0, "already_imported": 0, "refused": 0, "invalid": 1}
    rejects = Path(out["rejects_file"])
    assert rejects == tmp_path / "nov.rejected.csv"
    rows = list(csv.reader(io.StringIO(rejects.read_bytes().decode("utf-8-sig"))))
    assert rows[0] == [*ZH, "错误 error"]
    assert len(rows) == 2 and rows[1][4] == "HY-0002" and "in_scope" in rows[1][-1] and "R-INS-3" in rows[1][-1]

    rows[1][10] = "120.00"  # the officer fixes the in-scope amount and imports the rejects file as it is
    write_csv(rejects, rows[0], rows[1:])
    fixed = ledger("import", str(rejects), "--json")
    assert fixed.exit_code == 0, fixed.output
    assert report(fixed)["summary"]["recorded"] == 1
    assert sorted(e.invoice_no for e in expenses(database_url, ids[WANG])) == ["HY-0001", "HY-0002"]

    # the whole original file again, fixed: the rows already in are not recorded twice
    write_csv(f, ZH, [row(WANG, "HY-0001"), row(WANG, "HY-0002"), row(LI, "HY-0003")])
    stored = events(ledger)
    whole = ledger("import", str(f), "--json")
    assert whole.exit_code == 0, whole.output
    assert report(whole)["summary"]["already_imported"] == 3 and events(ledger) == stored


def test_a_receipt_seen_before_is_flagged_and_changed_figures_are_refused(ledger, tmp_path) -> None:
    ids = enrol(ledger)
    assert ledger("import", str(write_csv(tmp_path / "a.csv", EN, [row(WANG, "HY-0001")]))).exit_code == 0
    # the same receipt under another recipient: kept and flagged as a duplicate (R-CLR-1(b))
    flagged = ledger("import", str(write_csv(tmp_path / "b.csv", EN, [row(LI, "hy-0001 ")])), "--json")
    assert flagged.exit_code == 0, flagged.output
    out = report(flagged)
    assert out["summary"]["duplicate"] == 1
    assert out["rows"][0]["duplicate_of"].startswith(ids[WANG])
    # the same receipt of the same person with other figures: refused at recording (exit 1)
    changed = ledger("import", str(write_csv(tmp_path / "c.csv", EN, [row(WANG, "HY-0001", "160.00")])), "--json")
    assert changed.exit_code == 1, changed.output
    [problem] = report(changed)["problems"]
    assert (problem["line"], problem["field"]) == (2, "invoice_no") and "R-CLR-1(b)" in problem["rule"]
    # twice in one file with the same figures: one receipt met twice, recorded once
    same = ledger("import", str(write_csv(tmp_path / "e.csv", EN, [row(WANG, "HY-0008"), row(WANG, "HY-0008")])), "--json")
    assert same.exit_code == 0, same.output
    assert (report(same)["summary"]["recorded"], report(same)["summary"]["already_imported"]) == (1, 1)
    assert report(same)["rows"][0]["expense"] == report(same)["rows"][1]["expense"]
    # and twice in one file with other figures: invalid before anything is recorded
    twice = ledger("import", str(write_csv(tmp_path / "d.csv", EN, [row(WANG, "HY-0009"), row(WANG, "HY-0009", "99.00", "90.00")])), "--json")
    assert twice.exit_code == 2
    assert [(p["line"], p["field"]) for p in report(twice)["problems"]] == [(3, "invoice_no")]


def test_file_level_problems_and_the_template(ledger, tmp_path) -> None:
    enrol(ledger)
    unknown = ledger("import", str(write_csv(tmp_path / "u.csv", [*ZH, "备注"], [row(WANG, "X-1") + ["?"]])), "--json")
    assert unknown.exit_code == 2
    assert [(p["line"], p["column"]) for p in report(unknown)["problems"]] == [(1, "备注")]
    missing = ledger("import", str(write_csv(tmp_path / "m.csv", ZH[:-1], [row(WANG, "X-1")[:-1]])), "--json")
    assert missing.exit_code == 2 and report(missing)["problems"][0]["field"] == "basic_insurance_paid"
    (tmp_path / "n.txt").write_text("x")
    assert ledger("import", str(tmp_path / "n.txt")).exit_code == 2
    assert ledger("import", str(tmp_path / "absent.csv")).exit_code == 2

    # the template: its headers are taken as they are, its second sheet explains them
    template = tmp_path / "template.xlsx"
    assert ledger("import", "--template", str(template)).exit_code == 0
    book = load_workbook(template)
    header = [c.value for c in book.worksheets[0][1]]
    assert header[:3] == ["身份证号", "救助对象编号", "就诊类型"] and len(book.worksheets) == 2
    sheet = book.worksheets[0]
    values = {"身份证号": WANG, "就诊类型": "门诊", "就诊日期": DAY, "票据开具日期": DAY, "票据号": "T-1", "机构编码": "CN-CHC-HY", "机构类型": "社区卫生服务中心",
              "机构等级": "一级", "总医疗费用": "10.00", "医保范围内费用": "10.00", "基本医疗保险支付": "2.00"}
    for i, h in enumerate(header, start=1):
        sheet.cell(2, i, values.get(h))
    book.save(template)
    filled = ledger("import", str(template), "--json")
    assert filled.exit_code == 0, filled.output
    assert report(filled)["summary"]["recorded"] == 1
    english = tmp_path / "template.csv"
    assert ledger("import", "--template", str(english), "--english").exit_code == 0
    assert english.read_bytes().decode("utf-8-sig").splitlines()[0].startswith("id_number,recipient,visit_type")


def test_a_long_file_goes_in_group_by_group(ledger, database_url, tmp_path) -> None:
    """More rows than one transaction takes (infra.importer.GROUP_SIZE): every good row is
    recorded once, in the file's order, the bad one in the middle skipped."""
    ids = enrol(ledger)
    rows = [row(WANG if i % 2 else LI, f"LONG-{i:04d}") for i in range(1, 231)]
    rows[149] = row(WANG, "LONG-BAD", "10.00", "20.00")  # line 151, instead of 李建国's LONG-0150
    f = write_csv(tmp_path / "long.csv", ZH, rows)
    done = ledger("import", str(f), "--skip-invalid", "--json")
    assert done.exit_code == 1, done.output
    out = report(done)
    assert out["summary"]["recorded"] == 229 and [p["line"] for p in out["problems"]] == [151]
    wang = [e.invoice_no for e in expenses(database_url, ids[WANG])]
    assert wang == [f"LONG-{i:04d}" for i in range(1, 231, 2)]
    assert [e.invoice_no for e in expenses(database_url, ids[LI])] == [f"LONG-{i:04d}" for i in range(2, 231, 2) if i != 150]
