"""The settlement-file upload's answer (``POST /imports``, docs/import.md): a thin adapter over
:mod:`infra.importer`, shared by the API and the console.

200 with the report when the rows were taken (``status`` ``recorded``, or ``partial`` when some
were refused or skipped: the rejects file comes back base64-encoded, to be fixed and uploaded
again); 422 ``IMPORT_INVALID`` (the service's error body, the report beside it) when the file or a row is invalid and nothing was recorded.
"""

from __future__ import annotations

import base64
from typing import Any

from commands.app import LedgerApp
from infra import importer
from infra.http.auth import Principal, Role


def upload(ledger: LedgerApp, p: Principal, name: str, data: bytes, skip_invalid: bool) -> tuple[int, dict[str, Any]]:
    """(status code, body) for one uploaded file. A street handler's rows are limited to the
    recipients of their own street (R-PH-1 [002 4.1]): any other row is a row error."""
    street = p.street if p.role is Role.STREET_HANDLER else None
    table = None
    try:
        table = importer.read_table(data, name or "upload")
    except importer.ImportFileError as exc:
        report = importer.Report(name, "", [], skip_invalid, exc.problems)
    else:
        report = importer.run_import(ledger, table, skip_invalid=skip_invalid, street=street)
    body: dict[str, Any] = report.as_dict()
    rejects = importer.rejects_file(table, report) if table is not None and report.status != "invalid" else None
    body["rejects"] = None if rejects is None else {
        "filename": importer.rejects_name(name),
        "media_type": importer.media_type(table.kind),  # type: ignore[union-attr]
        "base64": base64.b64encode(rejects).decode("ascii"),
    }
    if report.status != "invalid":
        return 200, body
    problems = report.problems()
    first = problems[0]
    body.update(  # the service's error body (status "error"), with the report beside it
        status="error",
        code="IMPORT_INVALID",
        rule=first.rule,
        field=first.field,
        message=f"{len(problems)} problem(s) in the file, the first on line {first.line} ({first.text()}); nothing was recorded: "
        "fix the file, or send skip_invalid=true to record the good rows",
        ids={},
    )
    return 422, body
