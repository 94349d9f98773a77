"""``ledger relay …`` and ``ledger report …``: the broker relay and the monthly street report
subscriber (ADR 0011, ADR 0012). Thin adapters over infra.relay and infra.reports."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from infra.cli import app

relay_app = typer.Typer(help="Publish the ledger's events to the broker (public contract v1).", no_args_is_help=True)
report_app = typer.Typer(help="The monthly street report (汇总表, 发放清单) built from the published events.", no_args_is_help=True)
app.add_typer(relay_app, name="relay")
app.add_typer(report_app, name="report")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT / SIGTERM set the event (the loop finishes its page and exits); handlers restored after."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@relay_app.command("run")
def relay_run(
    once: bool = typer.Option(False, "--once", help="publish up to the log's current head, then exit"),
    from_: Optional[int] = typer.Option(None, "--from", help="start at this position (0: the beginning) instead of the tracked one"),
    name: Optional[str] = typer.Option(None, "--name", help="tracking name (LEDGER_RELAY_NAME, default main)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="events read (and tracked) per batch"),
    max_rate: Optional[float] = typer.Option(None, "--max-rate", min=0.1, help="at most this many messages per second"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Follow the notification log and publish every public message; the position is recorded
    only after the broker confirmed, so a crash re-sends rather than loses."""
    from infra.relay import run_relay

    _logging(verbose)
    with _stop_on_signals() as stop:
        stats = run_relay(once=once, start=from_, stop=stop, name=name, batch_size=batch_size, max_rate=max_rate)
    typer.echo(json.dumps({"published": stats.published, "position": stats.position, "reconnects": stats.reconnects, "events_per_second": round(stats.rate, 1)}))


@relay_app.command("replay")
def relay_replay(
    to: str = typer.Option(..., "--to", help="the subscriber whose replay destination receives the log"),
    from_: int = typer.Option(0, "--from", help="first position to replay (0: the beginning)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Replay the log from the store into one subscriber's replay destination, closed by a
    relay.replay_completed marker (catch-up, ADR 0011)."""
    from infra.relay import Relay

    _logging(verbose)
    relay = Relay()
    try:
        head = asyncio.run(relay.replay(to, start=from_))
    finally:
        relay.close()
    typer.echo(json.dumps({"replayed_to": head, "published": relay.stats.published, "destination": to}))


@relay_app.command("status")
def relay_status(name: Optional[str] = typer.Option(None, "--name")) -> None:
    """The relay's tracked position and the log's head."""
    from infra.relay import Relay

    relay = Relay(name=name)
    try:
        typer.echo(json.dumps({"name": relay.name, "position": relay.position(), "head": relay.reader.head(), "broker": relay.topology.kind}))
    finally:
        relay.close()


@relay_app.command("asyncapi")
def relay_asyncapi(
    check: bool = typer.Option(False, "--check", help="exit 1 when docs/asyncapi.json differs from a fresh generation"),
    out: Optional[Path] = typer.Option(None, "--out", help="write here instead of docs/asyncapi.json"),
) -> None:
    """Generate the AsyncAPI document of the public events from the relay's faststream app."""
    from infra.contract import asyncapi

    path = out or asyncapi.DOCUMENT
    if check:
        same = path.exists() and path.read_text(encoding="utf-8") == asyncapi.generate()
        typer.echo(f"{path}: {'up to date' if same else 'STALE: run ledger relay asyncapi'}")
        raise typer.Exit(0 if same else 1)
    typer.echo(str(asyncapi.write(path)))


@report_app.command("monthly")
def report_monthly(
    month: str = typer.Option(..., "--month", help="YYYY-MM"),
    csv_dir: Optional[Path] = typer.Option(None, "--csv", help="write <month>-汇总表.csv and <month>-发放清单.csv into this folder"),
    xlsx: Optional[Path] = typer.Option(None, "--xlsx", help="write a workbook with the sheets 汇总表 and 发放清单"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """The month's settlement summary per street and payout list, with the R-PH-6 deadlines."""
    import re

    from infra.reports import ReportSettings, ReportStore, write_csv, write_xlsx

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        typer.echo(f"--month: {month!r} is not YYYY-MM", err=True)
        raise typer.Exit(2)
    settings = ReportSettings()
    store = ReportStore(settings.database_url, settings.name)
    try:
        report = store.monthly(month)
    finally:
        store.close()
    written = []
    if csv_dir:
        written += [str(p) for p in write_csv(report, csv_dir)]
    if xlsx:
        written.append(str(write_xlsx(report, xlsx)))
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        d = report.as_dict()
        typer.echo(f"{month}: period {d['period']['from']}..{d['period']['to']}, submit by {d['submission_due']}, pay by {d['payment_due']}")
        if report.warning:
            typer.echo(f"WARNING: {report.warning}")
        for s in d["streets"]:
            typer.echo(f"  {s['street']}: {s['claims']} claims, {s['expenses']} expenses, aid {s['aid_total']}, paid to persons {s['to_person']}")
    for p in written:
        typer.echo(f"wrote {p}", err=True)


@report_app.command("subscribe")
def report_subscribe(
    catch_up: bool = typer.Option(False, "--catch-up", help="first consume the replay (run `ledger relay replay --to NAME`), then live"),
    name: Optional[str] = typer.Option(None, "--name", help="queue / durable consumer name (LEDGER_REPORTS_NAME)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the report subscriber: RabbitMQ or NATS, per LEDGER_BROKER."""
    from infra.relay import Topology
    from infra.reports import ReportSettings, ReportStore, ReportSubscriber

    _logging(verbose)
    settings = ReportSettings()
    store = ReportStore(settings.database_url, name or settings.name)
    sub = ReportSubscriber(store, Topology.from_settings(), name or settings.name)

    async def main(stop: threading.Event) -> None:
        await sub.prepare()
        if catch_up:
            typer.echo(f"waiting for the replay: ledger relay replay --to {sub.name}", err=True)
        await sub.run(catch_up=catch_up, stop=stop)

    try:
        with _stop_on_signals() as stop:
            asyncio.run(main(stop))
    finally:
        store.close()
    typer.echo(json.dumps(dict(sub.outcomes)))
