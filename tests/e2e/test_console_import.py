"""The console's settlement-file upload in a real browser (Debian's Chromium, Playwright) against
``ledger serve``: a district officer uploads a month's file with a bad row and is told its line,
column and rule with nothing recorded; uploads it again skipping the bad row, downloads the
rejects file, fixes it and uploads it; the ledger then holds each receipt once. Screenshots go to
``tests/e2e/artifacts/<backend>/import/`` (not committed)."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from pathlib import Path

from test_console import ARTIFACTS, CHROMIUM, FLAGS, SECRET, Server

from commands import models as m
from infra.http.auth import issue
from infra.settings import Settings
from infra.wiring import build_app
from ledger.values import CST

WANG = "310105195803122013"
DAY = (datetime.now(CST).date() - timedelta(days=5)).isoformat()
HEADER = ["身份证号", "就诊类型", "就诊日期", "票据开具日期", "票据号", "机构编码", "机构类型", "机构等级", "区属定点", "总医疗费用", "医保范围内费用", "基本医疗保险支付"]


def _file(path: Path, rows: list[list[str]]) -> Path:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(HEADER)
    w.writerows(rows)
    path.write_bytes(text.getvalue().encode("utf-8-sig"))
    return path


def _invoices(database_url: str, rid: str) -> list[str]:
    app = build_app(Settings(database_url=database_url, token_secret=SECRET))
    try:
        return sorted(acc.facts.invoice_no for acc in app.recipient(rid).expenses.values())
    finally:
        app.close()


def test_console_import_in_chromium(database_url, tmp_path, request):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); browsers are never downloaded"
    from playwright.sync_api import expect, sync_playwright

    shots = ARTIFACTS / request.node.callspec.params["database_url"] / "import"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    app = build_app(Settings(database_url=database_url, token_secret=SECRET))
    try:
        rid = app.run(m.Enrol(id_number=WANG, name="王秀英", street="华阳路街道")).ids["recipient"]
    finally:
        app.close()
    good = ["310105195803122013", "门诊", DAY, DAY, "HY-E2E-1", "CN-CHC-HY", "社区卫生服务中心", "1", "是", "150.00", "120.00", "30.00"]
    bad = [*good[:4], "HY-E2E-2", *good[5:10], "200.00", "30.00"]  # in scope above the total (R-INS-3)
    month = _file(tmp_path / "settlements-2026-11.csv", [good, bad])

    server = Server(database_url, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN", accept_downloads=True)
                page = context.new_page()
                page.set_default_timeout(30000)
                page.goto(f"{server.base}/console/login")
                page.fill("#token", issue(SECRET, "dist-e2e", "district_officer"))
                page.click("form.card button[type=submit]")
                expect(page.locator("[data-check=me]")).to_be_visible()
                page.click("nav >> text=导入结算记录")
                expect(page.locator("[data-check=import-form]")).to_be_visible()
                page.screenshot(path=str(shots / "00-form.png"), full_page=True)

                # the whole file is refused: line 3, the in-scope column, R-INS-3; nothing recorded
                page.set_input_files("#file", str(month))
                page.click("[data-check=import-form] button[type=submit]")
                expect(page.locator("[data-check=import-invalid]")).to_be_visible()
                problems = page.locator("[data-check=import-problems] tbody tr")
                expect(problems).to_have_count(1)
                assert re.match(r"^3\s+医保范围内费用\s+in_scope\s.*R-INS-3", problems.first.inner_text())
                page.screenshot(path=str(shots / "01-invalid.png"), full_page=True)
                assert _invoices(database_url, rid) == []

                # skipping the bad row: the good one goes in, the bad one comes back as a file
                page.set_input_files("#file", str(month))
                page.check("input[name=skip_invalid]")
                page.click("[data-check=import-form] button[type=submit]")
                expect(page.locator("[data-check=recorded]")).to_have_text("1")
                expect(page.locator("[data-check=invalid]")).to_have_text("1")
                page.screenshot(path=str(shots / "02-partial.png"), full_page=True)
                with page.expect_download() as download:
                    page.click("[data-check=rejects]")
                rejects = tmp_path / download.value.suggested_filename
                download.value.save_as(str(rejects))
                assert rejects.name == "settlements-2026-11.rejected.csv"
                rows = list(csv.reader(io.StringIO(rejects.read_bytes().decode("utf-8-sig"))))
                assert [r[4] for r in rows[1:]] == ["HY-E2E-2"] and "R-INS-3" in rows[1][-1]

                # the officer fixes the amount in the rejects file and uploads it as it is
                rows[1][10] = "120.00"
                text = io.StringIO(newline="")
                csv.writer(text).writerows(rows)
                rejects.write_bytes(text.getvalue().encode("utf-8-sig"))
                page.set_input_files("#file", str(rejects))
                page.click("[data-check=import-form] button[type=submit]")
                expect(page.locator("[data-check=import-status]")).to_have_text("recorded")
                expect(page.locator("[data-check=recorded]")).to_have_text("1")
                page.screenshot(path=str(shots / "03-fixed.png"), full_page=True)

                # the first file once more: nothing twice
                page.set_input_files("#file", str(_file(tmp_path / "again.csv", [good])))
                page.click("[data-check=import-form] button[type=submit]")
                expect(page.locator("[data-check=already]")).to_have_text("1")
                expect(page.locator("[data-check=recorded]")).to_have_text("0")
                page.screenshot(path=str(shots / "04-again.png"), full_page=True)
                context.close()
            finally:
                browser.close()
    finally:
        server.stop()
    assert _invoices(database_url, rid) == ["HY-E2E-1", "HY-E2E-2"]
