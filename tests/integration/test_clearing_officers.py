"""The money clearing officers handle, on SQLite and PostgreSQL (R-CLR-1..3): a repayment records
who took it, when, on which voucher and how; a write-off is proposed, refused or approved by a
second officer as ledger events, the approver seeing the person and the amount; ``clearing run``
picks its scope and triggers from what changed since the last run.

Figures as in test_clearing_store: low_income, inpatient 80%, cap 80000, city aid split 1:1.
E1 self-pay 90000 → 72000; E2 20000 → 8000 (cap). 居保大病 40000 on E1 recorded late: E1 → 40000
(case 32000), E2 → 16000 (supplementary 8000).
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from decimal import Decimal

import pytest

from clearing_story import HOSPITAL_3, Story, app_on, at, id_number, parse
from commands import clearing_runs
from commands import clearing_views as views
from commands import queries
from commands import models as m
from infra.settings import Settings
from ledger.aggregates import ClearingLog, Recipient

D = Decimal
MARKED = {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


def owing(story: Story) -> str:
    """R1 owes 32000 on one case (a late 居保大病 payment, R-CLR-1(a))."""
    story.person("R1", id_number(41), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01", in_scope="90000.00", **MARKED)
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1"])
    story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")
    [case] = story.cases("R1")
    assert case["amount"] == "32000.00"
    return str(story.recipient("R1").id)


def test_a_repayment_records_officer_date_voucher_and_method(settings_for: Settings) -> None:
    story = Story(app_on(settings_for))
    rid = owing(story)
    result = story.app.run(m.Repay(recipient=rid, amount="1000.00", officer="clr-1", received_on=date(2026, 4, 20),
                                   voucher="RCPT-0001", method="bank_transfer", at=parse(at("2026-04-21"))))
    assert result.status == "accepted"
    # the default day is the recorded day in +08:00
    story.app.run(m.Repay(recipient=rid, amount="500.00", officer="clr-2", voucher="V-2", method="cash",
                          at=parse(at("2026-04-22", "23:30:00"))))
    events = [e for e in story.app.repository.event_store.get(uuid.UUID(rid)) if isinstance(e, Recipient.RepaymentReceived)]
    assert [(e.officer, e.received_on, e.voucher, e.method, e.amount) for e in events] == [
        ("clr-1", "2026-04-20", "RCPT-0001", "bank_transfer", D("1000.00")),
        ("clr-2", "2026-04-22", "V-2", "cash", D("500.00")),
    ]
    [case] = story.recipient("R1").cases.values()
    shown = [h for h in views.case_detail(story.app, case.id)["history"] if h["kind"] == "repayment"]
    assert [(h["amount"], h["officer"], h["voucher"], h["method"], h["received_on"]) for h in shown] == [
        ("1000.00", "clr-1", "RCPT-0001", "bank_transfer", "2026-04-20"),
        ("500.00", "clr-2", "V-2", "cash", "2026-04-22"),
    ]
    # a bad method is refused before anything is recorded
    with pytest.raises(Exception) as refused:
        m.Repay(recipient=rid, amount="1.00", officer="x", voucher="v", method="cheque")
    assert "method" in str(refused.value)


def test_a_repayment_recorded_before_v2_reads_with_no_officer() -> None:
    state = {"amount": "1.00", "allocations": []}
    Recipient.RepaymentReceived.upcast_v1_v2(state)
    assert (state["officer"], state["received_on"], state["voucher"], state["method"]) == (None, None, None, None)
    old = {"officer": "a", "approver": "b", "reason": None, "allocations": []}
    Recipient.WriteOffApproved.upcast_v1_v2(old)
    assert old["proposal_id"] is None
    assert Recipient.RepaymentReceived.class_version == Recipient.WriteOffApproved.class_version == 2


def test_write_off_proposed_refused_and_approved_by_distinct_officers(settings_for: Settings) -> None:
    story = Story(app_on(settings_for))
    rid = owing(story)
    app = story.app
    proposed = app.run(m.ProposeWriteOff(recipient=rid, officer="CLR-1", reason="长期无力偿还", at=parse(at("2026-05-01"))))
    pid = proposed.ids["proposal"]
    assert proposed.ids["amount"] == "32000.00"
    [row] = views.write_off_proposals(app, status="pending")
    # the approver sees the person and the amount, not a bare uuid
    assert (row["id"], row["name"], row["amount"], row["reason"]) == (pid, "person R1", "32000.00", "长期无力偿还")
    assert row["id_number"].startswith(id_number(41)[:6]) and "*" in row["id_number"] and row["id_number"] != id_number(41)
    assert [c["amount"] for c in row["cases"]] == ["32000.00"]

    # R-CLR-3: the proposer cannot decide it, however the name is typed
    same = app.run(m.ApproveWriteOff(proposal=pid, approver=" clr-1 ", at=parse(at("2026-05-02"))))
    assert (same.status, same.code, same.rule) == ("rejected", "SAME_OFFICER", "R-CLR-3")
    assert app.run(m.RefuseWriteOff(proposal=pid, officer="ｃｌｒ－１", at=parse(at("2026-05-02")))).code == "SAME_OFFICER"
    refused = app.run(m.RefuseWriteOff(proposal=pid, officer="APR-1", reason="先核实收入", at=parse(at("2026-05-03"))))
    assert refused.status == "accepted"
    assert app.run(m.ApproveWriteOff(proposal=pid, approver="APR-2", at=parse(at("2026-05-04")))).code == "PROPOSAL_CLOSED"
    assert story.recipient("R1").open_balance() == D("32000.00")

    second = app.run(m.ProposeWriteOff(recipient=rid, officer="CLR-1", reason="家庭困难", at=parse(at("2026-05-05")))).ids["proposal"]
    assert second != pid
    # money received after the proposal lowers what the approval writes off
    app.run(m.Repay(recipient=rid, amount="2000.00", officer="CLR-1", voucher="V-9", method="cash", at=parse(at("2026-05-06"))))
    done = app.run(m.ApproveWriteOff(proposal=second, approver="APR-1", at=parse(at("2026-05-07"))))
    assert (done.status, done.ids["written_off"]) == ("accepted", "30000.00")
    [case] = story.recipient("R1").cases.values()
    assert (case.status, case.balance) == ("written_off", D("0"))
    assert {p["id"]: p["status"] for p in views.write_off_proposals(app)} == {pid: "refused", second: "approved"}

    detail = views.case_detail(app, case.id)
    # the cause in words, the expense by its handle and receipt, not its id
    assert re.fullmatch(r"critical_illness paid \S+ on expense E1 \(receipt \S+, served 2026-\d\d-\d\d\), recorded after aid", detail["cause_text"]), detail["cause_text"]
    steps = [(h["kind"], h.get("officer"), h.get("reason")) for h in detail["history"] if h["kind"].startswith("write_off_")]
    assert steps == [
        ("write_off_proposed", "CLR-1", "长期无力偿还"),
        ("write_off_refused", "APR-1", "先核实收入"),
        ("write_off_proposed", "CLR-1", "家庭困难"),
        ("write_off_signed", "CLR-1", "家庭困难"),
    ]
    assert views.write_off_proposal(app, second)["written_off"] == "30000.00"
    # nothing left to propose; an unknown proposal is named as such
    assert app.run(m.ProposeWriteOff(recipient=rid, officer="CLR-1", at=parse(at("2026-05-08")))).code == "NOTHING_OWED"
    with pytest.raises(Exception, match="unknown write-off proposal"):
        app.run(m.ApproveWriteOff(proposal=str(uuid.uuid4()), approver="APR-1"))


def test_a_write_off_forgives_only_what_pending_supplementary_payouts_will_not_offset(settings_for: Settings) -> None:
    # given the module's story in full: E1 72000 and E2 8000 (cap 80000) paid, then 居保大病 40000
    # on E1: E1 due 40000 (a case of 72000 - 40000), E2 due 16000 (a supplementary payout of 8000)
    story = Story(app_on(settings_for))
    story.person("R1", id_number(42), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01", in_scope="90000.00", **MARKED)
    story.expense("E2", "R1", at("2026-02-02"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-02", in_scope="20000.00")
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1", "E2"])
    story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")
    [case] = story.cases("R1")
    [supp] = story.supplementary("R1")
    owed, pending = D(case["amount"]), D(supp["amount"])
    assert pending > 0 and supp["status"] == "pending"
    app, rid = story.app, str(story.recipient("R1").id)
    # when a write-off is proposed and approved, then it forgives the balance less the pending
    # payout, which still offsets the rest when paid (R-CLR-2, R-CLR-3): the person is paid once
    proposed = app.run(m.ProposeWriteOff(recipient=rid, officer="CLR-1", at=parse(at("2026-05-01"))))
    assert D(proposed.ids["amount"]) == owed - pending
    done = app.run(m.ApproveWriteOff(proposal=proposed.ids["proposal"], approver="APR-1", at=parse(at("2026-05-02"))))
    assert D(done.ids["written_off"]) == owed - pending
    assert story.recipient("R1").open_balance() == pending
    # then nothing is left to forgive while the payout is pending, and it says why
    again = app.run(m.ProposeWriteOff(recipient=rid, officer="CLR-1", at=parse(at("2026-05-03"))))
    assert again.code == "NOTHING_OWED" and "pending supplementary" in again.message
    story("pay_supplementary", at("2026-05-04"), recipient="R1")
    r = story.recipient("R1")
    assert r.open_balance() == 0
    # the funds' net outflow is what is due now plus what was forgiven, not the payout on top
    outflow = sum(queries.fund_movements(r).values(), D(0))
    assert outflow == sum((D(a.due["total"]) for a in r.expenses.values()), D(0)) + (owed - pending)


def test_clearing_run_picks_scope_and_triggers_from_what_changed(settings_for: Settings) -> None:
    story = Story(app_on(settings_for))
    for n, handle in enumerate(("R1", "R2"), start=1):
        story.person(handle, id_number(50 + n), "low_income")
        story.expense(f"E{n}", handle, at("2026-02-01"), facility=HOSPITAL_3, service="2026-02-01", in_scope="30000.00")
        story("aid", at("2026-02-10"), claim=f"C{n}", recipient=handle, expenses=[f"E{n}"])
    app = story.app
    r1, r2 = (story.recipient(h).id for h in ("R1", "R2"))
    assert clearing_runs.last_position(app) == 0
    head = app.recorder.max_notification_id()
    first = clearing_runs.run(app, at=parse(at("2026-02-11")))
    # a new decision is the only change: each one's trigger is R-CLR-1(e), or (d) for the packs published
    assert first.trigger == "auto" and first.recipients_seen == 2
    assert first.position == clearing_runs.last_position(app) == head
    again = clearing_runs.run(app, at=parse(at("2026-02-12")))
    assert (again.recipients_seen, again.triggers) == (0, {})

    story("settle_insurance", at("2026-03-01"), expense="E2", scheme="other", amount="100.00")
    changed = clearing_runs.run(app, at=parse(at("2026-03-02")))
    assert (changed.recipients_seen, changed.triggers) == (1, {"late_insurance": 1})
    assert clearing_runs.changes_after(app, first.position).triggers == {r2: "late_insurance"}
    story("grant_category", at("2026-03-05"), recipient="R1", category="dibao", **{"from": "2026-01-01"})
    told = clearing_runs.run(app, trigger="parameter_change", at=parse(at("2026-03-06")))
    assert told.triggers == {"parameter_change": 1}
    assert clearing_runs.changes_after(app, changed.position).triggers == {r1: "category_change"}
    # a back-dated amendment is everyone's parameter_change
    story("set_parameter", at("2026-04-01"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
          value="10200.00", effective_from="2026-01-01")
    amended = clearing_runs.run(app, at=parse(at("2026-04-02")))
    assert amended.triggers == {"parameter_change": 2}
    # --since and --all override the scope; only --all (everyone) moves the position
    before = clearing_runs.last_position(app)
    since = clearing_runs.run(app, since=parse(at("2026-03-20")), at=parse(at("2026-04-03")))
    assert (since.position, clearing_runs.last_position(app)) == (None, before)
    everyone = clearing_runs.run(app, everyone=True, at=parse(at("2026-04-04")))
    assert everyone.recipients_seen == 2 and everyone.position == clearing_runs.last_position(app)
    log = app.repository.get(ClearingLog.ID)
    assert [r["scope"].split(" ")[0] for r in log.runs] == ["changes", "changes", "changes", "changes", "changes", "all"]
