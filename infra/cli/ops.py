"""``ledger demo``, ``ledger do`` and ``ledger status``: thin adapters over the handlers.

Every command honours ``LEDGER_DATABASE_URL`` (``infra.settings``).
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import time
from datetime import date, datetime, timedelta
from typing import Any, Optional

import typer
from eventsourcing.persistence import IntegrityError, OperationalError
from pydantic import BaseModel, ValidationError

from commands import models as m
from commands.app import DEFAULT_OFFICERS, LedgerApp, WriteConflict, retryable_write_error
from infra import ops
from infra.cli import app
from infra.input_errors import describe_ledger_error, describe_validation
from infra.settings import get_settings
from ledger import errors
from ledger.values import CST

#: ``ledger do NAME``: the scenario contract's command names (SCENARIOS.md) → the command models.
COMMANDS: dict[str, type[m.Command]] = {
    "enrol": m.Enrol,
    "grant_category": m.GrantCategory,
    "revoke_category": m.RevokeCategory,
    "insure": m.Insure,
    "end_insurance": m.EndInsurance,
    "join_mutual_aid": m.JoinMutualAid,
    "consent_auto_claim": m.ConsentAutoClaim,
    "record_expense": m.RecordExpense,
    "settle_insurance": m.SettleInsurance,
    "one_stop": m.OneStop,
    "claim": m.LodgeClaim,
    "review": m.Review,
    "approve": m.Approve,
    "pay": m.Pay,
    "aid": m.LodgeClaim,  # claim + review + approve + pay with the default officers
    "auto_claims": m.AutoClaims,  # lodges the batch; its officers then sign it (sign_batch)
    "sign_batch": m.SignBatch,
    "set_parameter": m.SetParameter,
    "lift_suspension": m.LiftSuspension,
    "social_help": m.SocialHelp,
    "pay_supplementary": m.PaySupplementary,
    "repay": m.Repay,
    "write_off": m.WriteOff,
    "clearing_run": m.ClearingRun,
}

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_INVALID, EXIT_CONFLICT = 0, 1, 2, 3


# --------------------------------------------------------------------------------------- do


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a dotted key nests (``facility.kind=hospital``). A value that looks
    like JSON structure (``[...]``, ``{...}``, ``true``, ``false``, ``null``) is parsed as JSON;
    everything else stays a string, so money and id numbers are never turned into floats."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        value: Any = raw
        if raw[:1] in "[{" or raw in ("true", "false", "null"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{key}: {raw!r} is not valid JSON ({exc.msg})") from None
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ValueError(f"{key}: {p} is not a mapping")
        target[leaf] = value
    return out


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Pairs refine a --json object: ``facility.kind=…`` changes one key of its facility."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _invalid(problems: list[dict[str, str]]) -> tuple[int, dict[str, Any]]:
    return EXIT_INVALID, {"status": "invalid", "errors": problems}


def _conflict(exc: WriteConflict) -> tuple[int, dict[str, Any]]:
    return EXIT_CONFLICT, {"status": "conflict", "code": exc.code, "message": exc.message, "retryable": True}


def execute(ledger: LedgerApp, name: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Validate ``payload`` as command ``name`` and run it. Returns (exit code, answer):
    0 accepted, 1 rejected by a rule, 2 invalid input (nothing recorded; each problem names its
    field and rule; a ``command_id`` already used for another command is IDEMPOTENCY_MISMATCH),
    3 a conflict with concurrent writers that outlasted the retries (nothing recorded: run it
    again)."""
    model: type[BaseModel] | None = COMMANDS.get(name)
    if model is None:
        return _invalid([{"field": "command", "message": f"unknown command {name!r} (known: {', '.join(COMMANDS)})",
                          "rule": "SCENARIOS.md: the commands"}])
    try:
        from commands.lookup import resolve_fields

        # recipient / expense(s) / claim as the ledger shows them: handle, id number, name (ADR 0019)
        payload = resolve_fields(ledger, payload)
        if name == "aid":
            cmd = m.LodgeClaim.model_validate({"handler": DEFAULT_OFFICERS[0], **payload})
            result = ledger.aid(cmd.recipient, list(cmd.expenses), cmd.at, cmd.command_id)
        else:
            result = ledger.run(model.model_validate(payload))
    except ValidationError as exc:
        return _invalid(describe_validation(exc, model))
    except WriteConflict as exc:
        return _conflict(exc)
    except errors.LedgerError as exc:  # InvalidInput from a handler (e.g. an unknown recipient)
        return _invalid(describe_ledger_error(exc))
    answer = {"command": name, **result.as_dict()}
    return (EXIT_ACCEPTED if result.status == "accepted" else EXIT_REJECTED), answer


