"""Group commit for batch sources (commands.group) on SQLite and PostgreSQL: many commands in one
transaction; a command on a recipient the group already changed sees that change; a command that
raises or is rejected is rolled back to its savepoint and the others are kept; each command's
``command_id`` still applies once, within a group and across a retried group; a conflict at commit
re-runs the commands one by one and loses none."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from commands import models as m
from commands.app import LedgerApp, Result
from commands.handlers import expenses
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from ledger.aggregates import Recipient
from ledger.values import CST

ID_NUMBERS = ("310105195803122013", "310105196001011236")
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}


@pytest.fixture
def ledger(settings_for: Settings):
    app = build_app(settings_for, publish_policy=False)
    ensure_policy(app, published_at=datetime(2023, 12, 31, 8, tzinfo=CST))
    yield app
    app.close()


def enrolled(app: LedgerApp, id_number: str = ID_NUMBERS[0]) -> str:
    rid = app.run(m.Enrol(id_number=id_number, name="王秀英", street="华阳路街道", at=datetime(2026, 1, 5, 9, tzinfo=CST))).ids["recipient"]
    app.run(m.GrantCategory.model_validate({"recipient": rid, "category": "dibao", "from": "2025-01-01", "at": datetime(2026, 1, 5, 9, 1, tzinfo=CST)}))
    app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2020-01-01", "at": datetime(2026, 1, 5, 9, 2, tzinfo=CST)}))
    return rid


def expense(rid: str, invoice_no: str, day: int = 10, **extra: Any) -> m.RecordExpense:
    return m.RecordExpense.model_validate({
        "recipient": rid, "visit_type": "outpatient", "facility": dict(CHC),
        "service_date": f"2026-02-{day:02d}", "invoice_date": f"2026-02-{day:02d}", "invoice_no": invoice_no,
        "total": "150.00", "in_scope": "120.00", "basic_insurance_paid": "30.00",
        "at": datetime(2026, 2, day, 16, tzinfo=CST), **extra,
    })


class Transactions:
    """Counts the recorder's ``insert_events`` calls: one per transaction that wrote events."""

    def __init__(self, app: LedgerApp):
        self.app, self.count, self.events = app, 0, 0
        original = app.recorder.insert_events

        def counted(stored: Any, **kwargs: Any) -> Any:
            self.count += 1
            self.events += len(stored)
            return original(stored, **kwargs)

        app.recorder.insert_events = counted  # type: ignore[method-assign]

    def undo(self) -> None:
        del self.app.recorder.insert_events


def stored_events(settings: Settings, rid: str) -> list[Any]:
    """The recipient's events as another process reads them (a fresh application on the store)."""
    other = build_app(settings, publish_policy=False)
    try:
        return list(other.events.get(other.recipient(rid).id))
    finally:
        other.close()


class BoomExpense(m.RecordExpense):
    """A record_expense whose handler raises after it changed the recipient (a bug, not a rule)."""


def boom(app: Any, cmd: BoomExpense) -> Result:
    expenses.record_expense(app, cmd)
    raise RuntimeError("failed after changing the recipient")


def test_one_transaction_holds_many_commands_and_a_recipient_sees_its_own_changes(ledger: LedgerApp, settings_for: Settings) -> None:
    rid = enrolled(ledger)
    tx = Transactions(ledger)
    try:
        with ledger.group() as g:
            first = ledger.run(expense(rid, "G-0001"))
            second = ledger.run(expense(rid, "G-0002", day=11))
            # the claim sees both expenses the group recorded, on the same (held) recipient
            lodged = ledger.run(m.LodgeClaim(recipient=rid, expenses=[first.ids["expense"], second.ids["expense"]], handler="h1",
                                             at=datetime(2026, 2, 12, 9, tzinfo=CST)))
            claim = lodged.ids["claim"]
            ledger.run(m.Review(claim=claim, reviewer="r1", at=datetime(2026, 2, 12, 10, tzinfo=CST)))
            approved = ledger.run(m.Approve(claim=claim, approver="a1", at=datetime(2026, 2, 12, 11, tzinfo=CST)))
            assert tx.count == 0, "nothing is written before the group commits"
            assert ledger.recipient(rid).expenses[first.ids["expense"]].decision is not None
        assert g.transactions == 1
    finally:
        tx.undo()
    assert tx.count == 1 and tx.events >= 7
    assert first.ids["expense"] != second.ids["expense"]
    assert [o.status for o in g.outcomes] == ["accepted"] * 5
    assert approved.ids["aid"] != "0.00"
    events = stored_events(settings_for, rid)
    versions = [e.originator_version for e in events]
    assert versions == list(range(1, len(versions) + 1))
    # the group's transaction wrote its events in the order the commands saved them: the log
    # stays in recorded-time order, as with one command per transaction
    stamps = [ledger.mapper.to_domain_event(n).timestamp for n in ledger.recorder.select_notifications(start=1, limit=10_000)]
    assert stamps == sorted(stamps)
    other = build_app(settings_for, publish_policy=False)
    try:
        r = other.recipient(rid)
        assert set(r.expenses) == {first.ids["expense"], second.ids["expense"]}
        assert all(acc.decision is not None for acc in r.expenses.values())
        assert other.claim(claim).status == "approved"
    finally:
        other.close()


