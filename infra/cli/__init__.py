"""The ``ledger`` command line: thin adapters over the command handlers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(help="Medical-aid ledger (医疗救助台账).", no_args_is_help=True, add_completion=False)
scenario_app = typer.Typer(help="Scenario files: the acceptance contract.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")


@scenario_app.command("run")
def scenario_run(
    file: Path = typer.Argument(..., help="a scenario YAML file"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report"),
    snapshot_valid: str | None = typer.Option(None, "--snapshot-valid", help="add the snapshot at valid date V (ADR 0010)"),
    snapshot_known_at: str | None = typer.Option(None, "--snapshot-known-at", help="add the snapshot as known at T (ADR 0010)"),
) -> None:
    """Replay FILE into a fresh in-memory ledger and print what the ledger says."""
    from commands.timeline import parse_known_at, parse_valid
    from infra.scenario import ScenarioError, run_scenario

    snapshot = None
    if snapshot_valid is not None or snapshot_known_at is not None:
        try:
            snapshot = (parse_valid(snapshot_valid), parse_known_at(snapshot_known_at))
        except ValueError as exc:
            typer.echo(f"--snapshot-valid/--snapshot-known-at: {exc}", err=True)
            raise typer.Exit(2) from None

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        typer.echo(f"cannot read {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        report = run_scenario(text, snapshot)
    except ScenarioError as exc:
        typer.echo(f"malformed scenario {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    else:
        for s in report["steps"]:
            typer.echo(f"{s['index']:>4} {s['do']:<18} {s['status']} {s.get('code') or ''}")


def _register() -> None:
    """Sub-command modules register themselves here (one module per area)."""
    from importlib import import_module

    for name in (
        "infra.cli.ops",
        "infra.cli.projections",
        "infra.cli.clearing",
        "infra.cli.timetravel",
        "infra.cli.relay",
        "infra.cli.serve",
        "infra.cli.integrity",
        "infra.cli.explain",
    ):
        try:
            import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def main() -> None:
    _register()
    app()
