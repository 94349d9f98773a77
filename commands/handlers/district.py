"""The district office's 四医联动 actions: lifting a suspension after its review, one-time social
help (R-4L-4, R-4L-5).

Each handler takes the ledger (the unit of work, ``commands.core.LedgerCore``) and one
command, and returns its ``Result``; ``commands.handlers.HANDLERS`` registers them."""

from __future__ import annotations


from commands import models as m
from commands.core import LedgerCore, Result
from ledger import errors
from ledger.aggregates import Recipient
from ledger.eligibility import categories_on
from ledger.values import Scheme, local_date


def lift_suspension(app: LedgerCore, cmd: m.LiftSuspension) -> Result:
    """R-4L-4 [000 第四条(三)]: after the district's review, 四医联动 reopens."""
    r = app.recipient(cmd.recipient)
    if r.active_suspension(cmd.scheme) is None:
        raise errors.Conflict(f"no active suspension of {cmd.scheme} for this recipient", code="NOT_SUSPENDED", rule="R-4L-4", field="recipient")
    moment = app._now(cmd.at)
    r.trigger_event(Recipient.SuspensionLifted, timestamp=moment, scheme=cmd.scheme, reviewer=cmd.reviewer, lifted_on=local_date(moment).isoformat())
    return app._commit(cmd, Result(), r)


def social_help(app: LedgerCore, cmd: m.SocialHelp) -> Result:
    """R-4L-5 [000 第四条(四)]: one social-organisation grant per recipient per policy period."""
    r = app.recipient(cmd.recipient)
    moment = app._now(cmd.at)
    on = local_date(moment)
    scheme = Scheme.FOUR_LINKAGE.value
    book = app.policy().book
    in_force = book.lookup(f"{scheme}.in_force", on)
    if scheme not in app.schemes or not (in_force and in_force.value):
        raise errors.NotEligible(f"四医联动 is not in force here on {on}", rule="R-4L-5", field="recipient")
    cats = book.lookup(f"{scheme}.categories", on)
    held = {h.category for h in categories_on(r.knowledge(), on)}
    if not held & set(cats.value if cats else ()):
        raise errors.NotEligible(f"the recipient holds no 四医联动 category on {on} [000 第二条(一)]", rule="R-4L-5", field="recipient")
    period = f"{in_force.effective_from.isoformat()}..{in_force.effective_to.isoformat() if in_force.effective_to else ''}"
    limit_v = book.lookup(f"{scheme}.social_help.grants_per_period", on)
    limit = int(limit_v.value) if limit_v and limit_v.value is not None else 1
    if sum(1 for g in r.social_help if g["period"] == period) >= limit:
        raise errors.AlreadyGranted(f"one-time social-organisation help was already granted in the policy period {period} [000 第四条(四)]", field="recipient")
    r.trigger_event(Recipient.SocialHelpGranted, timestamp=moment, amount=cmd.amount, organisation=cmd.organisation, period=period)
    return app._commit(cmd, Result(), r)
