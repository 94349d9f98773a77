"""``ledger import FILE``: the month's settlement records from a CSV or XLSX file (R-PH-2 [002 3.2]),
a thin adapter over :mod:`infra.importer`.

Exit codes: 0 every row recorded (or recorded before: a re-import records nothing twice); 1 some
rows refused by a rule, or skipped as invalid with ``--skip-invalid``; 2 the file is invalid and
nothing was recorded (each bad row is named by its line, column, field and rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from infra import importer
from infra.cli import app

EXIT_RECORDED, EXIT_REFUSED, EXIT_INVALID = 0, 1, 2


@app.command("import")
def import_file(
    file: Optional[Path] = typer.Argument(None, help="the settlement records: a .csv or .xlsx file"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="record the good rows and write the bad ones to a rejects file"),
    rejects: Optional[Path] = typer.Option(None, "--rejects", help="where the rejected rows go (default: FILE.rejected.csv/.xlsx beside FILE)"),
    template: Optional[Path] = typer.Option(None, "--template", help="write an empty import file (.csv or .xlsx) with the columns, and stop"),
    english: bool = typer.Option(False, "--english", help="the template's headers in English (Chinese by default)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Record the receipts of a settlement file (四医联动, insurance settlement), one row each.

    Every row is checked first, by the same rules as `ledger do record_expense`; a row may name the
    recipient by 身份证号 (id_number) or by 救助对象编号 (recipient). A file with a bad row records
    nothing unless --skip-invalid. Each row's receipt is its idempotency key: importing a file again
    records nothing twice. Columns: docs/import.md, or `ledger import --template FILE.xlsx`.
    """
    from rich.console import Console

    err = Console(stderr=True)
    if template is not None:
        try:
            kind = importer.kind_of(template.name)
            template.write_bytes(importer.template(kind, "en" if english else "zh"))
        except importer.ImportFileError as exc:
            err.print(f"[red]--template: {exc}[/red]", soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None
        except OSError as exc:
            err.print(f"[red]cannot write {template}: {exc}[/red]", soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None
        err.print(f"template written: {template} ({len(importer.COLUMNS)} columns; docs/import.md explains them)", soft_wrap=True)
        return
    if file is None:
        err.print("[red]give the FILE to import (or --template FILE to write an empty one)[/red]")
        raise typer.Exit(EXIT_INVALID)
    try:
        table = importer.read_table(file.read_bytes(), file.name)
    except OSError as exc:
        err.print(f"[red]cannot read {file}: {exc}[/red]", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    except importer.ImportFileError as exc:
        report = importer.Report(file.name, "", [], skip_invalid, exc.problems)
        _finish(err, report, None, as_json)
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from infra.cli.ops import _build_when_free

    ledger = _build_when_free()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=False) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task({"checking": "checking rows", "recording": "recording"}.get(stage, stage), total=total)
                bar.update(tasks[stage], completed=done, total=total)

            report = importer.run_import(ledger, table, skip_invalid=skip_invalid, progress=progress)
    finally:
        ledger.close()
    written = None
    data = importer.rejects_file(table, report) if report.status != "invalid" else None
    if data is not None:
        written = rejects or file.with_name(importer.rejects_name(file.name))
        written.write_bytes(data)
    _finish(err, report, written, as_json)


def _finish(err: object, report: importer.Report, rejects: Path | None, as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps({**report.as_dict(), "rejects_file": str(rejects) if rejects else None}, ensure_ascii=False, indent=2))
    for p in report.problems():  # one line each: line, column, field, what is wrong, the rule
        typer.echo(f"line {p.line}: {p.text()}", err=True)
    s = report.summary()
    head = Table(title=f"import of {report.name}: {report.status}", show_header=False, title_justify="left")
    head.add_row("rows", str(s["rows"]))
    head.add_row("recorded", str(s["recorded"]))
    head.add_row("flagged as duplicate", f"{s['duplicate']} (receipt recorded before: kept and flagged, never aided twice, R-CLR-1(b))")
    head.add_row("already imported", f"{s['already_imported']} (nothing recorded again)")
    head.add_row("refused", str(s["refused"]))
    head.add_row("invalid", str(s["invalid"]) + (" (skipped)" if report.skip_invalid and s["invalid"] else ""))
    if rejects:
        head.add_row("rejects file", f"{rejects}: fix the rows and import it again")
    elif report.status == "invalid" and report.rows:
        head.add_row("", "nothing recorded: fix the file, or --skip-invalid to record the good rows")
    err.print(head)  # type: ignore[attr-defined]
    raise typer.Exit(report.exit_code)
