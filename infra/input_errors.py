"""Refused input, described for people: each problem names its field, what is wrong, and the rule
(or the part of the contract) the input breaks. Used by the CLI (``ledger do``) and any other
adapter that turns a pydantic ``ValidationError`` or a ``ledger.errors.InvalidInput`` into an
answer. Nothing here validates: the command models and the handlers do.
"""

from __future__ import annotations

import re
import types
import typing
from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel, ValidationError

from commands.models import BLANK_RULE, DATE_FORM_RULE, DATE_RANGE_RULE, PRINTABLE_TEXT_RULE
from ledger import errors
from ledger.values import Category, Channel, Evidence, FacilityKind, InsuranceScheme, SettlementScheme, VisitType

_R_ID = re.compile(r"\bR-[A-Z0-9]+-\d+\b")

MONEY_RULE = "RULES.md preamble: money is yuan in plain digits 0-9 with at most two decimals (fen), never negative, never rounded on input"
ID_NUMBER_RULE = (
    "GB 11643: an 18-character resident id number, 17 digits and a digit or X, carrying a real birth date "
    "(1900-01-01 to the day the command is recorded) and a valid check digit; the region code's history is not checked (SCENARIOS.md enrol)"
)
DATES_RULE = "RULES.md §1: the invoice is issued on or after the service (discharge) date"

#: Rules named by the kind of error the command models raise (``commands/models.py``).
_KIND_RULES = {
    "printable_text": PRINTABLE_TEXT_RULE,
    "date_range": DATE_RANGE_RULE,
    "date_after_recording": "R-TIME-1",
    "birth_date_after_recording": ID_NUMBER_RULE,
    "empty_name": "SCENARIOS.md enrol: a person's name, not empty once trimmed",
    "blank_identity": BLANK_RULE,
    "date_form": DATE_FORM_RULE,
}

_ENUM_RULES: dict[type[Enum], str] = {
    Category: "RULES.md §2: the recipient categories",
    FacilityKind: "SCENARIOS.md record_expense: facility.kind is community_health_centre, hospital or pharmacy",
    VisitType: "SCENARIOS.md record_expense: visit_type is outpatient, inpatient or outpatient_critical",
    InsuranceScheme: "R-INS-1: Shanghai basic insurance is employee or resident",
    SettlementScheme: "R-INS-3: the insurances that pay on an expense",
    Evidence: "R-INS-5: critical-illness evidence is none, settlement_slip or receipt_marking",
    Channel: "R-PH-3: a claim is post_hoc or auto",
}


def _field_info(model: type[BaseModel], loc: tuple[Any, ...]):
    """The pydantic FieldInfo at ``loc`` (following nested models), or None."""
    current: Any = model
    info = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return info
        info = next((f for name, f in current.model_fields.items() if name == part or f.alias == part), None)
        if info is None:
            return None
        current = _plain(info.annotation)
    return info


def _plain(annotation: Any) -> Any:
    """``X | None`` → ``X``; ``Annotated[X, …]`` → ``X``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _plain(args[0])
    return annotation


def rule_for(model: type[BaseModel] | None, field: str, kind: str, message: str) -> str:
    """The rule a refused field breaks: an R-id the message cites, else the contract's clause."""
    if kind in _KIND_RULES:
        return _KIND_RULES[kind]
    cited = _R_ID.search(message)
    if cited:
        return cited.group(0)
    last = field.rsplit(".", 1)[-1]
    if last in ("id_number", "proxy_id_number"):
        return ID_NUMBER_RULE
    if last == "invoice_date":
        return DATES_RULE
    info = _field_info(model, tuple(field.split("."))) if model is not None and field else None
    annotation = _plain(info.annotation) if info is not None else None
    if isinstance(annotation, type) and issubclass(annotation, Enum) and annotation in _ENUM_RULES:
        return _ENUM_RULES[annotation]
    if annotation is Decimal:
        return MONEY_RULE
    if annotation is date:
        return DATE_FORM_RULE
    name = model.__name__ if model is not None else "the command"
    if kind == "missing":
        return f"commands/models.py {name}: a required field"
    if kind == "extra_forbidden":
        return f"commands/models.py {name}: not a field of this command"
    return f"commands/models.py {name}"


def describe_validation(exc: ValidationError, model: type[BaseModel] | None = None) -> list[dict[str, str]]:
    """One entry per problem: ``field``, ``message``, ``rule``."""
    out = []
    for e in exc.errors():
        field = ".".join(str(x) for x in e["loc"])
        message = str(e["msg"]).removeprefix("Value error, ")
        if not field and ": " in message:  # a model-level check names its field first
            head, rest = message.split(": ", 1)
            if re.fullmatch(r"[a-z_][a-z0-9_.]*", head):
                field, message = head, rest
        out.append({"field": field or "input", "message": message, "rule": rule_for(model, field, e["type"], message)})
    return out


def describe_ledger_error(exc: errors.LedgerError) -> list[dict[str, str]]:
    """An ``InvalidInput`` (or any ledger error) raised by a handler."""
    field = exc.field or "input"
    message = exc.message
    if message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    rule = exc.rule or (
        "RULES.md §10: the recipient must be enrolled first" if isinstance(exc, errors.UnknownEntity) and field == "recipient"
        else rule_for(None, field, exc.code, message)
    )
    return [{"field": field, "message": message, "rule": rule, "code": exc.code}]
