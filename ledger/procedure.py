"""The post-hoc procedure (RULES.md §6, `changning.post_hoc_procedure` [002]): how a claim moves.

These checks decide whether an expense may be claimed at all; how much it gets is the engine's.
"""

from __future__ import annotations

from datetime import date

from ledger import errors
from ledger.eligibility import categories_on
from ledger.facts import ExpenseFacts, Knowledge
from ledger.policy.params import PolicyBook
from ledger.values import Category, Scheme, add_months, same_identity, validate_id_number

PROCEDURE = Scheme.POST_HOC_PROCEDURE.value


#: The refusals of the procedure's own checks on an expense (R-PH-5, R-INS-6, R-INS-5).
PROCEDURAL = (errors.DeadlinePassed, errors.NotYetSettled, errors.EvidenceMissing)


def may_be_mutual_aid(k: Knowledge, e: ExpenseFacts) -> bool:
    """Whether an expense may be aided by the community mutual-aid plan rather than medical aid:
    its person holds the plan's category on the service date. [002 1 范围] 本规范适用于…办理医疗救助
    （事后救助）的操作: the procedure (R-PH-5, R-INS-5, R-INS-6) is medical aid's; the plan has its own
    [003 六] (an application at the street's community affairs centre, no claim window, no 居保大病:
    its participants are outside Shanghai basic insurance). Such an expense's procedural refusal
    stands only when the assessment does not aid it under the plan (R-CAT-2 picks the winner:
    :func:`refusal_stands`)."""
    return any(h.category == Category.MUTUAL_AID_PARTICIPANT.value for h in categories_on(k, e.service_date))


def refusal_stands(granted: bool, category: str | None) -> bool:
    """Whether a procedural refusal (R-PH-5, R-INS-5, R-INS-6 [002 1 范围, 4.3, 3.6, 4.2]) of an
    expense that :func:`may_be_mutual_aid` stands, given its assessment: it does unless the
    community mutual-aid plan wins the expense (R-CAT-2 [001 二(一)]), whose procedure is its own
    [003 六]."""
    return not (granted and category == Category.MUTUAL_AID_PARTICIPANT.value)


def procedure_in_force(book: PolicyBook, schemes: tuple[str, ...], on: date) -> bool:
    if PROCEDURE not in schemes:
        return False
    v = book.lookup(f"{PROCEDURE}.in_force", on)
    return bool(v and v.value)


#: The month's days in the text [002 3.3, 3.5]: the 免申即享 claims ticked by the 15th (R-PH-3), the
#: street's summary and payout list at the district by the 20th, the money paid to the person by
#: the 25th (R-PH-6). The pack publishes them as parameters from the procedure's start; these are
#: what a month has where the book has none.
MONTHLY_DAYS: dict[str, int] = {"auto_claim_day": 15, "summary_due_day": 20, "payment_due_day": 25}


def monthly_days(book: PolicyBook | None, month_start: date) -> dict[str, int]:
    """R-PH-3, R-PH-6 [002 3.3, 3.5]: the procedure's days for the month that begins on
    ``month_start``, each looked up on that first day (docs/policy-parameters.md), so an amendment
    moves the months it covers; the text's days where the book has no value."""
    days = dict(MONTHLY_DAYS)
    if book is not None:
        for key in days:
            v = book.lookup(f"{PROCEDURE}.{key}", month_start.replace(day=1))
            if v is not None and v.value is not None:
                days[key] = int(v.value)
    return days


def claim_window_months(book: PolicyBook, lodged_on: date) -> int:
    """R-PH-5: the claim window in force on the day a claim is lodged (6 months [002 4.3])."""
    v = book.lookup(f"{PROCEDURE}.claim_window_months", lodged_on)
    return int(v.value) if v and v.value is not None else 6


def claim_deadline(book: PolicyBook, invoice_date: date, lodged_on: date) -> date:
    return add_months(invoice_date, claim_window_months(book, lodged_on))


