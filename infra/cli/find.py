"""``ledger find TEXT``: anyone or anything, by what the ledger shows (ADR 0019).

TEXT is read as :func:`commands.lookup.find` reads it: a clearing case id, a claim id, an expense
(handle ``E004997`` or id), a recipient id, a resident id number (through the keyed hash), a
name, or a street. Without TEXT, ``--expenses``, ``--claims`` or ``--payments`` list those, with
the same filters as the HTTP lists. Results are paginated: ``--cursor`` takes the ``next`` cursor
printed at the end. Id numbers are shown masked. Exit 0 with results, 1 when nothing matches, 2 on
invalid input.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from infra.cli import app

out = Console()
err = Console(stderr=True)


@app.command("find")
def find(
    text: Optional[str] = typer.Argument(None, help="a handle (E004997), an id, a resident id number, a name or a street"),
    expenses: bool = typer.Option(False, "--expenses", help="list expenses (filters: --street --month --scheme --status)"),
    claims: bool = typer.Option(False, "--claims", help="list claims (filters: --street --month --status)"),
    payments: bool = typer.Option(False, "--payments", help="list payouts (filters: --street --month --scheme)"),
    street: Optional[str] = typer.Option(None, "--street", help="one street office only"),
    month: Optional[str] = typer.Option(None, "--month", help="YYYY-MM: invoice month, lodged month or paid month (+08:00)"),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="aid scheme, e.g. shanghai.medical_aid"),
    status: Optional[str] = typer.Option(None, "--status", help="expenses: recorded, claimed, decided, paid; claims: lodged, reviewed, approved, rejected, paid"),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="rows per page"),
    cursor: Optional[str] = typer.Option(None, "--cursor", help="the cursor printed after the previous page"),
    as_json: bool = typer.Option(False, "--json", help="print JSON: {kind, read_as, items, next_cursor}"),
) -> None:
    """Find a recipient, an expense, a claim or a case by what the ledger shows; list expenses, claims or payouts."""
    from commands import lookup
    from infra.settings import get_settings
    from infra.wiring import build_app
    from ledger import errors

    lists = [k for k, on in (("expense", expenses), ("claim", claims), ("payment", payments)) if on]
    if len(lists) > 1:
        _fail("choose one of --expenses, --claims, --payments", 2)
    if not lists and not (text or "").strip():
        _fail("give TEXT to find, or --expenses / --claims / --payments to list", 2)
    ledger = build_app(get_settings(), publish_policy=False)
    try:
        if lists == ["expense"]:
            page = lookup.list_expenses(ledger, text, street=street, month=month, scheme=scheme, status=status, cursor=cursor, limit=limit)
            result: dict[str, Any] = {"kind": "expense", "read_as": "list", **page.as_dict()}
        elif lists == ["claim"]:
            page = lookup.list_claims(ledger, text, street=street, month=month, status=status, cursor=cursor, limit=limit)
            result = {"kind": "claim", "read_as": "list", **page.as_dict()}
        elif lists == ["payment"]:
            page = lookup.list_payments(ledger, street=street, month=month, scheme=scheme, cursor=cursor, limit=limit)
            result = {"kind": "payment", "read_as": "list", **page.as_dict()}
        else:
            result = lookup.find(ledger, text or "", street=street, cursor=cursor, limit=limit)
    except errors.UnknownEntity as exc:
        _fail(f"{exc.code}: {exc.message}", 1)
    except errors.LedgerError as exc:
        _fail(f"{exc.code}: {exc.message}", 2)
    finally:
        close = getattr(ledger, "close", None)
        if close:
            close()
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    elif result["items"]:
        _print(result)
    if not result["items"]:
        if not as_json:
            err.print("nothing matches", markup=False)
        raise typer.Exit(1)


_COLUMNS: dict[str, tuple[str, ...]] = {
    "recipient": ("name", "id_number", "street", "enrolled_at", "recipient"),
    "expense": ("handle", "invoice_date", "invoice_no", "total", "aid", "status", "street", "expense"),
    "claim": ("claim", "lodged_on", "channel", "status", "street", "expenses"),
    "payment": ("paid_at", "channel", "total", "to_person", "street", "expenses", "payment"),
    "case": ("case", "recipient"),
}


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v.get("handle") or v.get("expense")) if isinstance(v, dict) else str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return "" if value is None else str(value)


def _print(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['kind']} ({result['read_as']})")
    cols = _COLUMNS[result["kind"]]
    for c in cols:
        table.add_column(c)
    for item in result["items"]:
        table.add_row(*(_cell(item.get(c)) for c in cols))
    out.print(table)
    if result.get("next_cursor"):
        out.print(f"more: --cursor {result['next_cursor']}", markup=False)


def _fail(message: str, code: int) -> None:
    err.print(message, markup=False)
    raise typer.Exit(code)