def test_a_command_that_raises_or_is_rejected_is_rolled_back_and_the_others_kept(ledger: LedgerApp, settings_for: Settings) -> None:
    rid = enrolled(ledger)
    ledger.handlers = {**ledger.handlers, BoomExpense: boom}
    bad = BoomExpense.model_validate({**expense(rid, "G-BOOM", day=11).model_dump(by_alias=True)})
    lodged_first = None
    outcomes = ledger.run_many([
        expense(rid, "G-0001"),
        bad,
        expense(rid, "G-0002", day=12),
        m.Enrol(id_number=ID_NUMBERS[1], name="李建国", street="华阳路街道", at=datetime(2026, 2, 12, 17, tzinfo=CST)),
    ])
    assert isinstance(outcomes[1], RuntimeError)
    a, b, enrol = outcomes[0], outcomes[2], outcomes[3]
    assert (a.status, b.status, enrol.status) == ("accepted", "accepted", "accepted")
    # the failed command's expense was undone: the next one took its number
    assert a.ids["expense"].endswith(":1") and b.ids["expense"].endswith(":2")
    events = stored_events(settings_for, rid)
    assert not any("G-BOOM" in repr(vars(e)) for e in events)
    assert ledger.receipt(("CN-CHC-HY", "G-BOOM")) is None, "the failed command's receipt index entry was dropped too"
    # the failing command closes a group of two (the commit comes after its rollback)
    tx = Transactions(ledger)
    try:
        small = ledger.run_many([expense(rid, "G-0003", day=13), bad, expense(rid, "G-0004", day=14)], size=2)
    finally:
        tx.undo()
    assert [type(o).__name__ for o in small] == ["Result", "RuntimeError", "Result"]
    assert small[2].ids["expense"].endswith(":4") and tx.count == 2
    # a rule's rejection inside a group: kept under its command_id, the claim's other signatures go on
    lodged_first = ledger.run(m.LodgeClaim(recipient=rid, expenses=[a.ids["expense"]], handler="h1", at=datetime(2026, 2, 13, 9, tzinfo=CST)))
    claim = lodged_first.ids["claim"]
    same, other_officer = ledger.run_many([
        m.Review(claim=claim, reviewer="h1", command_id="review-by-handler", at=datetime(2026, 2, 13, 10, tzinfo=CST)),
        m.Review(claim=claim, reviewer="r1", at=datetime(2026, 2, 13, 11, tzinfo=CST)),
    ])
    assert same.status == "rejected" and same.code == "SAME_OFFICER"
    assert other_officer.status == "accepted"
    assert ledger.claim(claim).reviewer == "r1"
    again = ledger.run(m.Review(claim=claim, reviewer="h1", command_id="review-by-handler", at=datetime(2026, 2, 13, 10, tzinfo=CST)))
    assert again.as_dict() == same.as_dict()


def test_a_retried_group_applies_nothing_twice(ledger: LedgerApp, settings_for: Settings) -> None:
    rid = enrolled(ledger)
    cmds = [
        expense(rid, "G-0001", command_id="import:G-0001"),
        expense(rid, "G-0002", day=11, command_id="import:G-0002"),
        # the same command twice in one group: the second gets the first's result
        expense(rid, "G-0001", command_id="import:G-0001"),
    ]
    first = ledger.run_many(cmds)
    assert first[0].ids == first[2].ids
    count = len(stored_events(settings_for, rid))
    again = ledger.run_many(cmds)
    assert [r.as_dict() for r in again] == [r.as_dict() for r in first]
    assert len(stored_events(settings_for, rid)) == count
    assert len(ledger.recipient(rid).expenses) == 2
    # another process retrying the same group (after a crash, say) finds the records too
    other = build_app(settings_for, publish_policy=False)
    try:
        assert [r.as_dict() for r in other.run_many(cmds)] == [r.as_dict() for r in first]
    finally:
        other.close()
    assert len(stored_events(settings_for, rid)) == count


