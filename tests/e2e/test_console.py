"""The browser console in a real browser (ADR 0018): Debian's Chromium driven by Playwright against
``ledger serve`` on a small generated dataset.

An auditor logs in, finds a recipient by name, opens a payout and reads the explanation, whose
numbers must be the API's; a clearing officer records a repayment and sees the balance drop; the
auditor's attempt to write is refused. A screenshot of each page is kept under
``tests/e2e/artifacts/<backend>/`` (not committed). No browser is ever downloaded: without
/usr/bin/chromium this test fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx

from commands import models as m
from infra import demo
from infra.http.auth import issue
from infra.http.svg import yuan
from infra.settings import Settings
from ledger import money

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
LEDGER = Path(sys.executable).with_name("ledger")
ARTIFACTS = Path(__file__).parent / "artifacts"
SECRET = "e2e-console-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_dataset(database_url: str) -> dict[str, str]:
    """A small demo ledger, and one payout made an overpayment by a late 居保大病 settlement, so
    that a clearing case is open (R-CLR-1(a)). Returns the recipient and that expense."""
    settings = Settings(database_url=database_url, token_secret=SECRET)
    app = demo.demo_app(settings)
    try:
        demo.generate(app, recipients=12, seed=11, until=date(2025, 12, 31))
        for rid in app.recipient_ids():
            r = app.recipient(rid)
            for eid, acc in r.expenses.items():
                city = acc.paid_by_scheme.get("shanghai.medical_aid", Decimal(0))
                if city >= Decimal("100") and acc.facts.self_pay() >= Decimal("200") and not r.open_cases():
                    share = money.money(acc.facts.self_pay() / 2)
                    result = app.run(m.SettleInsurance(expense=eid, scheme="critical_illness", amount=share))
                    assert result.status == "accepted", result
                    r = app.recipient(rid)
                    if r.open_balance() > 0:
                        return {"recipient": str(rid), "name": r.name, "expense": eid, "balance": str(r.open_balance())}
        raise AssertionError("the generated dataset has no payout a late settlement could turn into a clearing case")
    finally:
        app.close()


class Server:
    def __init__(self, database_url: str, cwd: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env.update(LEDGER_DATABASE_URL=database_url, LEDGER_TOKEN_SECRET=SECRET)
        self.process = subprocess.Popen([str(LEDGER), "serve", "--port", str(self.port)], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"ledger serve exited: {self.process.stdout.read() if self.process.stdout else ''}")
            assert time.monotonic() < deadline, "ledger serve did not become ready within 60 s"
            time.sleep(0.2)

    def api(self, path: str, token: str, **params):
        r = httpx.get(self.base + path, params=params or None, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def test_console_in_chromium(database_url, tmp_path, request):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); browsers are never downloaded"
    from playwright.sync_api import expect, sync_playwright

    backend = request.node.callspec.params["database_url"]
    shots = ARTIFACTS / backend
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    picked = build_dataset(database_url)
    auditor = issue(SECRET, "aud-e2e", "auditor")
    officer = issue(SECRET, "clr-e2e", "clearing_officer")
    server = Server(database_url, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                run_flow(browser, server, picked, auditor, officer, shots, expect)
            finally:
                browser.close()
    finally:
        server.stop()


def run_flow(browser, server: Server, picked: dict[str, str], auditor: str, officer: str, shots: Path, expect) -> None:  # noqa: ANN001
    base, rid = server.base, picked["recipient"]

    def shot(page, name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def login(token: str, name: str | None = None):
        context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN")
        page = context.new_page()
        page.set_default_timeout(30000)
        page.goto(f"{base}/console/")
        expect(page).to_have_url(re.compile(r"/console/login"))
        if name:
            shot(page, name)
        page.fill("#token", token)
        page.click("form.card button[type=submit]")
        expect(page.locator("[data-check=me]")).to_be_visible()
        return context, page

    # --- the auditor finds a recipient by name and opens one of their payouts -----------------
    ctx, page = login(auditor, "00-login")
    shot(page, "01-home")
    page.click("nav >> text=查找救助对象")
    page.fill("#q", picked["name"])
    page.select_option("#by", "name")
    page.click("form.search button[type=submit]")
    expect(page.locator(f'a[href="/console/recipients/{rid}"]')).to_be_visible()
    shot(page, "02-search")
    page.click(f'a[href="/console/recipients/{rid}"]')
    expect(page.locator("[data-check=recipient-name]")).to_have_text(picked["name"])
    expect(page.locator("[data-check=category-chart] svg")).to_be_visible()
    assert page.locator("[data-check=cap-chart] svg").count() >= 1
    assert page.locator("[data-check=timeline] tbody tr").count() >= 5
    expect(page.locator("[data-check=open-balance]")).to_have_text(yuan(picked["balance"]))
    shot(page, "03-recipient")
    payout = page.locator("a[data-check=expense-link]:not([data-paid='0.00'])").first
    href = payout.get_attribute("href")
    payout.click()
    expect(page.locator("[data-check=aid-total]")).to_be_visible()
    expense_id = href.rsplit("/", 1)[1]
    ex = server.api(f"/expenses/{expense_id}/explain", auditor)["explanation"]
    decision = ex["decision"]
    assert page.locator("[data-check=aid-total]").inner_text() == yuan(decision["total"])
    assert page.locator("[data-check=self-pay]").inner_text() == yuan(decision["self_pay"])
    for row in decision["waterfall"]:
        assert page.locator(f"[data-check=wf-{row['step']}]").inner_text() == yuan(row["amount"]), row["step"]
    for sc in decision["schemes"]:
        assert page.locator(f"[data-check=scheme-amount][data-scheme='{sc['scheme']}']").inner_text() == yuan(sc["amount"])
        if sc.get("rate"):
            assert page.locator(f"[data-check=rate][data-scheme='{sc['scheme']}'] strong").inner_text() == str(sc["rate"]["value"])
    assert page.locator("[data-check=policy-version]").inner_text() == str(decision["policy"]["policy_version"])
    assert page.locator("[data-check=paid-total]").inner_text() == yuan(ex["paid"]["total"])
    replay = server.api(f"/expenses/{expense_id}/replay", auditor)
    assert replay["equal"] and page.locator("[data-check=replay-equal]").inner_text() == "一致 equal ✓"
    assert page.locator("[data-check=replay-total]").inner_text() == yuan(replay["results"][0]["replayed"]["total"])
    expect(page.locator("figure.chart svg").first).to_be_visible()
    shot(page, "04-expense")

    page.goto(f"{base}/console/district")
    expect(page.locator("[data-check=books-ok]")).to_have_text("借贷平衡 the books balance ✓")
    expect(page.locator("[data-check=fund-chart] svg")).to_be_visible()
    assert re.fullmatch(r"\d{4}-\d{2}-(2[0-9])", page.locator("[data-check=submission-due]").inner_text())
    shot(page, "05-district")

    page.goto(f"{base}/console/snapshots")
    page.fill("input[name=valid_on]", "2025-12-31")
    page.click("form.card button[type=submit]")
    expect(page.locator("[data-check=manifest-valid]")).to_have_text("2025-12-31")
    with page.expect_download() as download:
        page.click("[data-check=download-xlsx]")
    assert download.value.suggested_filename.endswith(".xlsx.zip")
    shot(page, "06-snapshots")

    page.goto(f"{base}/console/clearing")
    assert page.locator("[data-check=repay-form]").count() == 0  # nothing to write with
    balance_before = page.locator(f"[data-check=balance][data-recipient='{rid}']").inner_text()
    assert balance_before == yuan(picked["balance"])
    shot(page, "07-clearing-auditor")

    # --- the clearing officer records a repayment: the balance drops ----------------------------
    ctx2, officer_page = login(officer)
    officer_page.goto(f"{base}/console/clearing")
    card = officer_page.locator(f".person[data-recipient='{rid}']")
    card.locator("input[name=amount]").fill("10.00")
    card.locator("[data-check=repay-voucher]").fill("RCPT-E2E-1")
    card.locator("[data-check=repay-method]").select_option("cash")
    card.locator("[data-check=repay-form] button[type=submit]").click()
    expect(officer_page.locator("[data-check=done]")).to_contain_text("已记录退款")
    expected = Decimal(picked["balance"]) - Decimal("10.00")
    expect(officer_page.locator(f"[data-check=balance][data-recipient='{rid}']")).to_have_text(yuan(expected))
    assert Decimal(server.api(f"/recipients/{rid}/clearing", auditor)["open_balance"]) == expected
    shot(officer_page, "08-clearing-after-repayment")
    ctx2.close()

    # --- the auditor tries to write anyway: refused, nothing changes ----------------------------
    csrf = page.locator("form[action='/console/logout'] input[name=csrf]").get_attribute("value")
    page.evaluate(
        """([csrf, rid]) => {
            const f = document.createElement('form');
            f.method = 'post'; f.action = '/console/clearing/repay';
            for (const [k, v] of Object.entries({csrf, key: 'console-auditor-e2e', recipient: rid, amount: '1.00'})) {
                const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
            }
            document.body.appendChild(f); f.submit();
        }""",
        [csrf, rid],
    )
    expect(page.locator("[data-check=error-code]")).to_have_text("FORBIDDEN")
    assert page.locator("[data-check=error-status]").inner_text() == "403"
    shot(page, "09-auditor-refused")
    assert Decimal(server.api(f"/recipients/{rid}/clearing", auditor)["open_balance"]) == expected
    page.goto(f"{base}/console/clearing")
    expect(page.locator(f"[data-check=balance][data-recipient='{rid}']")).to_have_text(yuan(expected))
    ctx.close()

