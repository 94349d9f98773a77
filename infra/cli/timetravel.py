"""``ledger replay``, ``ledger whatif``, ``ledger snapshot``: time travel for auditors (ADR 0010).

Adapters over :mod:`commands.replay`, :mod:`commands.whatif` and :mod:`commands.snapshot`, on
the store named by ``LEDGER_DATABASE_URL``. None of them records anything.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.cli import app

err = Console(stderr=True)


def _ledger():
    """The application on the configured store, in the store's own jurisdiction. Unlike
    ``build_app`` it publishes nothing on an empty store: these commands only read."""
    from commands.app import LedgerApp
    from infra.schema_lock import schema_lock
    from infra.settings import get_settings
    from infra.wiring import APP_NAME
    from ledger import errors

    settings = get_settings()
    env = settings.eventsourcing_env(APP_NAME)
    # Processes opening the store together (`replay --all`'s workers) take turns at its tables:
    # PostgreSQL can refuse concurrent CREATE … IF NOT EXISTS ("tuple concurrently updated").
    def opened(jurisdiction: str) -> LedgerApp:
        with schema_lock(settings):
            return LedgerApp(env, jurisdiction=jurisdiction)

    ledger = opened(settings.jurisdiction)
    try:
        jurisdiction = ledger.policy().jurisdiction
    except errors.LedgerError:
        return ledger
    return ledger if jurisdiction == ledger.jurisdiction else opened(jurisdiction)


def _chained_ledger():
    """The application as ``build_app`` wires it (personal fields readable, the integrity chain
    installed: the snapshot's manifest names its head), publishing nothing, in the store's own
    jurisdiction."""
    from infra.settings import get_settings
    from infra.wiring import build_app
    from ledger import errors

    settings = get_settings()
    ledger = build_app(settings, publish_policy=False)
    try:
        jurisdiction = ledger.policy().jurisdiction
    except errors.LedgerError:
        return ledger
    if jurisdiction == ledger.jurisdiction:
        return ledger
    ledger.close()
    return build_app(settings, jurisdiction=jurisdiction, publish_policy=False)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _known_at(text: Optional[str]):
    from commands.timeline import parse_known_at

    try:
        return parse_known_at(text)
    except ValueError:
        _fail(f"--known-at: {text!r} is not an ISO 8601 time or date")


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
    )


# --------------------------------------------------------------------------- replay


def _explain(summary: dict[str, Any] | None) -> list[str]:
    """A decision's explanation in a few lines: the waterfall, the category chosen, each scheme."""
    if summary is None:
        return ["(nothing)"]
    trace = summary.get("trace") or {}
    lines = [f"granted {summary.get('granted')} {summary.get('code') or ''}".rstrip()]
    w = trace.get("waterfall") or {}
    if w:
        lines.append(f"self-pay {w.get('self_pay')} = in-scope {w.get('in_scope')} - basic {w.get('basic_insurance')} - {len(w.get('settlements') or [])} settlement(s)")
    choice = trace.get("category_choice") or {}
    if choice:
        lines.append(f"category {choice.get('chosen')} ({choice.get('rule')}: {choice.get('why')})")
    for s in trace.get("schemes") or []:
        if "amount" in s:
            rate = s.get("rate") or s.get("coverage") or {}
            cap = s.get("cap") or {}
            extra = ", cap bound" if cap.get("bound") else ""
            rv = f" × {rate.get('value')}" if isinstance(rate, dict) and rate.get("value") is not None else ""
            lines.append(f"{s.get('scheme')}: {s.get('base')}{rv} → {s.get('amount')}{extra} {s.get('rules') or ''}")
        elif s.get("applied") is False or "top_up" in s:
            lines.append(f"{s.get('scheme')}: top-up {s.get('top_up', '0.00')} ({s.get('eligibility') or s.get('suspended') or ''})")
    lines.append(f"total {summary.get('total')} by fund {summary.get('by_fund')}")
    return lines


def _print_replay(res) -> None:
    out = Console()
    verdict = "[green]EQUAL[/green]" if res.equal else "[red]DIFFERENT[/red]"
    out.print(f"{res.kind} of {res.expense_id} recorded {res.recorded_at} (event v{res.event_version}): {verdict}")
    out.print(f"  recorded knowledge: recipient v{res.knowledge.get('recipient_version')}, policy v{res.knowledge.get('policy_version')} ({res.knowledge.get('policy_hash')})")
    out.print(f"  replayed with:      recipient v{res.replayed_with.get('recipient_version')}, policy v{res.replayed_with.get('policy_version')}, known at {res.replayed_with.get('known_at') or 'as recorded'}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("stored")
    table.add_column("replayed")
    for key in ("granted", "category", "self_pay", "total", "by_scheme", "by_fund"):
        a = (res.stored or {}).get(key)
        b = (res.replayed or {}).get(key)
        table.add_row(key, json.dumps(a, ensure_ascii=False), json.dumps(b, ensure_ascii=False), style=None if a == b else "red")
    table.add_row("explanation", "\n".join(_explain(res.stored)), "\n".join(_explain(res.replayed)))
    out.print(table)
    for d in res.differences[:20]:
        out.print(f"  {'≠ amount' if d['amount'] else '≠ trace '} {d['path']}: {json.dumps(d['stored'], ensure_ascii=False)} → {json.dumps(d['replayed'], ensure_ascii=False)}")
    if len(res.differences) > 20:
        out.print(f"  … {len(res.differences) - 20} more differences (--json shows them all)")


@app.command("replay")
def replay(
    expense: Optional[str] = typer.Argument(None, help="an expense id (<recipient uuid>:<n>)"),
    all_: bool = typer.Option(False, "--all", help="every decision and reassessment in the store"),
    known_at: Optional[str] = typer.Option(None, "--known-at", help="re-decide with the facts and policy recorded up to T (default: as recorded at the decision)"),
    verify: bool = typer.Option(False, "--verify", help="exit 1 on any difference (the determinism audit)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    jobs: int = typer.Option(0, "--jobs", min=0, help="with --all: worker processes (0: one per core from 1,000 recipients on, else one)"),
) -> None:
    """Re-decide stored decisions and compare them to the fen and the explanation (R-TIME-1)."""
    from commands.replay import audit, default_jobs, replay_expense
    from ledger import errors

    if bool(expense) == all_:
        _fail("give either an EXPENSE id or --all")
    t = _known_at(known_at)
    ledger = _ledger()
    if expense:
        try:
            results = replay_expense(ledger, expense, t)
        except errors.LedgerError as exc:
            _fail(exc.message)
        if as_json:
            _dump({"expense": expense, "equal": all(r.equal for r in results), "replays": [r.as_dict() for r in results]})
        else:
            for r in results:
                _print_replay(r)
        if verify and not all(r.equal for r in results):
            raise typer.Exit(1)
        return
    started = time.perf_counter()
    recipients = list(ledger.recipient_ids())
    jobs = jobs or default_jobs(len(recipients))
    with _progress() as bar:
        task = bar.add_task("replaying decisions", total=len(recipients))
        # each worker process opens the store as this one did (``_ledger``: settings from the environment)
        report = audit(ledger, t, recipients=recipients, progress=lambda n: bar.advance(task, n), jobs=jobs, source=_ledger)
    elapsed = time.perf_counter() - started
    if as_json:
        _dump({**report.as_dict(), "known_at": t.isoformat() if t else None, "seconds": round(elapsed, 3), "jobs": jobs})
    else:
        for r in report.different:
            _print_replay(r)
        colour = "green" if report.ok else "red"
        Console().print(
            f"[{colour}]{len(report.different)} difference(s)[/{colour}] in {report.expenses} decided expense(s): "
            f"{report.decisions} decision(s), {report.reassessments} reassessment(s), {report.recipients} recipient(s); {elapsed:.2f} s"
        )
    if verify and not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- what-if


@app.command("whatif")
def whatif(
    set_: list[str] = typer.Option(..., "--set", help="NAME=VALUE, a parameter as set_parameter takes it (repeatable)"),
    from_: str = typer.Option(..., "--from", help="effective from (YYYY-MM-DD)"),
    to: Optional[str] = typer.Option(None, "--to", help="effective to (YYYY-MM-DD)"),
    scope: Optional[list[str]] = typer.Option(None, "--scope", help="scheme=ID | street=NAME | recipient=UUID-or-id-number (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    details: bool = typer.Option(False, "--details", help="list every expense that changes"),
) -> None:
    """Recompute the decided expenses under a proposed parameter change; records nothing."""
    from datetime import date

    from commands.whatif import Scope, parse_setting, what_if
    from ledger import errors
    from ledger.policy.params import PolicyError

    try:
        settings = [parse_setting(s) for s in set_]
        start = date.fromisoformat(from_)
        end = date.fromisoformat(to) if to else None
    except errors.LedgerError as exc:
        _fail(exc.message)
    except ValueError as exc:
        _fail(f"--from/--to: {exc}")
    ledger = _ledger()
    try:
        scoped = Scope.parse(scope, ledger.recipient_id_for)
    except errors.LedgerError as exc:
        _fail(exc.message)
    started = time.perf_counter()
    try:
        with _progress() as bar:
            task = bar.add_task("recomputing", total=None)
            report = what_if(ledger, settings, start, end, scoped, progress=lambda n: bar.advance(task, n))
    except PolicyError as exc:
        _fail(f"{exc.code}: {exc}", 1 if exc.code == "POLICY_FLOOR" else 2)
    except errors.LedgerError as exc:
        _fail(exc.message)
    elapsed = time.perf_counter() - started
    data = report.as_dict()
    if as_json:
        _dump({**data, "seconds": round(elapsed, 3)})
        return
    out = Console()
    proposal = ", ".join(f"{a['name']}={a['value']}" for a in data["amendments"])
    out.print(f"what-if {proposal} from {from_}{' to ' + to if to else ''} (nothing recorded)")
    out.print(f"{data['expenses_affected']} decided expense(s) of {data['recipients_affected']} recipient(s) change; total {data['total']['before']} → {data['total']['after']} ({data['total']['change']})")
    for dim in ("scheme", "fund", "category", "street", "month"):
        rows = data[f"by_{dim}"]
        if not rows:
            continue
        table = Table(title=f"by {dim}", show_header=True, header_style="bold")
        for col in (dim, "before", "after", "change"):
            table.add_column(col, justify="left" if col == dim else "right")
        for key, v in rows.items():
            table.add_row(key or "-", v["before"], v["after"], v["change"])
        out.print(table)
    if details:
        for e in data["expenses"]:
            out.print(f"  {e['expense']} {e['service_month']} {e['category']} {e['before']} → {e['after']} ({e['change']})")
    out.print(f"{elapsed:.2f} s")


# --------------------------------------------------------------------------- snapshot


@app.command("snapshot")
def snapshot(
    valid: Optional[str] = typer.Option(None, "--valid", help="valid date V (YYYY-MM-DD; default today)"),
    known_at: Optional[str] = typer.Option(None, "--known-at", help="known-at time T (ISO 8601; a date means its end; default: everything recorded)"),
    format_: Optional[list[str]] = typer.Option(None, "--format", help="json | csv | xlsx (repeatable; default all three)"),
    out: Path = typer.Option(Path("."), "--out", help="directory for the files and the manifest"),
) -> None:
    """The books as effective on V, as known at T (R-TIME-3): from the persisted cuts (brought to
    the log's head first), streamed to the files recipient by recipient (ADR 0010)."""
    from commands.snapshot import FORMATS, snapshot_from_cuts, write_export
    from commands.timeline import parse_valid
    from infra.integrity import chain_head
    from infra.settings import get_settings
    from projections.common import make_engine, projection_url

    formats = format_ or list(FORMATS)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        _fail(f"--format: {', '.join(unknown)} is not one of {', '.join(FORMATS)}")
    try:
        v = parse_valid(valid)
    except ValueError:
        _fail(f"--valid: {valid!r} is not a date (YYYY-MM-DD)")
    t = _known_at(known_at)
    ledger = _chained_ledger()
    started = time.perf_counter()
    engine = make_engine(projection_url(get_settings().sqlalchemy_url()))
    try:
        head, rows = snapshot_from_cuts(ledger, engine, v, t)
        try:
            link = chain_head(head.position, ledger)
        except Exception as exc:  # noqa: BLE001 - a store without the chain still gets its snapshot
            err.print(f"no integrity-chain head for the manifest: {exc}")
            link = None
        manifest = write_export(head, rows, formats, out, {"position": link.position, "hash": link.hash} if link else None)
    finally:
        engine.dispose()
    elapsed = time.perf_counter() - started
    typer.echo(
        f"snapshot V={manifest['valid']} T={manifest['known_at']} store position {head.position}: "
        f"{manifest['rows']} row(s), {head.recipients} recipient(s)"
    )
    for name, meta in manifest["files"].items():
        typer.echo(f"  {out / name}  sha256 {meta['sha256']}")
    typer.echo(f"  {out / (head.stem + '.manifest.json')}")
    typer.echo(f"elapsed {elapsed:.2f} s")