def check_deadline(book: PolicyBook, schemes: tuple[str, ...], e: ExpenseFacts, lodged_on: date, overridden: bool = False) -> None:
    """R-PH-5 [002 4.3]: lodged within 6 months of the invoice date, i.e. on or before the same day
    six months later (the month's last day where that day does not exist)."""
    if overridden or not procedure_in_force(book, schemes, lodged_on):
        return
    last = claim_deadline(book, e.invoice_date, lodged_on)
    if lodged_on > last:
        raise errors.DeadlinePassed(
            f"expense {e.id}: invoice dated {e.invoice_date}, claim lodged {lodged_on}; "
            f"the {claim_window_months(book, lodged_on)}-month window closed on {last} [002 4.3]",
            field="expenses",
        )


def check_evidence(book: PolicyBook, schemes: tuple[str, ...], e: ExpenseFacts) -> None:
    """R-INS-5 [002 3.6]: a critical-illness expense needs the 城乡居保大病结算单 for a service date
    up to 2025-12-31 and the receipt marked "居保大病65%" from 2026-01-01 (dated data, not code)."""
    if PROCEDURE not in schemes or not e.critical_illness_related:
        return
    v = book.lookup(f"{PROCEDURE}.critical_illness_evidence", e.service_date)
    if v is None or v.value is None:
        return
    if e.critical_illness_evidence != v.value:
        raise errors.EvidenceMissing(
            f"expense {e.id}: a critical-illness expense served on {e.service_date} needs evidence "
            f"'{v.value}' {v.reference}; the claim brought '{e.critical_illness_evidence}'",
            field="critical_illness_evidence",
        )


#: The schemes whose texts R-INS-6 restates (Shanghai's basic insurance settles out-of-province care
#: through 异地备案 and 零星报销); Lianyungang's text [004] has no such step.
_SETTLED_FIRST = (Scheme.SHANGHAI_MEDICAL_AID.value, Scheme.FOUR_LINKAGE.value)


def check_settled(schemes: tuple[str, ...], e: ExpenseFacts) -> None:
    """R-INS-6 [002 4.2; 001 二(二)3]: out-of-province care not yet settled by basic insurance
    goes through 零星报销 first, under the Shanghai schemes (the engine refuses it there on every
    channel, one-stop included; this check reports it in the procedure's order)."""
    if not any(s in schemes for s in _SETTLED_FIRST):
        return
    if e.facility.out_of_province and not e.basic_insurance_settled:
        raise errors.NotYetSettled(
            f"expense {e.id}: out-of-province expense not yet settled by basic insurance; 零星报销 first [002 4.2]",
            field="basic_insurance_settled",
        )


def check_officers(handler: str | None, reviewer: str | None, approver: str | None, payer: str | None = None) -> None:
    """R-PH-4 [002 3.4]: handler 经办人, reviewer 审核人 and approver 审批人 are three distinct people,
    and the officer who pays (the disbursement, [002 3.5]) is a fourth. Officers are compared as
    people type them: after NFKC, case folding and trimming (``Wang.Li`` and `` wang.li`` are one
    person, ``ledger.values.same_identity``)."""
    roles = [("handler", handler), ("reviewer", reviewer), ("approver", approver), ("payer", payer)]
    seen: dict[str, tuple[str, str]] = {}
    for role, person in roles:
        if not person:
            continue
        who = same_identity(person)
        if who in seen:
            signed_as, spelled = seen[who]
            raise errors.SameOfficer(
                f"{person!r} is {spelled!r}, who already signed this claim as {signed_as}; the {role} must be a "
                f"different person (R-PH-4 [002 3.4])",
                field=role,
            )
        seen[who] = (role, person)


def check_proxy(proxy_id_number: str | None, recipient_id_number: str, today: date) -> str | None:
    """R-PH-9 [002 4.7]: a proxy may lodge; the proxy's identity is recorded and verified."""
    if proxy_id_number is None:
        return None
    try:
        number = validate_id_number(proxy_id_number, today=today)
    except ValueError as exc:
        # A proxy whose identity cannot be verified does not lodge: the claim is refused by the
        # rule (recorded, as every refusal of a claim is), not treated as a malformed request.
        raise errors.NotEligible(
            f"the proxy's identity could not be verified: proxy_id_number {exc}; a proxy lodges only with a "
            "resident id that is verified (R-PH-9 [002 4.7])", rule="R-PH-9", field="proxy_id_number") from None
    if number == recipient_id_number:
        return None  # the recipient in person
    return number
