"""The browser console on a real store (ADR 0018), through the HTTP service: sessions and roles,
finding people, the pages' numbers against the API's JSON, and the clearing workbench's writes."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from html import unescape

from clearing_story import Story, app_on
from console_story import HUAYANG, ID_WANG, tell
from fastapi.testclient import TestClient

from infra.http import create_app
from infra.http.auth import issue
from infra.http.console import COOKIE
from infra.http.svg import yuan
from infra.settings import Settings

SECRET = "console-test-secret"


class Console:
    def __init__(self, client: TestClient, story: Story):
        self.client, self.story = client, story

    def token(self, officer: str, role: str, street: str | None = None) -> str:
        return issue(SECRET, officer, role, street)

    def login(self, officer: str, role: str, street: str | None = None) -> None:
        r = self.client.post("/console/login", data={"token": self.token(officer, role, street)}, follow_redirects=False)
        assert r.status_code == 303, r.text

    def api(self, path: str, officer: str = "aud-api", role: str = "auditor", **params):
        r = self.client.get(path, params=params or None, headers={"Authorization": "Bearer " + self.token(officer, role)})
        assert r.status_code == 200, r.text
        return r.json()

    def rid(self, handle: str) -> str:
        return str(self.story.recipient(handle).id)

    def balance(self, handle: str) -> Decimal:
        return Decimal(self.api(f"/recipients/{self.rid(handle)}/clearing")["open_balance"])


@contextmanager
def console_on(database_url: str) -> Iterator[Console]:
    settings = Settings(database_url=database_url, token_secret=SECRET)
    ledger = app_on(settings)
    story = tell(Story(ledger))
    with TestClient(create_app(settings, ledger=ledger)) as client:
        yield Console(client, story)
    ledger.close()


def checked(html: str, key: str) -> list[str]:
    """The text of every element marked ``data-check="key"``."""
    return [unescape(re.sub(r"<[^>]+>", "", m)).strip() for m in re.findall(rf'data-check="{re.escape(key)}"[^>]*>(.*?)</', html, re.S)]


def block(html: str, key: str, end: str = "</table>") -> str:
    """The markup from the element marked ``data-check="key"`` to ``end``."""
    return html.split(f'data-check="{key}"', 1)[1].split(end, 1)[0]


def hidden(html: str, name: str, within: str = "") -> str:
    part = html[html.index(within):] if within else html
    return re.search(rf'name="{name}" value="([^"]*)"', part).group(1)


def test_sessions_roles_and_finding_people(database_url):
    with console_on(database_url) as c:
        client = c.client
        r = client.get("/console/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=%2Fconsole%2F")
        r = client.post("/console/login", data={"token": "not.a-token"})
        assert r.status_code == 401 and "令牌无效" in r.text
        r = client.post("/console/login", data={"token": c.token("aud-1", "auditor"), "next": "https://elsewhere.example/"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/"  # no open redirect
        cookie = r.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        page = client.get("/console/")
        assert page.status_code == 200 and "审计人员" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"] and page.headers["cache-control"] == "no-store"

        # by resident id number, through the keyed hash; the list masks the number
        csrf = hidden(page.text, "csrf")
        r = client.post("/console/recipients", data={"q": ID_WANG, "by": "auto", "csrf": csrf})
        assert checked(r.text, "result-count") == ["1"]
        results = r.text[r.text.index('data-check="results"'):]
        assert f"/console/recipients/{c.rid('R1')}" in results and ID_WANG not in results and ID_WANG[-4:] in results
        assert client.post("/console/recipients", data={"q": ID_WANG, "csrf": "forged"}).status_code == 403
        r = client.get("/console/recipients", params={"q": "李建", "by": "name"})
        assert checked(r.text, "result-link") == ["李建国"]
        accesses = c.api("/audit/access", recipient=c.rid("R1"))["entries"]
        assert any(e["operation"] == "console_search" and e["officer"] == "aud-1" for e in accesses)

        # a street handler sees their own street only (R-PH-1)
        c.login("hy-1", "street_handler", HUAYANG)
        r = client.get("/console/recipients", params={"q": "街道", "by": "street"})
        assert checked(r.text, "result-link") == ["王秀英"]
        r = client.get(f"/console/recipients/{c.rid('R2')}")
        assert r.status_code == 403 and checked(r.text, "error-code") == ["OTHER_STREET"]
        assert client.get("/console/clearing").status_code == 403
        assert client.get(f"/console/recipients/{c.rid('R1')}").status_code == 200

        # the regulator sees snapshots only (ADR 0013)
        c.login("reg-1", "regulator")
        home = client.get("/console/").text
        assert "/console/snapshots" in home and "/console/clearing" not in home and "/console/recipients" not in home
        assert client.get("/console/recipients", params={"q": "王"}).status_code == 403
        assert client.get("/console/snapshots").status_code == 200

        # logging out needs the session's form token
        assert client.post("/console/logout", data={"csrf": "forged"}).status_code == 403
        csrf = hidden(client.get("/console/").text, "csrf")
        r = client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303 and 'ledger_console=""' in r.headers["set-cookie"]
        client.cookies.clear()
        assert client.get("/console/snapshots", follow_redirects=False).status_code == 303

        # an expired token in the cookie: back to the login page, the cookie dropped
        expired = issue(SECRET, "aud-1", "auditor", days=1, now=time.time() - 2 * 86400)
        client.cookies.set(COOKIE, expired, path="/console")
        r = client.get("/console/district", follow_redirects=False)
        assert r.status_code == 303 and "reason=" in r.headers["location"] and 'ledger_console=""' in r.headers["set-cookie"]
        client.cookies.clear()
        assert "令牌已过期或无效" in client.get(r.headers["location"]).text


def test_pages_show_the_ledgers_numbers(database_url):
    with console_on(database_url) as c:
        client = c.client
        c.login("aud-1", "auditor")
        # the timeline marks the revocation recorded on 2026-03-05 with effect from 2026-01-01
        r2 = client.get(f"/console/recipients/{c.rid('R2')}").text
        row = re.search(r'<tr class="retro" data-kind="CategoryRevoked">(.*?)</tr>', r2, re.S).group(1)
        assert "2026-01-01" in row and "2026-03-05" in row and "追溯 retroactive" in row
        assert "已撤销 revoked 2026-01-01" in block(r2, "category-periods", "</ul>")
        assert "<svg" in r2.split('data-check="category-chart"')[1][:400]

        # caps: the table is the API's, the chart's series adds up to it
        r1 = client.get(f"/console/recipients/{c.rid('R1')}").text
        caps = c.api(f"/recipients/{c.rid('R1')}/caps")["annual"]
        inpatient = next(x for x in caps if x["kind"] == "inpatient" and x["cap"])
        assert yuan(inpatient["granted"]) in block(r1, "caps")
        assert r1.count('data-check="cap-chart"') == sum(1 for x in caps if x["cap"]) and "不一致" not in r1
        assert f"已用 used {yuan(inpatient['granted'])}" in r1

        # an expense: the stored explanation, the replay beside it, the waterfall
        e2 = c.story.expense_id("E2")
        html = client.get(f"/console/expenses/{e2}").text
        ex = c.api(f"/expenses/{e2}/explain")["explanation"]
        d = ex["decision"]
        assert checked(html, "aid-total") == [yuan(d["total"])] == [yuan("7200.00")]
        assert checked(html, "self-pay") == [yuan(d["self_pay"])]
        for w in d["waterfall"]:
            assert checked(html, f"wf-{w['step']}") == [yuan(w["amount"])], w["step"]
        assert checked(html, "wf-critical_illness") == [yuan("0.00")]  # the stored decision predates the 居保大病 payment
        for sc in d["schemes"]:
            assert yuan(sc["amount"]) in checked(html, "scheme-amount")
        city = next(sc for sc in d["schemes"] if sc["scheme"] == "shanghai.medical_aid")
        rate = html.split('data-check="rate" data-scheme="shanghai.medical_aid">', 1)[1][:600]
        assert rate.startswith(f"<strong>{city['rate']['value']}</strong>") and city["rate"]["reference"] in unescape(rate)
        assert checked(html, "policy-version") == [str(d["policy"]["policy_version"])]
        assert checked(html, "due-total") == [yuan(ex["due"]["total"])] == [yuan("5400.00")]
        replay = c.api(f"/expenses/{e2}/replay")
        assert checked(html, "replay-equal") == ["一致 equal ✓"] and replay["equal"]
        assert checked(html, "replay-total") == [yuan(replay["results"][0]["replayed"]["total"])]
        assert "保险后到" in html and "late_insurance" in html  # the reassessment and its trigger

        # the district view: the fund books balance and the report's dates are the moved ones
        district = client.get("/console/district", params={"month": "2026-01"}).text
        assert checked(district, "books-ok") == ["借贷平衡 the books balance ✓"]
        assert checked(district, "submission-due") == ["2026-01-20"] and checked(district, "payment-due") == ["2026-01-26"]
        assert 'data-check="fund-chart"' in district and 'data-check="street-chart"' in district and HUAYANG in district

        # snapshots: the manifest names the files it came with
        page = client.get("/console/snapshots", params={"valid_on": "2026-03-31"}).text
        assert checked(page, "total-clearing_open") == [yuan("1990.00")]
        r = client.get("/console/snapshots/download", params={"valid_on": "2026-03-31", "known_at": "", "format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        files = zipfile.ZipFile(io.BytesIO(r.content))
        names = sorted(files.namelist())
        assert len(names) == 2 and names[0].endswith(".csv") and names[1].endswith(".manifest.json")
        manifest = json.loads(files.read(names[1]))
        assert manifest["files"][names[0]]["sha256"] == hashlib.sha256(files.read(names[0])).hexdigest()
        assert manifest["totals"]["clearing_open"] == "1990.00" and manifest["valid"] == "2026-03-31"
        # T before the late settlement: nothing was owed yet
        before = client.get("/console/snapshots", params={"valid_on": "2026-03-31", "known_at": "2026-03-01T12:00"}).text
        assert checked(before, "total-clearing_open") == [yuan("0.00")]


def test_clearing_workbench_writes_through_the_api(database_url):
    with console_on(database_url) as c:
        client = c.client
        c.login("clr-1", "clearing_officer")
        page = client.get("/console/clearing").text
        assert checked(page, "open-total") == [yuan("1990.00")]
        r1 = c.rid("R1")
        form = page[page.index(f'data-recipient="{r1}"'):]
        fields = {"csrf": hidden(form, "csrf"), "key": hidden(form, "key"), "recipient": r1, "amount": "500.00",
                  "voucher": "RCPT-500", "method": "bank_transfer"}
        r = client.post("/console/clearing/repay", data=fields, follow_redirects=False)
        assert r.status_code == 303 and "done=repay" in r.headers["location"]
        assert c.balance("R1") == Decimal("1300.00")
        # the same form sent again (a double click, a reload) is applied once
        again = client.post("/console/clearing/repay", data=fields, follow_redirects=False)
        assert again.status_code == 303 and c.balance("R1") == Decimal("1300.00")
        after = client.get(again.headers["location"]).text
        assert checked(after, "done")[0].startswith("已记录退款")
        assert yuan("1300.00") in checked(after, "balance")
        # a form without the session's token is refused before anything is done
        r = client.post("/console/clearing/repay", data={**fields, "csrf": "x", "key": "console-other"})
        assert r.status_code == 403 and checked(r.text, "error-code") == ["CSRF"]
        # a rule's refusal is shown with its code: more than is owed
        r = client.post("/console/clearing/repay", data={**fields, "key": "console-too-much", "amount": "5000.00"})
        assert r.status_code in (409, 422) and checked(r.text, "error-code")

        # the auditor sees the workbench and changes nothing
        c.login("aud-1", "auditor")
        page = client.get("/console/clearing").text
        assert 'data-check="repay-form"' not in page and "只读 read only" in page
        r = client.post("/console/clearing/repay", data={**fields, "csrf": hidden(page, "csrf"), "key": "console-auditor-try"})
        assert r.status_code == 403 and checked(r.text, "error-code") == ["FORBIDDEN"]
        assert c.balance("R1") == Decimal("1300.00")

        # a write-off: proposed by a clearing officer, approved by another officer (R-CLR-3)
        c.login("clr-1", "clearing_officer")
        page = client.get("/console/clearing").text
        r2 = c.rid("R2")
        form = page[page.index(f'data-recipient="{r2}"'):]
        write_off = form[form.index('action="/console/clearing/write-offs"'):]
        r = client.post("/console/clearing/write-offs", data={"csrf": hidden(page, "csrf"), "key": hidden(write_off, "key"), "recipient": r2, "reason": "无力偿还"},
                        follow_redirects=False)
        assert r.status_code == 303 and "done=proposed" in r.headers["location"]
        (proposal,) = c.api("/write-offs", status="pending")
        assert proposal["officer"] == "clr-1" and proposal["recipient"] == r2
        page = client.get("/console/clearing").text
        assert f"/console/clearing/write-offs/{proposal['id']}/approve" not in page  # not the proposer's to approve
        c.login("appr-1", "approver")
        page = client.get("/console/clearing").text
        approve = page[page.index(f"/console/clearing/write-offs/{proposal['id']}/approve"):]
        r = client.post(f"/console/clearing/write-offs/{proposal['id']}/approve", data={"csrf": hidden(page, "csrf"), "key": hidden(approve, "key"), "recipient": r2},
                        follow_redirects=False)
        assert r.status_code == 303 and "done=approved" in r.headers["location"]
        assert c.balance("R2") == Decimal("0.00") and c.balance("R1") == Decimal("1300.00")
        assert c.api("/write-offs", status="pending") == []
