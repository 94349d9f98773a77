"""Every command and the handler that carries it out, registered in one place.

A handler is a function ``(ledger, command) -> Result`` in the module of its capability; the
message bus (``commands.core.LedgerCore.run``) looks the command's type up here. Adding a command
is a model in ``commands/models.py``, a function in its capability's module and one line below.
"""

from __future__ import annotations

from typing import Any, Callable

from commands import models as m
from commands.handlers import claims, clearing, district, enrolment, expenses, policy, transfer

HANDLERS: dict[type[m.Command], Callable[[Any, Any], Any]] = {
    # enrolment (RULES §2, §3)
    m.Enrol: enrolment.enrol,
    m.GrantCategory: enrolment.grant_category,
    m.RevokeCategory: enrolment.revoke_category,
    m.Insure: enrolment.insure,
    m.EndInsurance: enrolment.end_insurance,
    m.JoinMutualAid: enrolment.join_mutual_aid,
    m.ConsentAutoClaim: enrolment.consent_auto_claim,
    # expenses and the point of care
    m.RecordExpense: expenses.record_expense,
    m.SettleInsurance: expenses.settle_insurance,
    m.OneStop: expenses.one_stop,
    # claims and their signatures (R-PH)
    m.LodgeClaim: claims.lodge_claim,
    m.Review: claims.review,
    m.Approve: claims.approve,
    m.Pay: claims.pay,
    m.AutoClaims: claims.auto_claims,
    m.SignBatch: claims.sign_batch,
    # policy
    m.SetParameter: policy.set_parameter,
    # the district's 四医联动 actions
    m.LiftSuspension: district.lift_suspension,
    m.SocialHelp: district.social_help,
    # clearing (R-CLR)
    m.ClearingRun: clearing.run_clearing,
    m.PaySupplementary: clearing.pay_supplementary,
    m.Repay: clearing.repay,
    m.WriteOff: clearing.write_off,
    m.ProposeWriteOff: clearing.propose_write_off,
    m.ApproveWriteOff: clearing.approve_write_off,
    m.RefuseWriteOff: clearing.refuse_write_off,
    # a person moves district (R-CAP-4, ADR 0020)
    m.TransferOut: transfer.transfer_out,
    m.TransferIn: transfer.transfer_in,
}
