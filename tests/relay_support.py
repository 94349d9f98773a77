"""Helpers for the relay and report-subscriber tests (ADR 0011).

- ``ledger_with_data``: a ledger on a real store (``database_url``) filled through the commands.
- ``expected_messages``: what the relay must publish, read from the store.
- ``reference_reports``: the monthly reports of an uninterrupted run (messages applied in order,
  no broker), to compare with what a subscriber built through a broker.
- ``ledger_totals``: the ledger's own totals per street and month, computed from the aggregates
  (decisions and payouts), independently of the public messages and of the report code.
- ``BackgroundLoop``: a coroutine in a thread with its own event loop (faststream has no sync API).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Coroutine

from infra import working_days
from infra.relay import StoreReader
from infra.reports import ReportStore
from infra.sample_ledger import START, build
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from ledger.values import CST

D = Decimal
ZERO = D("0.00")


def ledger_with_data(database_url: str, recipients: int = 6, months: int = 2, seed: int = 7) -> tuple[Settings, Any]:
    settings = Settings(database_url=database_url)
    app = build_app(settings, publish_policy=False)
    ensure_policy(app, START - timedelta(days=1))
    build(app, recipients, seed=seed, months=months)
    return settings, app


def more_data(app: Any, recipients: int = 2, seed: int = 11) -> None:
    """Further commands on the same ledger (new people, later dates)."""
    build(app, recipients, seed=seed, months=1, start=START.replace(month=START.month + 4))


def expected_messages(app: Any) -> list[Any]:
    reader = StoreReader(app)
    out, position = [], 0
    while True:
        page = reader.read(position, 1000)
        if page.last == position:
            return out
        out.extend(page.messages)
        position = page.last


def months_of(messages: list[Any]) -> list[str]:
    months = {working_days.settlement_month(m.recorded_at.astimezone(CST).date()) for m in messages if m.type == "aid.decided"}
    return sorted(months)


def reference_reports(messages: list[Any], folder: Path) -> dict[str, dict[str, Any]]:
    store = ReportStore(f"sqlite:///{folder / 'reference-reports.db'}", "reference")
    try:
        for m in messages:
            assert store.apply(m) == "applied"
        return {month: store.monthly(month).as_dict() for month in months_of(messages)}
    finally:
        store.close()


def reports_of(store: ReportStore, months: list[str]) -> dict[str, dict[str, Any]]:
    return {month: store.monthly(month).as_dict() for month in months}


def ledger_totals(app: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (street, report month): claims, expenses, aid (total, per scheme, per fund) decided on
    post-hoc and auto claims, and for the paid ones the offsets and the amount to the person,
    straight from the Recipient aggregates."""
    totals: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"claims": set(), "expenses": 0, "aid_total": ZERO, "by_scheme": defaultdict(lambda: ZERO), "by_fund": defaultdict(lambda: ZERO), "offsets": ZERO, "to_person": ZERO}
    )
    for rid in list(app.recipient_ids()):
        r = app.recipient(rid)
        month_of_claim: dict[str, str] = {}
        for acc in r.expenses.values():
            ref = acc.decision
            if ref is None or ref.channel not in ("post_hoc", "auto"):
                continue
            month = working_days.settlement_month(ref.decided_at.astimezone(CST).date())
            month_of_claim[ref.claim_id] = month
            t = totals[(r.street, month)]
            t["claims"].add(ref.claim_id)
            t["expenses"] += 1
            t["aid_total"] += D(acc.decided["total"])
            for k, v in acc.decided["by_scheme"].items():
                t["by_scheme"][k] += D(v)
            for k, v in acc.decided["by_fund"].items():
                t["by_fund"][k] += D(v)
        for payout in r.payouts:
            if payout["claim"] in month_of_claim:
                t = totals[(r.street, month_of_claim[payout["claim"]])]
                t["offsets"] += sum((D(o["amount"]) for o in payout["offsets"]), ZERO)
                t["to_person"] += D(payout["to_person"])
    return {
        key: {
            "claims": len(v["claims"]),
            "expenses": v["expenses"],
            "aid_total": f"{v['aid_total']:.2f}",
            "by_scheme": {k: f"{x:.2f}" for k, x in sorted(v["by_scheme"].items())},
            "by_fund": {k: f"{x:.2f}" for k, x in sorted(v["by_fund"].items())},
            "offsets": f"{v['offsets']:.2f}",
            "to_person": f"{v['to_person']:.2f}",
        }
        for key, v in totals.items()
    }


def report_totals(reports: dict[str, dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (s["street"], month): {k: s[k] for k in ("claims", "expenses", "aid_total", "by_scheme", "by_fund", "offsets", "to_person")}
        for month, report in reports.items()
        for s in report["streets"]
    }


class BackgroundLoop:
    """Runs ``factory(stop)`` in a thread with its own event loop until ``stop`` is set."""

    def __init__(self, factory: Callable[[threading.Event], Coroutine[Any, Any, Any]]):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None

        def main() -> None:
            try:
                self.result = asyncio.run(factory(self.stop))
            except BaseException as exc:  # noqa: BLE001 - surfaced by join()
                self.error = exc

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 20) -> Any:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background loop did not stop"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