@app.command("do", context_settings={"ignore_unknown_options": True})
def do(
    command: str = typer.Argument(..., help=f"one of: {', '.join(COMMANDS)}"),
    pairs: Optional[list[str]] = typer.Argument(None, help="key=value fields (dotted keys nest: facility.kind=hospital)"),
    json_text: Optional[str] = typer.Option(None, "--json", help="the fields as one JSON object ('-' reads stdin)"),
    get: Optional[str] = typer.Option(None, "--get", help="print only this dotted field of the result (e.g. ids.recipient), for scripts"),
) -> None:
    """Run one command through its handler and print the result as JSON.

    Exit code 0: accepted; 1: rejected by a rule (the code and R-id are printed); 2: invalid input
    (each problem names its field and rule; nothing is recorded), a command_id already used for a
    different command included (IDEMPOTENCY_MISMATCH); 3: a conflict with concurrent writers
    (code CONFLICT; nothing is recorded: run it again).

    Example: ledger do enrol id_number=310105195803122013 name=王秀英 street=华阳路街道
    """
    try:
        payload: dict[str, Any] = {}
        if json_text is not None:
            loaded = json.loads(sys.stdin.read() if json_text == "-" else json_text)
            if not isinstance(loaded, dict):
                raise ValueError("--json: expected a JSON object")
            payload.update(loaded)
        _merge(payload, parse_pairs(pairs or []))
    except (ValueError, json.JSONDecodeError) as exc:
        code, answer = _invalid([{"field": "input", "message": str(exc), "rule": "ledger do: key=value pairs or one JSON object"}])
    else:
        try:
            ledger = _build_when_free()
        except (IntegrityError, OperationalError) as exc:
            if not retryable_write_error(exc):
                raise
            code, answer = _conflict(WriteConflict(f"the store stayed busy ({exc}); nothing was recorded: run it again"))
        else:
            try:
                code, answer = execute(ledger, command, payload)
            finally:
                ledger.close()
    if get is not None and code == EXIT_ACCEPTED:
        value: Any = answer
        for part in get.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        typer.echo(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    else:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2), err=get is not None)
    if code == EXIT_INVALID:
        for p in answer["errors"]:
            typer.echo(f"invalid {p['field']}: {p['message']} [{p['rule']}]", err=True)
    elif code == EXIT_CONFLICT:
        typer.echo(f"conflict: {answer['message']}", err=True)
    raise typer.Exit(code)


def _build() -> LedgerApp:
    from infra.wiring import build_app

    return build_app(get_settings())


