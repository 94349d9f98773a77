"""Finding people in the console, in Chromium (ADR 0019): a street officer types their own street
in the search box (the default mode) and finds their people; the result page is a GET that can be
bookmarked and reopened; the recipient page masks the id number as the results do; an expense
opens by the handle the ledger shows; the server's request log holds no searched text.
Screenshots under ``tests/e2e/artifacts/<backend>/find-*.png``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from test_console import ARTIFACTS, CHROMIUM, FLAGS, SECRET, Server, build_dataset

from infra.http.auth import issue
from infra.settings import Settings
from infra.wiring import build_app


def _people_of(database_url: str, rid: str) -> tuple[str, int, str, str, str]:
    """The picked person's street, how many people it has, their id number, and one expense handle."""
    app = build_app(Settings(database_url=database_url, token_secret=SECRET), publish_policy=False)
    try:
        r = app.recipient(rid)
        street = r.street
        count = sum(1 for x in app.recipient_ids() if app.recipient(x).street == street)
        handle = next(acc.handle for acc in r.expenses.values() if acc.handle)
        return street, count, r.id_number, handle, r.name
    finally:
        app.close()


def test_a_street_officer_finds_their_people_in_chromium(database_url, tmp_path, request):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium; browsers are never downloaded"
    from playwright.sync_api import expect, sync_playwright

    shots = ARTIFACTS / request.node.callspec.params["database_url"]
    shots.mkdir(parents=True, exist_ok=True)
    picked = build_dataset(database_url)
    street, count, number, handle, name = _people_of(database_url, picked["recipient"])
    token = issue(SECRET, "street-e2e", "street_handler", street)
    server = Server(database_url, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.goto(f"{server.base}/console/")
                page.fill("#token", token)
                page.click("form.card button[type=submit]")
                expect(page.locator("[data-check=me]")).to_be_visible()
                page.goto(f"{server.base}/console/recipients")
                page.fill("#q", street)  # the default mode, "auto"
                page.click("form.search button[type=submit]")
                expect(page.locator("[data-check=result-count]")).to_have_text(str(count))
                assert "q=" in page.url  # a GET: the result page can be bookmarked
                page.screenshot(path=str(shots / "find-01-own-street.png"), full_page=True)
                bookmarked = page.url
                page.goto(bookmarked)
                expect(page.locator("[data-check=result-count]")).to_have_text(str(count))
                assert number not in page.content()
                page.click(f'a[href="/console/recipients/{picked["recipient"]}"]')
                expect(page.locator("[data-check=recipient-name]")).to_have_text(name)
                expect(page.locator("[data-check=id-number]")).to_have_text(number[:6] + "*" * 8 + number[-4:])
                page.screenshot(path=str(shots / "find-02-recipient-masked.png"), full_page=True)
                page.goto(f"{server.base}/console/expenses/{handle}")
                expect(page.locator("h1")).to_contain_text(handle)
                page.screenshot(path=str(shots / "find-03-expense-by-handle.png"), full_page=True)
                page.goto(f"{server.base}/console/recipients?q={number}")
                expect(page.locator("[data-check=result-count]")).to_have_text("1")
            finally:
                browser.close()
    finally:
        server.stop()
    log = server.process.stdout.read() if server.process.stdout else ""
    assert "q=[redacted]" in log, log[-2000:]
    assert number not in log and quote(street) not in log and street not in log
