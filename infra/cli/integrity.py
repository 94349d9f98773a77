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


def _expected_head(text: Optional[str]) -> Any:
    """``--expect-head``: the JSON ``ledger chain --head`` printed, a file holding it, or POSITION:HASH."""
    from pathlib import Path

    from infra.integrity import SignedHead

    if text is None:
        return None
    value = text
    if not text.lstrip().startswith("{") and ":" not in text or text.startswith("@"):
        path = Path(text[1:] if text.startswith("@") else text)
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            typer.echo(f"--expect-head: cannot read {path}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    try:
        return SignedHead.parse(value)
    except (ValueError, KeyError, TypeError) as exc:
        typer.echo(f"--expect-head: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("verify")
def verify_command(
    database_url: Optional[str] = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    expect_head: Optional[str] = typer.Option(
        None, "--expect-head", help="a head kept outside the database (`ledger chain --head`'s JSON, a file holding it, or POSITION:HASH): fail unless the log extends it"
    ),
) -> None:
    """Recompute the integrity chain from the stored events, check every link, seal and numbered
    checkpoint (and the head kept outside, if given); exit 1 naming each broken position."""
    from infra import integrity

    expected = _expected_head(expect_head)
    with _open(database_url) as ledger:
        chain = integrity.chain_for(ledger)
        total = ledger.recorder.max_notification_id() or 0
        with Progress(
            TextColumn("verifying the chain"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
        ) as progress:
            head = chain.head()
            task = progress.add_task("verify", total=head.position if head else 0)
            report = integrity.verify(chain, progress=lambda n: progress.advance(task, n), expect=expected)
    if as_json:
        _dump(report.as_dict())
    else:
        head_text = f"{report.head.position} ({report.head.hash[:16]}…)" if report.head else "none (nothing chained)"
        typer.echo(
            f"chain: {report.checked} events checked, head at position {head_text}, {report.checkpoints} checkpoints "
            f"(last #{report.last_checkpoint}); store holds positions up to {total}"
        )
        if expected is not None:
            typer.echo(f"expected head: position {expected.position} ({expected.hash[:16]}…)" + (f", checkpoint #{expected.checkpoint}" if expected.checkpoint else ""))
        first = report.first
        if first is None:
            typer.echo("OK: every stored event matches its link, every save's seal and every numbered checkpoint" + (", and the log extends the expected head" if expected else ""))
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
def chain_command(
    database_url: Optional[str] = DB_OPTION,
    head_only: bool = typer.Option(False, "--head", help="print only the signed head, as one JSON line to keep outside the database"),
) -> None:
    """Seal a numbered checkpoint at the head (every event is already chained, in the transaction
    that stored it) and print the signed head: keep it outside the database, and check the store
    against it later with `ledger verify --expect-head`."""
    from infra import integrity

    with _open(database_url) as ledger:
        signed = integrity.chain_for(ledger).signed_head()
    if signed is None:
        if head_only:
            typer.echo("the store is empty: there is no head to sign", err=True)
            raise typer.Exit(1)
        typer.echo("the store is empty: nothing to chain")
        return
    if head_only:
        typer.echo(signed.to_json())
        return
    typer.echo(f"chain head: position {signed.position} sha256 {signed.hash}")
    typer.echo(f"checkpoint #{signed.checkpoint} signed {signed.recorded_at}: {signed.signature}")
    typer.echo(f"keep outside the database: {signed.to_json()}")


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
    if not outcome.get("purged", True):
        # ADR 0015: the deleted key is still in a dead row version (PostgreSQL) or the WAL (SQLite)
        # that a transaction begun before the erasure holds; it goes once that transaction ends.
        typer.echo(
            "warning: the old key is still held by a transaction that began before the erasure; "
            f"run `ledger erase {outcome['recipient']} --yes` again once it has ended to purge it",
            err=True,
        )