def _build_when_free(seconds: float = 30.0) -> LedgerApp:
    """The ledger, waiting (jittered back-off, up to ``seconds``) while other processes keep the
    store busy, e.g. many ``ledger do`` started at once on a SQLite file."""
    deadline = time.monotonic() + seconds
    for attempt in itertools.count():
        try:
            return _build()
        except (IntegrityError, OperationalError) as exc:
            pause = random.uniform(0, min(0.5, 0.01 * 2**attempt))
            if not retryable_write_error(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------- status


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """What the configured store holds: events, recipients, claims, policy."""
    state = ops.store_state(get_settings())
    if as_json:
        typer.echo(json.dumps(state.as_dict(), ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("store", f"{state.url} [dim]({state.backend})[/dim]")
    if not state.exists:
        table.add_row("", "no database file yet: `ledger demo` builds one, or run a command")
    else:
        if state.size_bytes is not None:
            table.add_row("size", f"{state.size_bytes / 1e6:,.1f} MB")
        table.add_row("events", f"{state.events:,}" + (f" (last notification id {state.last_id:,})" if state.last_id != state.events else ""))
        table.add_row("recipients", f"{state.recipients:,}")
        table.add_row("claims", f"{state.claims:,}")
        table.add_row("policy", f"{state.packs} pack(s) published, {state.amendments} amendment(s)")
        table.add_row("last recorded", state.last_recorded.astimezone(CST).isoformat() if state.last_recorded else "-")
    Console().print(table)


# --------------------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    recipients: int = typer.Option(None, "--recipients", "-n", min=1, help="how many people (default: several hundred)"),
    seed: int = typer.Option(2026, help="the random seed: the same seed gives the same dataset"),
    until: Optional[str] = typer.Option(None, help="last day of the period, YYYY-MM-DD (default: yesterday)"),
    reset: bool = typer.Option(False, "--reset", help="erase a non-default store first (every table of a PostgreSQL database)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Build a realistic Changning dataset (2024–2026) through the command handlers.

    On the embedded default store (./var/ledger.db) the demo always starts afresh: it removes the
    previous file. Any other store that already holds events is left alone unless --reset.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from infra import demo as generator

    settings = get_settings()
    console = Console(stderr=as_json)
    try:
        last_day = date.fromisoformat(until) if until else datetime.now(CST).date() - timedelta(days=1)
    except ValueError:
        console.print(f"[red]--until: {until!r} is not a date (YYYY-MM-DD)[/red]")
        raise typer.Exit(EXIT_INVALID) from None
    years = (2024, 2025, 2026)
    if ops.is_default_store(settings):
        if ops.sqlite_file(settings).exists():  # type: ignore[union-attr]
            console.print(f"Starting afresh: {ops.erase_store(settings)} (the demo store is always rebuilt).", soft_wrap=True)
    elif ops.holds_events(settings):
        if not reset:
            console.print(
                f"[red]{ops.mask(settings.database_url)} already holds events; the demo needs an empty store.[/red]\n"
                "Use another LEDGER_DATABASE_URL, or --reset to erase this one first.",
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_REJECTED)
        console.print(f"--reset: {ops.erase_store(settings)}.", soft_wrap=True)
    ledger = generator.demo_app(settings, start=date(years[0], 1, 1))
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("recording the timeline", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            summary = generator.generate(
                ledger,
                recipients=recipients or generator.DEFAULT_RECIPIENTS,
                seed=seed,
                years=years,
                until=last_day,
                progress=progress,
            )
    finally:
        ledger.close()
    if as_json:
        typer.echo(json.dumps({"store": ops.mask(settings.database_url), **summary.as_dict()}, ensure_ascii=False, indent=2))
        return
    print_summary(console, ops.mask(settings.database_url), summary)


def print_summary(console: Any, store: str, s: Any) -> None:
    from rich.table import Table

    def yuan(v: Any) -> str:
        return f"¥{v:,.2f}"

    head = Table(title=f"Recorded in {store}", show_header=False, title_justify="left")
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("period", f"{s.first_at.date()} … {s.last_at.date()} ({s.steps:,} steps)")
    head.add_row("recipients", f"{s.recipients:,}  " + ", ".join(f"{k} {v}" for k, v in s.by_category.items()))
    head.add_row("expenses", f"{s.expenses:,}  ({s.one_stop:,} settled one-stop, {s.duplicates} duplicate receipt(s) flagged)")
    claims = s.claims
    head.add_row("claims", f"{claims.get('lodged', 0):,} lodged ({claims.get('auto', 0):,} by {claims.get('auto_batches', 0)} 免申即享 "
                 f"monthly batches), {claims.get('paid', 0):,} paid, {claims.get('rejected', 0):,} rejected")
    if s.rejections:
        head.add_row("rejections", ", ".join(f"{k} {v}" for k, v in s.rejections.items()))
    head.add_row("clearing", f"{s.cases_opened} case(s) opened, {s.cases_open} open, owed {yuan(s.open_balance)}; "
                 f"recovered {yuan(s.recovered)}, written off {yuan(s.written_off)}")
    head.add_row("supplementary", f"{s.supplementary} payout(s), {s.supplementary_pending} pending")
    head.add_row("four-linkage", f"{s.suspensions} suspension(s) (R-4L-4); social help {yuan(s.social_help)}")
    head.add_row("events stored", f"{s.events:,}")
    head.add_row("elapsed", f"{s.elapsed_s:.1f} s")
    console.print(head)
    money = Table(title=f"Aid paid: {yuan(s.paid_total)}", title_justify="left")
    money.add_column("by scheme")
    money.add_column("yuan", justify="right")
    for k, v in s.paid_by_scheme.items():
        money.add_row(k, yuan(v))
    money.add_section()
    for k, v in s.paid_by_fund.items():
        money.add_row(f"fund: {k}", yuan(v))
    console.print(money)
