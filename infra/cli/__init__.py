"""The ``ledger`` command line: thin adapters over the command handlers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from infra.cli.operator_errors import LedgerGroup  # noqa: E402  one line and an exit code per operator mistake


class _LedgerGroup(LedgerGroup):
    """Keeps the arguments as given, so that ``--district X`` can tell a reading command (ADR 0020)."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        ctx.meta["ledger.args"] = list(args)
        return super().parse_args(ctx, args)


app = typer.Typer(help="Medical-aid ledger (医疗救助台账).", no_args_is_help=True, add_completion=False, cls=_LedgerGroup)
scenario_app = typer.Typer(help="Scenario files: the acceptance contract.", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")


@app.callback()
def _district_option(
    ctx: typer.Context,
    district: str | None = typer.Option(None, "--district", help="work on this district's ledger (LEDGER_DISTRICTS; ADR 0020)"),
) -> None:
    """Medical-aid ledger (医疗救助台账)."""
    from infra import wiring

    wiring.open_scope()  # what this invocation opens, it closes (connections included)
    ctx.call_on_close(wiring.close_scope)
    if district is None:
        return  # the single-district ledger, unchanged
    from infra.cli.operator_errors import is_reading
    from infra.districts import DistrictError, use_district
    from infra.settings import require_existing_store

    try:
        use_district(district)
    except DistrictError as exc:
        typer.echo(f"ledger: {exc}", err=True)
        raise typer.Exit(2) from None
    given = ctx.meta.get("ledger.args", [])
    rest = [a for i, a in enumerate(given) if a != "--district" and not a.startswith("--district=") and (i == 0 or given[i - 1] != "--district")]
    require_existing_store(is_reading(rest))  # the district's code is not the command word


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
        typer.echo(" ".join(f"malformed scenario {file}: {exc}".split()), err=True)  # one line (SCENARIOS.md)
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
        "infra.cli.find",
        "infra.cli.imports",
        "infra.cli.city",
        "infra.cli.transfer",
    ):
        try:
            import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def main() -> None:
    _register()
    app()
