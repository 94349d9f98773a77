"""The error hierarchy: every refusal carries a code, the rule (R-id) and the field it concerns.

``Rejected`` is a rule's answer ("no"), a result to record and report; ``InvalidInput`` is input
that cannot be a command at all. Neither changes anything already recorded.
"""

from __future__ import annotations


class LedgerError(Exception):
    code = "LEDGER_ERROR"
    rule = ""

    def __init__(self, message: str, *, code: str | None = None, rule: str | None = None, field: str = ""):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if rule is not None:
            self.rule = rule
        self.field = field

    def as_dict(self) -> dict:
        out = {"code": self.code, "rule": self.rule, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


class InvalidInput(LedgerError):
    code = "INVALID_INPUT"


class UnknownEntity(InvalidInput):
    code = "UNKNOWN_ENTITY"


class Rejected(LedgerError):
    """A rule said no. Codes are those of SCENARIOS.md; the ledger may add, never rename."""


class Conflict(Rejected):
    """The command does not fit the current state (e.g. lifting a suspension that is not there)."""

    code = "CONFLICT"


class NotARecipient(Rejected):
    code, rule = "NOT_A_RECIPIENT", "R-CAT-1"


class NotInsured(Rejected):
    code, rule = "NOT_INSURED", "R-INS-1"


class DeadlinePassed(Rejected):
    code, rule = "DEADLINE_PASSED", "R-PH-5"


class Duplicate(Rejected):
    code, rule = "DUPLICATE", "R-PH-7"


class EvidenceMissing(Rejected):
    code, rule = "EVIDENCE_MISSING", "R-INS-5"


class NotYetSettled(Rejected):
    code, rule = "NOT_YET_SETTLED", "R-INS-6"


class SameOfficer(Rejected):
    code, rule = "SAME_OFFICER", "R-PH-4"


class NotEligible(Rejected):
    code, rule = "NOT_ELIGIBLE", ""


class AlreadyGranted(Rejected):
    code, rule = "ALREADY_GRANTED", "R-4L-5"


class NotApproved(Rejected):
    code, rule = "NOT_APPROVED", "R-PH-4"


class PolicyFloor(Rejected):
    code, rule = "POLICY_FLOOR", "R-LYG-1"


class ClaimClosed(Rejected):
    code, rule = "CLAIM_CLOSED", "R-PH-4"


class NothingOwed(Rejected):
    code, rule = "NOTHING_OWED", "R-CLR-3"


class ExceedsBalance(Rejected):
    """A repayment larger than the open clearing balance: a case never goes below zero."""

    code, rule = "EXCEEDS_BALANCE", "R-CLR-3"


class PersonalDataErased(Conflict):
    """The recipient's personal data was erased (crypto-shredding, ADR 0015): nothing that needs
    it can be recorded any more."""

    code = "PERSONAL_DATA_ERASED"
