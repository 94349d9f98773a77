"""Group commit keeps one outcome per command, in order, also for a command refused before its
handler runs (a ``command_id`` already used for another command: IDEMPOTENCY_MISMATCH)."""

from __future__ import annotations

from datetime import date, datetime

from commands import models as m
from commands.core import Result
from infra.wiring import memory_app
from ledger import errors
from ledger.values import CST


def test_a_mismatched_command_id_keeps_its_place_among_the_outcomes() -> None:
    app = memory_app("shanghai.changning", published_at=datetime(2025, 12, 31, 8, tzinfo=CST))
    at = datetime(2026, 1, 5, 9, tzinfo=CST)
    rid = app.run(m.Enrol(id_number="310105195803122013", name="王秀英", street="华阳路街道", at=at, command_id="k-1")).ids["recipient"]
    cmds = [
        m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2020, 1, 1), at=at),
        m.ConsentAutoClaim(recipient=rid, signed=True, at=at, command_id="k-1"),  # k-1 was an enrolment
        m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=at),
    ]
    outcomes = app.run_many(cmds)
    assert len(outcomes) == 3
    assert isinstance(outcomes[0], Result) and outcomes[0].status == "accepted"
    assert isinstance(outcomes[1], errors.LedgerError) and outcomes[1].code == "IDEMPOTENCY_MISMATCH"
    assert isinstance(outcomes[2], Result) and outcomes[2].status == "accepted"
    r = app.recipient(rid)
    assert r.consent is False and r.insurance_facts and r.category_facts  # the others were kept
