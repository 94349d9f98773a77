"""The money clearing officers handle, in a real browser (Debian's Chromium, Playwright) against
``ledger serve`` (R-CLR-3 [000 第七条]): a clearing officer records a repayment with its voucher,
method and day, and proposes writing off what is left; the same officer, holding an approver's
token too, is refused the approval (SAME_OFFICER, shown with its rule); a second officer sees the
person's name, the masked id number, the amount per case and in all and the reason, and
approves. The recipient's statement then downloads as CSV and XLSX with both lines. Screenshots
go to ``tests/e2e/artifacts/<backend>/money/`` (not committed)."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from openpyxl import load_workbook
from test_console import ARTIFACTS, CHROMIUM, FLAGS, SECRET, Server, build_dataset

from infra.http.auth import issue
from infra.http.console import today
from infra.http.svg import yuan

VOUCHER = "RCPT-E2E-0427"
REASON = "本人病故，无可执行财产 deceased, nothing to recover"


def test_repayment_and_write_off_by_two_officers_in_chromium(database_url, tmp_path, request):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); browsers are never downloaded"
    from playwright.sync_api import expect, sync_playwright

    shots = ARTIFACTS / request.node.callspec.params["database_url"] / "money"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    picked = build_dataset(database_url)
    rid, owed = picked["recipient"], Decimal(picked["balance"])
    assert owed > Decimal("10.00")
    received_on = (today() - timedelta(days=2)).isoformat()
    auditor = issue(SECRET, "aud-e2e", "auditor")
    server = Server(database_url, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                def login(officer: str, role: str):
                    context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN", accept_downloads=True)
                    page = context.new_page()
                    page.set_default_timeout(30000)
                    page.goto(f"{server.base}/console/login")
                    page.fill("#token", issue(SECRET, officer, role))
                    page.click("form.card button[type=submit]")
                    expect(page.locator("[data-check=me]")).to_be_visible()
                    page.goto(f"{server.base}/console/clearing")
                    return context, page

                def shot(page, name: str) -> None:
                    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

                # --- a clearing officer records a repayment: voucher, method, the day received ----------
                ctx, page = login("clr-e2e", "clearing_officer")
                card = page.locator(f".person[data-recipient='{rid}']")
                card.locator("input[name=amount]").fill("10.00")
                card.locator("input[name=voucher]").fill(VOUCHER)
                card.locator("select[name=method]").select_option("bank_transfer")
                card.locator("input[name=received_on]").fill(received_on)
                shot(page, "00-repayment-form")
                card.locator("[data-check=repay-form] button[type=submit]").click()
                expect(page.locator("[data-check=done]")).to_contain_text("已记录退款")
                left = owed - Decimal("10.00")
                expect(page.locator(f"[data-check=balance][data-recipient='{rid}']")).to_have_text(yuan(left))
                shot(page, "01-repayment-recorded")
                (case,) = [c for c in server.api(f"/recipients/{rid}/clearing", auditor)["clearing_cases"] if c["status"] == "open"]
                history = server.api(f"/clearing/cases/{case['case']}", auditor)["history"]
                (repaid,) = [h for h in history if h["kind"] == "repayment"]
                assert (repaid["amount"], repaid["officer"], repaid["voucher"], repaid["method"], repaid["received_on"]) == (
                    "10.00", "clr-e2e", VOUCHER, "bank_transfer", received_on)

                # --- the same officer proposes writing off what is left --------------------------------
                card.locator("input[name=reason]").fill(REASON)
                card.locator("form[action='/console/clearing/write-offs'] button[type=submit]").click()
                expect(page.locator("[data-check=done]")).to_contain_text("已提出核销")
                row = page.locator("[data-check=proposal]")
                expect(row).to_have_count(1)
                assert row.locator("[data-check=approve-form]").count() == 0  # a clearing officer does not approve
                shot(page, "02-write-off-proposed")
                ctx.close()

                # --- the proposer holding an approver's token too: refused, and told why ---------------
                ctx, page = login("clr-e2e", "approver")
                row = page.locator("[data-check=proposal]")
                expect(row.locator("[data-check=own-proposal]")).to_be_visible()
                assert row.locator("[data-check=approve-form]").count() == 0
                proposal = row.get_attribute("data-proposal")
                csrf = page.locator("form[action='/console/logout'] input[name=csrf]").get_attribute("value")
                page.evaluate(  # the approval posted anyway (an old page, a crafted form): the ledger refuses it
                    """([csrf, action, rid]) => {
                        const f = document.createElement('form');
                        f.method = 'post'; f.action = action;
                        for (const [k, v] of Object.entries({csrf, key: 'console-same-officer-e2e', recipient: rid})) {
                            const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
                        }
                        document.body.appendChild(f); f.submit();
                    }""",
                    [csrf, f"/console/clearing/write-offs/{proposal}/approve", rid],
                )
                expect(page.locator("[data-check=error-code]")).to_have_text("SAME_OFFICER")
                assert page.locator("[data-check=error-status]").inner_text() == "409"
                assert "R-CLR-3" in page.locator("[data-check=error]").inner_text()
                shot(page, "03-same-officer-refused")
                ctx.close()
                assert [w["id"] for w in server.api("/write-offs", auditor, status="pending")] == [proposal]

                # --- a second officer sees who, how much and why, and approves ------------------------
                ctx, page = login("appr-e2e", "approver")
                (shown,) = server.api("/write-offs", auditor, status="pending")
                row = page.locator(f"[data-check=proposal][data-proposal='{proposal}']")
                expect(row.locator("[data-check=proposal-name]")).to_have_text(picked["name"])
                masked = row.locator("[data-check=proposal-id-number]").inner_text()
                assert masked == shown["id_number"] and re.fullmatch(r"\d{6}\*{8}[0-9X]{4}", masked), masked
                expect(row.locator("[data-check=proposal-amount]")).to_have_text(yuan(left))
                per_case = [Decimal(x.replace("¥", "").replace(",", "")) for x in row.locator("[data-check=proposal-case-amount]").all_inner_texts()]
                assert per_case == [Decimal(c["amount"]) for c in shown["cases"]] and sum(per_case) == left
                expect(row.locator("[data-check=proposal-reason]")).to_have_text(REASON)
                expect(page.locator("[data-check=proposals-total]")).to_have_text(yuan(left))
                shot(page, "04-approver-sees-proposal")
                row.locator("[data-check=approve-form] button[type=submit]").click()
                expect(page.locator("[data-check=done]")).to_contain_text("核销已批准")
                expect(page.locator(f"[data-check=balance][data-recipient='{rid}']")).to_have_count(0)
                assert server.api("/write-offs", auditor, status="pending") == []
                assert Decimal(server.api(f"/recipients/{rid}/clearing", auditor)["open_balance"]) == 0
                shot(page, "05-write-off-approved")

                # --- the statement, with both lines, as CSV and XLSX ---------------------------------
                page.goto(f"{server.base}/console/recipients/{rid}")
                expect(page.locator("[data-check=open-balance]")).to_have_text(yuan("0.00"))
                repaid_row = page.locator("[data-check=timeline] tr[data-kind=RepaymentReceived]")
                expect(repaid_row).to_contain_text(VOUCHER)
                expect(repaid_row).to_contain_text("银行转账")
                with page.expect_download() as download:
                    page.click("[data-check=statement-csv]")
                assert download.value.suggested_filename == f"statement-{rid}.csv"
                lines = list(csv.reader(io.StringIO(Path(download.value.path()).read_bytes().decode("utf-8-sig"))))
                body = lines[1:lines.index([])]
                totals = {r[0]: (int(r[1]), Decimal(r[2])) for r in lines[lines.index([]) + 2:]}
                assert all(r[0].endswith("+08:00") for r in body)
                assert totals["退款"] == (1, Decimal("10.00")) and totals["核销"][1] == left
                with page.expect_download() as download:
                    page.click("[data-check=statement-xlsx]")
                assert download.value.suggested_filename == f"statement-{rid}.xlsx"
                book = load_workbook(io.BytesIO(Path(download.value.path()).read_bytes()))
                assert book.sheetnames == ["对账单", "合计"]
                sheet_totals = {r[0]: r[2] for r in book["合计"].iter_rows(min_row=2, values_only=True)}
                assert Decimal(str(sheet_totals["退款"])) == Decimal("10.00") and Decimal(str(sheet_totals["核销"])) == left
                shot(page, "06-recipient-statement")
                ctx.close()
            finally:
                browser.close()
    finally:
        server.stop()
