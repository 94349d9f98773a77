"""The console on a 390 px phone screen (Debian's Chromium driven by Playwright against ``ledger
serve``): no page is wider than the screen (a wide table scrolls inside itself), and the tab
shows the console's icon. Screenshots are kept under ``tests/e2e/artifacts/phone/``."""

from __future__ import annotations

from pathlib import Path

from test_console import ARTIFACTS, CHROMIUM, FLAGS, SECRET, Server, build_dataset

from infra.http.auth import issue

WIDTH = 390


def test_every_console_page_fits_a_phone_screen(tmp_path):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    from playwright.sync_api import expect, sync_playwright

    shots = ARTIFACTS / "phone"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    picked = build_dataset(f"sqlite:///{tmp_path / 'ledger.db'}")
    rid, eid = picked["recipient"], picked["expense"]
    server = Server(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                context = browser.new_context(viewport={"width": WIDTH, "height": 844}, locale="zh-CN", is_mobile=True, has_touch=True)
                page = context.new_page()
                page.set_default_timeout(30000)
                page.goto(f"{server.base}/console/login")
                assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
                icon = page.locator("link[rel=icon]").get_attribute("href")
                assert context.request.get(server.base + icon).ok
                page.screenshot(path=str(shots / "00-login.png"), full_page=True)
                page.fill("#token", issue(SECRET, "dist-phone", "district_officer"))
                page.click("form.card button[type=submit]")
                expect(page.locator("[data-check=me]")).to_be_visible()
                pages = [
                    ("01-home", "/console/"),
                    ("02-search", f"/console/recipients?q={picked['name']}&by=name"),
                    ("03-recipient", f"/console/recipients/{rid}"),
                    ("04-expense", f"/console/expenses/{eid}"),
                    ("05-clearing", "/console/clearing?show=all"),
                    ("06-district", "/console/district"),
                    ("07-snapshots", "/console/snapshots"),
                ]
                for name, path in pages:
                    response = page.goto(server.base + path)
                    assert response is not None and response.status == 200, (path, response and response.status)
                    width = page.evaluate("document.documentElement.scrollWidth")
                    wider = page.evaluate(
                        """(w) => [...document.querySelectorAll('body *')]
                             .filter(e => e.getBoundingClientRect().right > w + 1 && !e.closest('table.data, figure.chart'))
                             .slice(0, 5).map(e => e.tagName + '.' + e.className)""",
                        WIDTH,
                    )
                    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                    assert width <= WIDTH and not wider, (path, width, wider)
            finally:
                browser.close()
    finally:
        server.stop()
