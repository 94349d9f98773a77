"""``ledger serve`` (the HTTP service under uvicorn) and ``ledger token issue`` (bearer tokens)."""

from __future__ import annotations

import ipaddress

import typer

from infra.cli import app

token_app = typer.Typer(help="Bearer tokens for the HTTP service (ADR 0013).", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, min=1, max=65535, help="port to listen on"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64, help="worker processes behind the one port (each its own pool and memory)"),
) -> None:
    """Serve the HTTP API on the configured store (LEDGER_DATABASE_URL; embedded SQLite by default).

    Beyond loopback it refuses to start without LEDGER_DATA_KEY, with the development token
    secret, or with a token secret shorter than 32 bytes (ADR 0013); on loopback it warns once.

    ``--workers N`` runs N processes behind the one port (uvicorn's process manager; each worker
    builds the app from the factory ``infra.http:worker_app`` with the same settings, from the
    environment). An in-memory store cannot be shared, so it is served by one process."""
    from infra.settings import get_settings

    settings = get_settings()
    weak = settings.network_weaknesses()
    if weak and not _loopback(host):
        typer.echo(f"refusing to listen on {host}: {'; '.join(weak)}. Set them, or listen on 127.0.0.1.", err=True)
        raise typer.Exit(2)
    if weak:
        typer.echo(f"warning: development settings, fit for this machine only: {'; '.join(weak)}.", err=True)
        from infra.privacy import MasterKey

        MasterKey.announced()  # said once here, not again by the key loader
    import uvicorn

    if workers > 1 and not settings.is_memory:
        # Each worker imports the factory and reads the same environment (LEDGER_*): the store,
        # the keys and the token secret are the parent's.
        from infra.http.operations import log_format, uvicorn_log_config

        uvicorn.run(FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info",
                    log_config=uvicorn_log_config(), access_log=log_format() != "json")
        return
    if workers > 1:
        typer.echo("warning: an in-memory store cannot be shared between processes: serving with one worker", err=True)
    from infra.http import create_app

    from infra.http.operations import log_format, uvicorn_log_config

    # LEDGER_LOG_FORMAT=json: one JSON object a line, one line per request (infra.http.operations)
    service = create_app(settings, worker=True)  # this process serves it alone: its collector is the app's (ADR 0023)
    service.state.warm_console = True  # the console's district figures are built in the background at start
    uvicorn.run(service, host=host, port=port, log_level="info", log_config=uvicorn_log_config(), access_log=log_format() != "json")


#: The application factory, importable by string in every worker process (``uvicorn --factory``).
FACTORY = "infra.http:worker_app"


@token_app.command("issue")
def token_issue(
    officer: str = typer.Option(..., help="the officer's id (signs commands as this id)"),
    role: str = typer.Option(..., help="street_handler, reviewer, approver, district_officer, clearing_officer, auditor, regulator or system"),
    street: str | None = typer.Option(None, help="the street office (required for street_handler)"),
    days: float = typer.Option(30.0, help="validity in days"),
) -> None:
    """Print a signed bearer token (HMAC-SHA256 with LEDGER_TOKEN_SECRET)."""
    from infra.http.auth import TokenError, issue
    from infra.settings import get_settings

    try:
        typer.echo(issue(get_settings().token_secret, officer, role, street, days=days))
    except TokenError as exc:
        typer.echo(f"cannot issue a token: {exc}", err=True)
        raise typer.Exit(2) from None
