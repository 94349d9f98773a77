"""``ledger relay …`` and ``ledger report …`` end to end (ADR 0011, ADR 0012)."""

from __future__ import annotations

import asyncio
import csv
import json
import secrets

from openpyxl import load_workbook
from typer.testing import CliRunner

from infra.cli import _register, app
from infra.contract import asyncapi
from infra.relay import Topology
from infra.reports import ReportStore
from relay_support import expected_messages, ledger_with_data, months_of

_register()
runner = CliRunner()


def test_asyncapi_check_and_generation(tmp_path):
    ok = runner.invoke(app, ["relay", "asyncapi", "--check"])
    assert ok.exit_code == 0, ok.output
    stale = tmp_path / "asyncapi.json"
    stale.write_text("{}", encoding="utf-8")
    assert runner.invoke(app, ["relay", "asyncapi", "--check", "--out", str(stale)]).exit_code == 1
    assert runner.invoke(app, ["relay", "asyncapi", "--out", str(stale)]).exit_code == 0
    assert stale.read_text(encoding="utf-8") == asyncapi.DOCUMENT.read_text(encoding="utf-8")


def test_relay_once_to_rabbitmq_then_the_monthly_report_and_its_exports(database_url, tmp_path):
    settings, ledger = ledger_with_data(database_url, recipients=3, months=1, seed=4)
    head = ledger.recorder.max_notification_id()
    tag = f"e2e{secrets.token_hex(3)}"
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_BROKER": "rabbit", "LEDGER_RELAY_EXCHANGE": f"{tag}.events", "LEDGER_RELAY_NAME": tag}
    try:
        before = runner.invoke(app, ["relay", "status", "--json"], env=env)
        assert before.exit_code == 0, before.output
        shown = json.loads(before.stdout)
        assert {k: shown[k] for k in ("name", "position", "head", "broker", "lag_events")} == {
            "name": tag, "position": 0, "head": head, "broker": "rabbit", "lag_events": head}
        ran = runner.invoke(app, ["relay", "run", "--once"], env=env)
        assert ran.exit_code == 0, ran.output
        out = json.loads(ran.stdout.strip().splitlines()[-1])
        assert f"relay {tag}" in ran.stderr and f"{head}/{head}" in ran.stderr  # the progress bar, on stderr
        messages = expected_messages(ledger)
        assert out["published"] == len(messages) and out["position"] == head
        after = runner.invoke(app, ["relay", "status", "--json"], env=env)
        assert json.loads(after.stdout)["position"] == head and json.loads(after.stdout)["lag_events"] == 0
        table = runner.invoke(app, ["relay", "status"], env=env)
        assert table.exit_code == 0 and "lag (events)" in table.stdout and f"{head:,}" in table.stdout
    finally:
        asyncio.run(_delete_exchange(Topology("rabbit", exchange=f"{tag}.events")))

    # The report subscriber's store, here filled directly from the messages (no broker).
    reports_url = settings.sqlalchemy_url()
    store = ReportStore(reports_url)
    for m in messages:
        store.apply(m)
    month = months_of(messages)[0]
    expected = store.monthly(month).as_dict()
    store.close()
    env = {"LEDGER_REPORTS_DATABASE_URL": reports_url}
    # what the subscriber stored, as it stored it (tests/integration/test_monthly_report_from_store.py
    # covers the default, which first brings the report store up to date from the ledger's store)
    shown = runner.invoke(app, ["report", "monthly", "--subscriber-only", "--month", month, "--json", "--csv", str(tmp_path), "--xlsx", str(tmp_path / "r.xlsx")], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == expected
    with (tmp_path / f"{month}-汇总表.csv").open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["街镇"] for r in rows) == sorted(s["street"] for s in expected["streets"])
    assert {r["街镇"]: r["救助金额合计"] for r in rows} == {s["street"]: s["aid_total"] for s in expected["streets"]}
    book = load_workbook(tmp_path / "r.xlsx")
    payouts = book["发放清单"]
    assert payouts.max_row == 1 + len(expected["payouts"]) + 1  # header, one row a payout, the 合计 row
    assert str(payouts.cell(row=payouts.max_row, column=1).value).startswith("合计")
    bad = runner.invoke(app, ["report", "monthly", "--month", "2026-13"], env=env)
    assert bad.exit_code == 2


async def _delete_exchange(topology: Topology) -> None:
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(topology.url)
    async with broker:
        await broker.connect()
        channel = await broker._connection.channel()  # noqa: SLF001
        await channel.exchange_delete(topology.exchange)
        await channel.close()
