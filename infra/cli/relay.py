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


def _progress(label: str):
    """A progress bar on stderr (stdout keeps the JSON summary)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("events"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )


def _watch(progress, task, done: threading.Event, read) -> threading.Thread:
    """Refresh ``task`` from ``read()`` (events done so far) until ``done`` is set."""

    def loop() -> None:
        while not done.wait(0.2):
            progress.update(task, completed=read())

    thread = threading.Thread(target=loop, name="relay-progress", daemon=True)
    thread.start()
    return thread


@relay_app.command("run")
def relay_run(
    once: bool = typer.Option(False, "--once", help="publish up to the log's current head, then exit (with a progress bar)"),
    from_: Optional[int] = typer.Option(None, "--from", help="start at this position (0: the beginning) instead of the tracked one"),
    name: Optional[str] = typer.Option(None, "--name", help="tracking name (LEDGER_RELAY_NAME, default main)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="events read (and tracked) per batch"),
    max_rate: Optional[float] = typer.Option(None, "--max-rate", min=0.1, help="at most this many messages per second"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Follow the notification log and publish every public message; the position is recorded
    only after the broker confirmed, so a crash re-sends rather than loses."""
    from infra.relay import Relay, run_relay

    _logging(verbose)
    if not once:
        with _stop_on_signals() as stop:
            stats = run_relay(once=False, start=from_, stop=stop, name=name, batch_size=batch_size, max_rate=max_rate)
    else:
        relay = Relay(name=name, batch_size=batch_size, max_rate=max_rate)
        try:
            head = relay.reader.head()
            first = max(0, from_ - 1) if from_ is not None else relay.position()
            done = threading.Event()
            with _progress(f"relay {relay.name}") as progress, _stop_on_signals() as stop:
                task = progress.add_task("publish", total=max(0, head - first))
                watcher = _watch(progress, task, done, lambda: max(0, min(head, relay.stats.position or first) - first))
                try:
                    stats = asyncio.run(relay.run(once=True, start=from_, stop=stop))
                finally:
                    done.set()
                    watcher.join()
                progress.update(task, completed=max(0, min(head, stats.position) - first))
        finally:
            relay.close()
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
        head = relay.reader.head()
        first = max(0, from_ - 1)
        done = threading.Event()
        with _progress(f"replay to {to}") as progress:
            # positions read are not tracked by a replay: the count of messages sent shows the way
            # (an upper bound: events outside the public contract are read but not sent)
            task = progress.add_task("replay", total=max(0, head - first))
            watcher = _watch(progress, task, done, lambda: min(max(0, head - first), relay.stats.published))
            try:
                replayed = asyncio.run(relay.replay(to, start=from_, up_to=head))
            finally:
                done.set()
                watcher.join()
            progress.update(task, completed=max(0, head - first))
    finally:
        relay.close()
    typer.echo(json.dumps({"replayed_to": replayed, "published": relay.stats.published, "destination": to}))


@relay_app.command("status")
def relay_status(
    name: Optional[str] = typer.Option(None, "--name"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of the table"),
) -> None:
    """The relay's tracked position, the log's head and the lag between them (events, and the age
    of the oldest event not yet published)."""
    from datetime import datetime

    from infra.relay import Relay
    from ledger.values import CST

    relay = Relay(name=name)
    try:
        position, head = relay.position(), relay.reader.head()
        state = _tracking_row(relay)
        oldest = _recorded_after(relay.app, position, head)
    finally:
        relay.close()
    lag_seconds = None if oldest is None else max(0.0, round((datetime.now(CST) - oldest).total_seconds(), 1))
    data = {
        "name": relay.name, "position": position, "head": head, "broker": relay.topology.kind,
        "lag_events": max(0, head - position), "lag_seconds": lag_seconds if position < head else 0.0,
        "published": state[0], "updated_at": state[1],
    }
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"relay {relay.name} ({relay.topology.kind})", show_header=True)
    for column in ("position", "head", "lag (events)", "oldest unpublished", "published", "updated"):
        table.add_column(column, justify="right" if column != "updated" else "left")
    oldest_text = "—" if position >= head or oldest is None else f"{oldest.astimezone(CST).isoformat(timespec='seconds')} ({_age(lag_seconds)})"
    table.add_row(f"{position:,}", f"{head:,}", f"{data['lag_events']:,}", oldest_text, f"{state[0]:,}", state[1] or "never")
    Console(width=max(100, Console().width)).print(table)


def _tracking_row(relay) -> tuple[int, str | None]:
    """(messages published, when the position last moved) from the relay's tracking row."""
    import sqlalchemy as sa

    from infra.relay import relay_tracking

    with relay.tracking.engine.connect() as conn:
        row = conn.execute(sa.select(relay_tracking.c.published, relay_tracking.c.updated_at).where(relay_tracking.c.name == relay.name)).first()
    if row is None:
        return 0, None
    updated = row[1]
    try:  # shown on the people's clock, +08:00, whatever it was stored in
        from datetime import datetime

        from ledger.values import CST

        updated = datetime.fromisoformat(updated).astimezone(CST).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        pass
    return int(row[0] or 0), updated


def _recorded_after(app, position: int, head: int):
    """When the first event after ``position`` was recorded (None when there is none)."""
    if position >= head:
        return None
    notes = app.recorder.select_notifications(position + 1, 1)
    return app.mapper.to_domain_event(notes[0]).timestamp if notes else None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


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
    from_ledger: bool = typer.Option(
        True, "--from-ledger/--subscriber-only",
        help="first bring the report store up to date straight from the ledger's store (LEDGER_DATABASE_URL; "
             "no relay or broker needed); --subscriber-only reports what `ledger report subscribe` stored",
    ),
) -> None:
    """The month's settlement summary per street and payout list, with the R-PH-6 deadlines.

    By default it reads what it needs from the ledger's own store first (the relay's messages,
    mapped in process), so it works on any store; the XLSX and CSV then name each person by name
    and masked id number."""
    import re

    from infra.reports import ReportSettings, ReportStore, ledger_people, write_csv, write_xlsx

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        typer.echo(f"--month: {month!r} is not YYYY-MM", err=True)
        raise typer.Exit(2)
    settings = ReportSettings()
    store = ReportStore(settings.database_url, settings.name)
    people = None
    try:
        if from_ledger:
            from infra.relay import reader_app
            from infra.settings import get_settings

            ledger = reader_app(get_settings())
            applied = store.catch_up(ledger)
            if applied:
                typer.echo(f"report store brought up to date from the ledger: {applied} messages applied", err=True)
            people = ledger_people(ledger)
        report = store.monthly(month)
        written = []
        if csv_dir:
            written += [str(p) for p in write_csv(report, csv_dir, people=people)]
        if xlsx:
            written.append(str(write_xlsx(report, xlsx, people=people)))
    finally:
        store.close()
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
