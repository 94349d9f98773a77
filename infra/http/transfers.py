"""``POST /transfers``: a person moves district over HTTP (R-CAP-4 [001; 000 第七条], ADR 0020).

The district's own service runs the handler ``ledger transfer`` runs
(``commands.handlers.transfer.transfer``): ``TransferredOut`` in this district's store (the one the
service serves, ``LEDGER_DISTRICT``), ``Enrolled`` + ``TransferredIn`` in the target district's
store, opened through ``infra.districts`` for the request and closed after it. The answers:

- 201, ``Location: /recipients/{id}`` (the person's id is the same in both districts: it is
  derived from the resident id number), ids ``recipient``, ``source_recipient``,
  ``from_district``, ``to_district``, ``source_position``;
- 422 naming the field and the rule: a district that is not configured (``to_district``), the
  person's own district (``to_district``), a person this district does not hold (``recipient``),
  a service that is not a district;
- 409: a rule's refusal (the person already moved to another district, ``TRANSFERRED_OUT``; the
  person already held in the target district, ``ALREADY_ENROLLED``) or a write conflict;
- idempotent by ``command_id`` (in the body, or the ``Idempotency-Key`` header): a retry, or a
  move run again after a failure between its two steps, records nothing twice.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from commands import models as m
from commands.app import LedgerApp, Result
from ledger import errors

RULE = "R-CAP-4"
CLAUSE = "[001; 000 第七条]"


class TransferBody(BaseModel):
    """A person moves to another district with their record, categories, insurance, the city
    scheme's cap usage and the receipts aided here (R-CAP-4 [001; 000 第七条]); the district
    top-up (四医联动) restarts there."""

    model_config = ConfigDict(extra="forbid")

    recipient: str = Field(min_length=1, max_length=100, description="the person: id, handle or resident id number")
    to_district: m.DistrictCode = Field(description="the district the person moves to (one of LEDGER_DISTRICTS)")
    at: datetime | None = Field(default=None, description="the recorded time (ISO 8601 with offset); the server's clock by default")
    command_id: str | None = Field(default=None, min_length=1, max_length=200, description="makes a retry safe (or send an Idempotency-Key)")


class Refused(Exception):
    """422: the move cannot be asked for as given (``field`` and ``rule`` name why)."""

    def __init__(self, message: str, *, field: str, rule: str, code: str = "INVALID_INPUT"):
        super().__init__(message)
        self.message, self.field, self.rule, self.code = message, field, rule, code


def run_transfer(source: LedgerApp, body: TransferBody, command_id: str | None) -> Result:
    """Both steps of the move from this service's district to ``body.to_district``."""
    from commands.handlers.transfer import transfer
    from commands.lookup import resolve_fields
    from infra.districts import DistrictError, district, district_ledger

    here = os.environ.get("LEDGER_DISTRICT")
    if not here:
        raise Refused("this service is not a district: serve it with `ledger --district X serve` (LEDGER_DISTRICTS)", field="to_district", rule="ADR 0020")
    try:
        target_d = district(body.to_district)
    except DistrictError as exc:
        raise Refused(f"to_district: {exc}", field="to_district", rule="ADR 0020 (LEDGER_DISTRICTS)") from None
    if target_d.code == here:
        raise Refused(f"to_district: the person is already in district {here}; a move is to another district ({RULE} {CLAUSE})", field="to_district", rule=RULE)
    try:
        rid = resolve_fields(source, {"recipient": body.recipient})["recipient"]
        source.recipient(rid)
    except errors.UnknownEntity as exc:
        raise Refused(f"recipient: {exc.message}; only a person held in district {here} can move from it ({RULE} {CLAUSE})",
                      field="recipient", rule=RULE, code=exc.code) from None
    with district_ledger(target_d) as target:
        return transfer(source, target, rid, from_district=here, to_district=target_d.code, at=body.at, command_id=body.command_id or command_id)

