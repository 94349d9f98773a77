"""``ledger projections …``: rebuild, follow, inspect and check the read models (ADR 0008).

The read models live beside the event store (``LEDGER_DATABASE_URL``): the same PostgreSQL
database, or ``<store>.projections.db`` beside a SQLite store. Test hook:
``LEDGER_PROJECTIONS_PAUSE_IN_BATCH=<seconds>`` makes each batch sleep before its commit.

A view that meets an event it cannot apply stops before it and says so (view, position, event
type, error); ``status`` lists it and exits 1; ``skip VIEW POSITION --reason …`` is the operator's
recorded decision to leave that event out of the view.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from infra.cli import app
from projections.common import make_engine, projection_url, reading
from projections.runner import DEFAULT_BATCH, PARALLEL_FROM, REBUILD_BATCH, Failure, NoSuchFailure, Runner, default_jobs, select_projections

projections_app = typer.Typer(help="Read models over the event log: caps, 四医联动 months, duplicates, fund books, statements.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")

err = Console(stderr=True)



def _alert(failure: Failure) -> None:
    err.print(f"[red]projections: {failure.message()}[/red]", highlight=False, soft_wrap=True)


def _runner(names: list[str] | None, batch: int, pause: float = 0.0) -> Runner:
    from infra.settings import get_settings
    from infra.wiring import build_app, on_close

    settings = get_settings()
    if settings.is_memory:
        err.print("[red]LEDGER_DATABASE_URL is in memory: there is no event log to project[/red]")
        raise typer.Exit(2)
    try:
        chosen = select_projections(names)
    except KeyError as exc:
        err.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from None
    ledger = build_app(settings, publish_policy=False)  # reading only: publishes nothing
    engine = make_engine(projection_url(settings.sqlalchemy_url()))
    on_close(engine.dispose)
    return Runner(engine, ledger.recorder, ledger.mapper, chosen, batch_size=batch, pause_in_batch=pause, on_failure=_alert)


def _need_tables(runner: Runner) -> None:
    """Reading commands create nothing: without read models they say how to make them."""
    from sqlalchemy import inspect

    if not inspect(runner.engine).has_table("proj_tracking"):
        err.print("no read models yet: run `ledger projections rebuild` (or `ledger projections run`)")
        raise typer.Exit(2)


class _Rate(ProgressColumn):
    """Notifications per second over the whole run (the read count, not the id span)."""

    def __init__(self, counter: dict[str, float]):
        super().__init__()
        self.counter = counter

    def render(self, task: Any) -> Text:
        elapsed = max(time.perf_counter() - self.counter["start"], 1e-9)
        return Text(f"{self.counter['events'] / elapsed:,.0f} events/s", style="cyan")


@projections_app.command("rebuild")
def rebuild(
    names: Optional[list[str]] = typer.Argument(None, help="projections to rebuild (default: all)", metavar="[NAME]..."),
    batch: int = typer.Option(REBUILD_BATCH, "--batch", min=1, help="notifications per transaction"),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="processes, each a group of views (0: one per core for a log of "
                             f"{PARALLEL_FROM:,} notifications or more, else 1; 1: one process, the views share each page)"),
) -> None:
    """Empty the read models and rebuild them from the first event, in batches; the views are
    rebuilt in parallel processes, each a partition of the recipients tracking its own position;
    a rebuild cut short is finished by the next `ledger projections run` (ADR 0008)."""
    runner = _runner(names, batch, float(os.environ.get("LEDGER_PROJECTIONS_PAUSE_IN_BATCH", "0") or 0))
    if not jobs:  # a process costs ~1.5 s of start-up (imports, connections): worth it on a long log only
        jobs = default_jobs(runner.head())
    if jobs > 1:
        _rebuild_parallel(runner, jobs)
        return
    runner.setup()
    for p in runner.projections:
        runner.reset(p)
    head = runner.head()
    counter = {"start": time.perf_counter(), "events": 0.0}
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(counter), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(", ".join(p.name for p in runner.projections), total=max(head, 1))

        def advance(position: int, _head: int, read: int) -> None:
            counter["events"] += read
            progress.update(task, completed=min(position, head))

        runner.catch_up(advance)
        progress.update(task, completed=max(head, 1))
    elapsed = time.perf_counter() - counter["start"]
    rate = counter["events"] / elapsed if elapsed > 0 else 0.0
    typer.echo(f"rebuilt {', '.join(p.name for p in runner.projections)}: {int(counter['events'])} events up to position {head} in {elapsed:.2f}s ({rate:,.0f} events/s)")
    _exit_if_stopped(runner)


def _rebuild_parallel(runner: Runner, jobs: int) -> None:
    from infra.projection_source import store_source
    from infra.settings import get_settings

    head = runner.head()
    started = time.perf_counter()

    def done(name: str, read: int, seconds: float) -> None:
        err.print(f"projections: {name} rebuilt: {read} events in {seconds:.2f}s")

    total = runner.rebuild_parallel(projection_url(get_settings().sqlalchemy_url()), store_source(), jobs=jobs, progress=done)
    elapsed = time.perf_counter() - started
    rate = total / elapsed if elapsed > 0 else 0.0
    whole = [p.name for p in runner.projections if not p.partitionable]
    processes = f"{jobs + 1} processes ({jobs} partitions of the recipients; {', '.join(whole)} whole)" if whole else f"{jobs} processes"
    typer.echo(f"rebuilt {', '.join(p.name for p in runner.projections)} in {processes}: {total} events (summed over processes) "
               f"up to position {head} in {elapsed:.2f}s ({rate:,.0f} events/s)")
    _exit_if_stopped(runner)


def _exit_if_stopped(runner: Runner) -> None:
    """Exit 1 when a view is stopped at a failure (each was alerted as it happened)."""
    stopped = [s for s in runner.status() if s.failed]
    if stopped:
        for s in stopped:
            err.print(f"[red]projections: {s.name} is stopped before position {s.failed.position} ({s.failed.event_type}): "
                      f"{s.failed.error}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@projections_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Position and lag of each read model, and the events a view could not apply. Exits 1 when
    a view is stopped at such an event (until an operator skips it)."""
    runner = _runner(None, DEFAULT_BATCH)
    _need_tables(runner)
    rows = runner.status()
    stopped = [s for s in rows if s.failed]
    if as_json:
        sys.stdout.write(json.dumps([
            {"name": s.name, "version": s.version, "position": s.position, "head": s.head, "lag": s.lag, "stale": s.stale,
             "updated_at": s.updated_at, "stopped_at": s.failed.position if s.failed else None,
             "failures": [f.as_dict() for f in s.failures]}
            for s in rows
        ], ensure_ascii=False, indent=2) + "\n")
    else:
        table = Table(title="read models")
        for col in ("projection", "version", "position", "head", "lag", "last commit", "state"):
            table.add_column(col, justify="right" if col in ("version", "position", "head", "lag") else "left")
        for s in rows:
            version = f"{s.stored_version} → {s.version} (rebuilt on next run)" if s.stale else str(s.version)
            state = f"[red]STOPPED before {s.failed.position}[/red]" if s.failed else "ok"
            table.add_row(s.name, version, str(s.position), str(s.head), str(s.lag), s.updated_at or "-", state)
        Console().print(table)
        recorded = [f for s in rows for f in s.failures if f.status != "resolved"]
        if recorded:
            failed = Table(title="events a view could not apply")
            for col in ("projection", "position", "event", "error", "attempts", "decision"):
                failed.add_column(col, justify="right" if col in ("position", "attempts") else "left")
            for f in recorded:
                decision = f"skipped {f.skipped_at} by {f.skipped_by}: {f.reason}" if f.status == "skipped" else "[red]none yet: the view is stopped[/red]"
                failed.add_row(f.name, str(f.position), f.event_type, f.error, str(f.attempts), decision)
            Console().print(failed)
    if stopped:
        for s in stopped:
            err.print(f"[red]projections: {s.failed.message()}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@projections_app.command("skip")
def skip(
    name: str = typer.Argument(..., help="the view stopped at the failure"),
    position: int = typer.Argument(..., help="the failed notification's position (from `ledger projections status`)"),
    reason: str = typer.Option(..., "--reason", help="why the event can be left out of this view (kept with the decision)"),
    by: Optional[str] = typer.Option(None, "--by", help="who decides (default: the login name)"),
) -> None:
    """Leave one failed event out of one view, by an operator's recorded decision; the view goes
    on from there at its next run (rebuilds leave it out too)."""
    runner = _runner([name], DEFAULT_BATCH)
    _need_tables(runner)
    who = by or os.environ.get("LEDGER_OPERATOR") or getpass.getuser()
    try:
        done = runner.skip(name, position, reason=reason, by=who)
    except NoSuchFailure as exc:
        err.print(f"[red]{exc}: only a recorded failure can be skipped (see `ledger projections status`)[/red]")
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    typer.echo(f"{done.name}: position {done.position} ({done.event_type}) is left out of this view, "
               f"skipped {done.skipped_at} by {done.skipped_by}: {done.reason}")


@projections_app.command("run")
def run(
    names: Optional[list[str]] = typer.Argument(None, help="projections to keep current (default: all)", metavar="[NAME]..."),
    interval: float = typer.Option(1.0, "--interval", min=0.01, help="seconds between polls when caught up"),
    batch: int = typer.Option(DEFAULT_BATCH, "--batch", min=1, help="notifications per transaction"),
    once: bool = typer.Option(False, "--once", help="stop once caught up"),
) -> None:
    """Keep the read models current by polling the event log; stops cleanly on SIGTERM / Ctrl-C."""
    pause = float(os.environ.get("LEDGER_PROJECTIONS_PAUSE_IN_BATCH", "0") or 0)
    runner = _runner(names, batch, pause)
    runner.setup()
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        err.print(f"projections: signal {signum}, stopping after the current batch")
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    err.print(f"projections: following the event log ({', '.join(p.name for p in runner.projections)})")
    runner.run(stop, interval=interval, exit_when_idle=once, on_error=lambda exc: err.print(f"[yellow]projections: {exc!r}; retrying[/yellow]"))
    for s in runner.status():
        err.print(f"projections: {s.name} at {s.position} (head {s.head})" + (f", stopped before {s.failed.position}" if s.failed else ""))
    _exit_if_stopped(runner)


@projections_app.command("check")
def check(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Prove the fund books: balanced at every position, receivables equal clearing cases."""
    from projections import funds

    runner = _runner(["funds"], DEFAULT_BATCH)
    _need_tables(runner)
    [st] = runner.status()
    with reading(runner.engine) as conn:
        result = funds.check(conn)
        outflow = funds.outflow(conn)
    if as_json:
        sys.stdout.write(json.dumps({"ok": result.ok, "position": st.position, "head": st.head, "positions": result.positions, "entries": result.entries, "lines": result.lines, "funds": outflow, "problems": result.problems}, ensure_ascii=False, indent=2) + "\n")
    else:
        typer.echo(f"fund books at position {st.position} (head {st.head}, lag {st.lag}): {result.entries} entries, {result.lines} lines over {result.positions} positions")
        typer.echo(f"debits {result.debits / 100:,.2f} = credits {result.credits / 100:,.2f}" if result.debits == result.credits else "debits ≠ credits")
        typer.echo("net outflow: " + ", ".join(f"{k} {v}" for k, v in outflow.items()))
        for p in result.problems:
            typer.echo(f"PROBLEM {p}")
        typer.echo("the books balance at every position" if result.ok else f"{len(result.problems)} problem(s)")
    if not result.ok:
        raise typer.Exit(1)


def _resolve_recipient(text: str) -> str:
    """The recipient as the ledger shows them (id, resident id number, a name matching one
    person; ADR 0019); nobody matching is an error (exit 1), never an empty statement."""
    from commands.lookup import resolve_recipient
    from infra.settings import get_settings
    from infra.wiring import build_app
    from ledger import errors

    ledger = build_app(get_settings(), publish_policy=False)
    try:
        return resolve_recipient(ledger, text)
    except errors.LedgerError as exc:
        err.print(f"{exc.code}: {exc.message}", markup=False)
        raise typer.Exit(4 if isinstance(exc, errors.UnknownEntity) else 1) from None  # 4: not found
    finally:
        close = getattr(ledger, "close", None)
        if close:
            close()


@projections_app.command("statement")
def statement(
    recipient: str = typer.Argument(..., help="the recipient: ledger id (uuid), resident id number or name"),
    as_json: bool = typer.Option(False, "--json"),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="also write the statement as CSV (+08:00 times, expense handles, totals per kind)"),
    xlsx_path: Optional[Path] = typer.Option(None, "--xlsx", help="also write the statement as an XLSX workbook (sheets 对账单 and 合计)"),
) -> None:
    """A recipient's statement from the read model: every expense, decision, payout, recovery."""
    from projections import statement as st

    runner = _runner(["statement"], DEFAULT_BATCH)
    _need_tables(runner)
    recipient = _resolve_recipient(recipient)
    with reading(runner.engine) as conn:
        rows = st.for_recipient(conn, recipient)
    from infra import statement_export
    from infra.settings import get_settings
    from infra.wiring import build_app

    handles = statement_export.handles_of(build_app(get_settings(), publish_policy=False), recipient)
    for path, write in ((csv_path, statement_export.write_csv), (xlsx_path, statement_export.write_xlsx)):
        if path:
            err.print(f"wrote {write(rows, path, handles)}", markup=False)
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    table = Table(title=f"statement {recipient}")
    for col in ("position", "recorded", "kind", "expense", "amount"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["position"]), st.local_time(r["recorded_at"]), r["kind"], handles.get(r["expense"] or "", r["expense"] or ""), r["amount"] or "")
    Console().print(table)
