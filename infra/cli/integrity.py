"""``ledger verify``, ``ledger chain``, ``ledger erase``: integrity and privacy (ADR 0015, 0016).

Adapters over :mod:`infra.integrity` and :mod:`infra.privacy`, on the store named by
``LEDGER_DATABASE_URL`` (or ``--database-url``).
"""

from __future__ import annotations

import json
import sys
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.cli import app

err = Console(stderr=True)

DB_OPTION = typer.Option(None, "--database-url", help="the store (default: LEDGER_DATABASE_URL)")


@contextmanager
def _open(database_url: Optional[str]) -> Iterator[Any]:
    from infra.settings import Settings, get_settings
    from infra.wiring import build_app

    settings = get_settings() if database_url is None else Settings(database_url=database_url)
    # Reading and erasing record no events: no policy is published into an empty store here.
    ledger = build_app(settings, publish_policy=False)
    try:
        yield ledger
    finally:
        ledger.close()


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


@app.command("verify")
def verify_command(
    database_url: Optional[str] = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Recompute the integrity chain from the stored events; exit 1 at the first broken position."""
    from infra import integrity

    with _open(database_url) as ledger:
        chain = integrity.chain_for(ledger)
        total = ledger.recorder.max_notification_id() or 0
        with Progress(
            TextColumn("verifying the chain"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
        ) as progress:
            head = chain.head()
            task = progress.add_task("verify", total=head.position if head else 0)
            report = integrity.verify(chain, progress=lambda n: progress.advance(task, n))
    if as_json:
        _dump(report.as_dict())
    else:
        head_text = f"{report.head.position} ({report.head.hash[:16]}…)" if report.head else "none (nothing chained yet)"
        typer.echo(f"chain: {report.checked} events checked, head at position {head_text}, {report.checkpoints} checkpoints; store holds positions up to {total}")
        if report.unchained:
            typer.echo(f"note: {report.unchained} events after the head are not chained yet (run `ledger chain`)")
        first = report.first
        if first is None:
            typer.echo("OK: every stored event matches the chain and its sealed checkpoints")
        else:
            typer.echo(f"BROKEN at position {first.position}: {first.message}")
            if first.event:
                e = first.event
                typer.echo(f"  event: {e['topic']} of {e['originator_id']} version {e['version']}")
            for line in first.details:
                typer.echo(f"  - {line}")
            for p in report.problems[1:]:
                typer.echo(f"also at position {p.position}: {p.message}")
    if not report.ok:
        raise typer.Exit(1)


@app.command("chain")
def chain_command(database_url: Optional[str] = DB_OPTION) -> None:
    """Chain every event not chained yet, seal a checkpoint, and print the head (keep it outside
    the database: it anchors everything before it)."""
    from infra import integrity

    with _open(database_url) as ledger:
        head = integrity.chain_for(ledger).run(wait=True, checkpoint_at_end=True)
    if head is None:
        typer.echo("the store is empty: nothing to chain")
    else:
        typer.echo(f"chain head: position {head.position} sha256 {head.hash}")


@app.command("erase")
def erase_command(
    recipient: str = typer.Argument(..., help="the recipient's id (uuid) or resident id number"),
    reason: str = typer.Option("", "--reason", help="why (the request's reference), kept with the tombstone"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
    database_url: Optional[str] = DB_OPTION,
) -> None:
    """Crypto-shredding: delete the recipient's data key. Their id number and name read as
    erased from then on; the log, the chain and every money figure stay as they are."""
    from infra import privacy
    from ledger import errors

    with _open(database_url) as ledger:
        try:
            rid = uuid.UUID(recipient)
        except ValueError:
            rid = ledger.recipient_id_for(recipient)
        if not yes:
            typer.confirm(f"Erase the personal data of recipient {rid}? This cannot be undone.", abort=True)
        try:
            outcome = privacy.erase(ledger, rid, reason)
        except errors.LedgerError as exc:
            typer.echo(f"{exc.code}: {exc.message}", err=True)
            raise typer.Exit(2) from None
    if outcome["erased"]:
        typer.echo(f"erased: recipient {outcome['recipient']} (key deleted {outcome.get('erased_at')})")
    else:
        typer.echo(f"already erased: recipient {outcome['recipient']} (since {outcome.get('erased_at')})")