def test_a_conflict_at_commit_reruns_each_command_alone(ledger: LedgerApp, settings_for: Settings) -> None:
    rid = enrolled(ledger)
    other = build_app(settings_for, publish_policy=False)
    try:
        with ledger.group() as g:
            mine = ledger.run(expense(rid, "G-0001"))
            assert mine.ids["expense"].endswith(":1")
            # another writer records an expense on the same recipient before the group commits
            theirs = other.run(expense(rid, "G-0009", day=9))
            assert theirs.ids["expense"].endswith(":1")
    finally:
        other.close()
    assert g.transactions == 0, "the group's own transaction lost the race"
    final = g.outcomes[0]
    assert final.status == "accepted" and final.ids["expense"].endswith(":2")
    r = ledger.recipient(rid)
    invoices = sorted(acc.facts.invoice_no for acc in r.expenses.values())
    assert invoices == ["G-0001", "G-0009"]


def test_the_online_path_stays_one_command_per_transaction(ledger: LedgerApp) -> None:
    rid = enrolled(ledger)
    tx = Transactions(ledger)
    try:
        ledger.run(expense(rid, "G-0001"))
        ledger.run(expense(rid, "G-0002", day=11))
    finally:
        tx.undo()
    assert tx.count == 2
    assert isinstance(ledger.recipient(rid), Recipient)


def test_the_monthly_batch_keeps_the_claims_of_others_when_one_fails(ledger: LedgerApp) -> None:
    """R-PH-3 [002 3.3]: the 免申即享 batch lodges its claims with group commit; a claim whose
    handler raises is left out (its expenses stay unclaimed for the next batch) and the others
    are lodged and batched."""
    rids = []
    for n, id_number in enumerate(ID_NUMBERS):
        rid = enrolled(ledger, id_number)
        ledger.run(m.ConsentAutoClaim(recipient=rid, signed=True, at=datetime(2026, 4, 1, 9, 10 + n, tzinfo=CST)))
        may = {**expense(rid, f"AUTO-{n}").model_dump(by_alias=True, exclude_none=True),
               "service_date": "2026-05-06", "invoice_date": "2026-05-06", "at": datetime(2026, 5, 6, 10 + n, tzinfo=CST)}
        assert ledger.run(m.RecordExpense.model_validate(may)).status == "accepted"
        rids.append(rid)
    lodge = ledger.handlers[m.LodgeClaim]

    def flaky(app: Any, cmd: m.LodgeClaim) -> Result:
        result = lodge(app, cmd)
        if cmd.recipient == rids[0]:
            raise RuntimeError("the claim of the first recipient fails after it was lodged")
        return result

    ledger.handlers = {**ledger.handlers, m.LodgeClaim: flaky}
    tx = Transactions(ledger)
    try:
        res = ledger.run(m.AutoClaims(month="2026-05", handler="batch-service", at=datetime(2026, 6, 10, 2, tzinfo=CST)))
    finally:
        tx.undo()
    assert res.status == "accepted"
    assert res.ids["failed"] == [rids[0]]
    assert len(res.ids["claims"]) == 1
    assert ledger.claim(res.ids["claims"][0]).recipient_id == rids[1]
    first = ledger.recipient(rids[0])
    assert all(acc.claim_id is None for acc in first.expenses.values()), "the failed claim left nothing behind"
    assert tx.count == 2, "the claims in one transaction, the batch in another"
    # the next batch claims what the failed one left
    ledger.handlers = {**ledger.handlers, m.LodgeClaim: lodge}
    again = ledger.run(m.AutoClaims(month="2026-05", handler="batch-service", at=datetime(2026, 6, 11, 2, tzinfo=CST)))
    assert [ledger.claim(c).recipient_id for c in again.ids["claims"]] == [rids[0]]


def test_the_demo_with_group_commit_writes_the_same_log_as_one_command_per_transaction(tmp_path: Any) -> None:
    """The demo's replay (infra.demo.generate) runs in groups: the same plan gives the same figures
    and the same log, event for event in the same order (topics, versions, recorded times), as
    when every command is its own transaction."""
    import contextlib
    from datetime import date

    from infra import demo

    logs, summaries = [], []
    for grouped in (True, False):
        app = demo.demo_app(Settings(database_url=f"sqlite:///{tmp_path / str(grouped)}.db", data_key="k" * 43))
        if not grouped:
            app.group = lambda size=100: contextlib.nullcontext()  # type: ignore[method-assign]
        tx = Transactions(app)
        summary = demo.generate(app, recipients=30, seed=7, years=(2025, 2026), until=date(2026, 6, 30)).as_dict()
        tx.undo()
        summary.pop("elapsed_s")
        summaries.append((summary, tx.count))
        logs.append([(n.topic, n.originator_version, app.mapper.to_domain_event(n).timestamp)
                     for n in app.recorder.select_notifications(start=1, limit=100_000)])
        app.close()
    (grouped_summary, grouped_tx), (alone_summary, alone_tx) = summaries
    assert grouped_summary == alone_summary
    assert logs[0] == logs[1]
    assert grouped_tx * 5 < alone_tx, (grouped_tx, alone_tx)
