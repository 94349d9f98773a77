"""Policy as dated data: a parameter published or amended, possibly retroactively (R-TIME-2,
R-CLR-1(d)).

Each handler takes the ledger (the unit of work, ``commands.core.LedgerCore``) and one
command, and returns its ``Result``; ``commands.handlers.HANDLERS`` registers them."""

from __future__ import annotations


from commands import models as m
from commands.core import LedgerCore, Result
from ledger import errors
from ledger.aggregates import PolicyLedger, version_to_event
from ledger.policy import packs as policy_packs
from ledger.policy.params import PolicyError
from ledger.values import Trigger


def set_parameter(app: LedgerCore, cmd: m.SetParameter) -> Result:
    """A parameter published or amended (RULES §10), possibly retroactive: refused with
    POLICY_FLOOR if it breaks a floor; otherwise recorded, then every decided expense is
    recomputed and differences open clearing cases or supplementary payouts (R-CLR-1(d))."""
    moment = app._now(cmd.at)
    ledger = app.policy()
    try:
        version = policy_packs.make_amendment(
            cmd.name, cmd.value, cmd.effective_from, cmd.effective_to, moment, cmd.reference
        )
        policy_packs.validate(ledger.book, [version])
    except PolicyError as exc:
        # the field is the command's (``name`` or ``value``); the message names the parameter
        if exc.code == "UNKNOWN_PARAMETER":
            raise errors.InvalidInput(f"{exc} (docs/policy-parameters.md lists every name the ledger accepts)", code=exc.code,
                                      rule=exc.rule or "SCENARIOS.md set_parameter: the project documents every name it accepts",
                                      field="name") from None
        if exc.code == "INVALID_VALUE":
            raise errors.InvalidInput(str(exc), code=exc.code, rule=exc.rule or "docs/policy-parameters.md: values by unit",
                                      field="value") from None
        raise errors.PolicyFloor(str(exc), rule=exc.rule or "R-LYG-1", field="value") from None
    ledger.trigger_event(PolicyLedger.ParameterAmended, timestamp=moment, version=version_to_event(version))
    app._commit(cmd, Result(), ledger)
    changed = app.clearing_run(Trigger.PARAMETER_CHANGE.value, at=moment, cause={"parameter": cmd.name})
    return Result(ids={"recipients_changed": changed})
