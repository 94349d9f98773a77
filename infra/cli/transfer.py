"""``ledger transfer``: a person moves district (R-CAP-4 [001; 000 第七条], ADR 0020).

``ledger transfer --from changning --to xuhui RECIPIENT`` (or ``ledger --district changning
transfer --to xuhui RECIPIENT``) records ``TransferredOut`` in the district the person leaves and
``TransferredIn`` in the one they join (``commands.handlers.transfer``). Exit codes as
``ledger do``: 0 accepted, 1 refused by a rule, 2 invalid input, 3 a write conflict that outlasted
the retries (run it again: a move half done is finished, nothing is recorded twice).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any, Optional

import typer

from infra.cli import app


@app.command("transfer")
def transfer_cmd(
    recipient: str = typer.Argument(..., help="the person, as the ledger shows them (id, handle, id number)"),
    to_district: str = typer.Option(..., "--to", help="the district the person moves to"),
    from_district: Optional[str] = typer.Option(None, "--from", help="the district the person leaves (default: --district)"),
    at: Optional[str] = typer.Option(None, "--at", help="the recorded time (ISO 8601 with offset)"),
    command_id: Optional[str] = typer.Option(None, "--command-id", help="makes a retry safe"),
) -> None:
    """Move a person to another district with their record, categories, insurance and the city
    scheme's cap usage (R-CAP-4); the 四医联动 top-up restarts there."""
    from pydantic import ValidationError

    from commands.app import WriteConflict
    from commands.handlers.transfer import transfer
    from commands.lookup import resolve_fields
    from infra.districts import DistrictError, district, district_ledger
    from infra.input_errors import describe_ledger_error
    from ledger import errors

    source_code = from_district or os.environ.get("LEDGER_DISTRICT")
    if not source_code:
        _answer(2, {"status": "invalid", "problems": [{"field": "from", "message": "name the district the person leaves: --from X or ledger --district X transfer", "rule": "ADR 0020"}]})
    try:
        source_d, target_d = district(source_code), district(to_district)
    except DistrictError as exc:
        typer.echo(f"ledger: {exc}", err=True)
        raise typer.Exit(2) from None
    if source_d.code == target_d.code:
        _answer(2, {"status": "invalid", "problems": [{"field": "to", "message": f"the person is already in district {to_district}", "rule": "R-CAP-4"}]})
    when: datetime | None = None
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            _answer(2, {"status": "invalid", "problems": [{"field": "at", "message": f"{at!r} is not an ISO 8601 time", "rule": "SCENARIOS.md at"}]})
    with district_ledger(source_d, create=False) as source, district_ledger(target_d) as target:
        try:
            rid = resolve_fields(source, {"recipient": recipient})["recipient"]
            result = transfer(source, target, rid, from_district=source_d.code, to_district=target_d.code, at=when, command_id=command_id)
        except ValidationError as exc:
            _answer(2, {"status": "invalid", "problems": [{"field": ".".join(map(str, e["loc"])), "message": e["msg"], "rule": "R-CAP-4"} for e in exc.errors()]})
        except WriteConflict as exc:
            _answer(3, {"status": "conflict", "code": "CONFLICT", "message": str(exc)})
        except errors.LedgerError as exc:
            _answer(2, {"status": "invalid", "problems": describe_ledger_error(exc)})
    _answer(0 if result.status == "accepted" else 1, {"command": "transfer", **result.as_dict()})


def _answer(code: int, answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer, ensure_ascii=False, indent=2) + "\n")
    raise typer.Exit(code)
