"""``ledger city …``: the districts and the city view (ADR 0020)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from decimal import Decimal
from typing import Any

import typer

from infra.cli import app

city_app = typer.Typer(help="The city view over the districts' streams (LEDGER_DISTRICTS, ADR 0020).", no_args_is_help=True)
app.add_typer(city_app, name="city")

DEFAULT_CITY_URL = "sqlite:///./var/city.db"


def _view() -> Any:
    import os

    from infra.city import CityView
    from infra.districts import DistrictError, configured

    try:
        districts = configured()
    except DistrictError as exc:
        typer.echo(f"ledger: {exc}", err=True)
        raise typer.Exit(2) from None
    if not districts:
        typer.echo("ledger: no districts are configured: set LEDGER_DISTRICTS (e.g. LEDGER_DISTRICTS=changning,xuhui,jingan)", err=True)
        raise typer.Exit(2)
    url = os.environ.get("LEDGER_CITY_DATABASE_URL", DEFAULT_CITY_URL)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        from pathlib import Path

        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return CityView(url, districts.values())


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=lambda v: f"{v:.2f}" if isinstance(v, Decimal) else str(v)) + "\n")


@city_app.command("districts")
def city_districts() -> None:
    """The configured districts: store, stream and subjects of each."""
    view = _view()
    try:
        _print([{"district": d.code, "store": d.database_url, "stream": d.stream, "subjects": f"{d.subject_prefix}.>"} for d in view.districts.values()])
    finally:
        view.close()


@city_app.command("run")
def city_run() -> None:
    """Follow every district's JetStream stream into the city view (LEDGER_CITY_DATABASE_URL)
    until SIGTERM or Ctrl-C; exactly once by each district's stream position."""
    from infra.city import run_city_view
    from infra.relay import DEFAULT_URLS
    from infra.settings import Settings, get_settings

    settings = get_settings()
    url = settings.broker_url if settings.broker_url != Settings.model_fields["broker_url"].default else DEFAULT_URLS["nats"]
    view = _view()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        asyncio.run(run_city_view(view, url, list(view.districts.values()), stop=stop))
        _print({"positions": view.positions()})
    finally:
        view.close()


@city_app.command("status")
def city_status() -> None:
    """The manifest: each district's stream position applied and its newest chain checkpoint."""
    view = _view()
    try:
        _print(view.manifest())
    finally:
        view.close()


@city_app.command("funds")
def city_funds() -> None:
    """Aid paid per district and fund, and per fund across the city."""
    view = _view()
    try:
        totals = view.fund_totals()
        by_fund: dict[str, Decimal] = {}
        for (_, fund), amount in totals.items():
            by_fund[fund] = by_fund.get(fund, Decimal("0.00")) + amount
        _print({"positions": view.positions(), "by_district": [{"district": d, "fund": f, "amount": a} for (d, f), a in sorted(totals.items())], "by_fund": by_fund})
    finally:
        view.close()


@city_app.command("conflicts")
def city_conflicts() -> None:
    """Receipts paid in two districts (R-CAP-4, R-CLR-1(b)): the district that paid second clears."""
    view = _view()
    try:
        _print({"positions": view.positions(), "conflicts": view.conflicts()})
    finally:
        view.close()


@city_app.command("usage")
def city_usage(recipient: str = typer.Argument(..., help="the recipient key (the same in every district)"), year: int = typer.Option(..., "--year")) -> None:
    """A person's city-scheme aid due in YEAR per district (R-CAP-4: the city cap is the person's)."""
    view = _view()
    try:
        used, positions = view.cap_usage(recipient, year)
        _print({"recipient": recipient, "year": year, "by_district": used, "total": sum(used.values(), Decimal("0.00")), "positions": positions})
    finally:
        view.close()


@city_app.command("snapshot")
def city_snapshot_cmd(
    valid: str | None = typer.Option(None, "--valid", help="valid date V (YYYY-MM-DD; default today)"),
    known_at: str | None = typer.Option(None, "--known-at", help="known-at time T (ISO 8601)"),
    format_: list[str] | None = typer.Option(None, "--format", help="json | csv | xlsx (repeatable; default json)"),
    out: str = typer.Option(".", "--out", help="directory: one folder per district and city.manifest.json"),
) -> None:
    """The city (V, T) snapshot: each district's snapshot at the same (V, T) and one manifest with
    each district's store position and chain head (ADR 0010, ADR 0020)."""
    from infra.city import city_snapshot

    view = _view()
    try:
        manifest = city_snapshot(list(view.districts.values()), out, valid=valid, known_at=known_at, view=view, formats=format_ or ["json"])
    except RuntimeError as exc:
        typer.echo(f"ledger: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        view.close()
    _print({k: manifest[k] for k in ("valid", "known_at", "rows")} | {"districts": [{k: e[k] for k in ("district", "store_position", "chain_head", "rows")} for e in manifest["districts"]]})
