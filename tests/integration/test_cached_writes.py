"""Commands read from the aggregate cache and their saves prove what they read (ADR 0021).

Two writers are two LedgerApps (two processes' worth of caches and connection pools) on one
store. A command uses the aggregate its process holds without asking the store for newer events;
the store's unique (id, version) key refuses a save of a stale aggregate, the save's transaction
refuses a save that only *read* a stale aggregate, and a command that saves nothing has its reads
checked before it answers. Each time the command runs again from the store: the tests make one
writer's cache stale with the other writer, then check the answer is the one a fresh read gives.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from commands import models as m
from commands.app import LedgerApp
from infra import integrity
from infra.settings import Settings
from aggregate_support import count_conflicts
from infra.wiring import build_app
from integrity_story import CST, id_number, ok
from ledger.aggregates import Receipt
from ledger.values import receipt_identity

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
POSTGRES = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


@pytest.fixture
def apps(database_url: str):
    settings = Settings(database_url=database_url)
    first = build_app(settings)
    second = build_app(settings, publish_policy=False)
    yield first, second
    first.close()
    second.close()


def _store_reads(app: LedgerApp) -> Counter:
    """Counts the aggregate reads that went to the store (cache misses and fast-forwards)."""
    seen: Counter = Counter()
    get = app.repository.event_store.get

    def counted(*args, **kw):
        seen["reads"] += 1
        return get(*args, **kw)

    app.repository.event_store.get = counted  # type: ignore[method-assign]
    return seen


def _enrolled(app: LedgerApp, first17: str) -> str:
    rid = ok(app.run(m.Enrol(id_number=id_number(first17), name="缓存测试"))).ids["recipient"]
    ok(app.run(m.GrantCategory.model_validate({"recipient": rid, "category": "dibao", "from": "2025-01-01"})))
    ok(app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2020-01-01"})))
    return rid


def _served() -> str:
    return (datetime.now(CST) - timedelta(days=10)).date().isoformat()


def _expense(rid: str, invoice_no: str, code: str = "H-3") -> m.RecordExpense:
    served = _served()
    return m.RecordExpense.model_validate(
        {
            "recipient": rid, "visit_type": "outpatient", "facility": {"kind": "hospital", "level": 3, "code": code},
            "service_date": served, "invoice_date": served, "invoice_no": invoice_no,
            "total": "100.00", "in_scope": "100.00", "basic_insurance_paid": "0.00",
        }
    )


def _aid(app: LedgerApp, rid: str, eid: str) -> str:
    cid = ok(app.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler="handler-1"))).ids["claim"]
    ok(app.run(m.Review(claim=cid, reviewer="reviewer-1")))
    ok(app.run(m.Approve(claim=cid, approver="approver-1")))
    return cid


def _chain_verifies(app: LedgerApp) -> None:
    chain = integrity.chain_for(app)
    report = integrity.verify(chain)
    assert report.ok and report.unchained == 0, report.problems


@BOTH
def test_a_recipient_cached_before_another_writer_changed_it_is_read_again_and_nothing_is_lost(apps, database_url):
    a, b = apps
    rid = _enrolled(a, "31010519600101301")
    ok(a.run(_expense(rid, "A-1")))  # a holds the recipient now
    ok(b.run(_expense(rid, "B-1")))  # b changes it behind a's back
    conflicts, reads = count_conflicts(a), _store_reads(a)

    second = ok(a.run(_expense(rid, "A-2")))

    assert conflicts["conflict"] == 1, "a used the recipient it held, and its save was refused once"
    assert second.ids["expense"] == f"{rid}:3", "decided again on the recipient as stored: the third expense"
    fresh = build_app(Settings(database_url=database_url), publish_policy=False)
    r = fresh.recipient(rid)
    fresh.close()
    assert sorted(acc.facts.invoice_no for acc in r.expenses.values()) == ["A-1", "A-2", "B-1"]
    before = reads["reads"]
    ok(a.run(_expense(rid, "A-3")))  # held again, current: no conflict, and no read of the recipient
    assert conflicts["conflict"] == 1
    assert reads["reads"] == before, "a command on a held, current recipient reads nothing from the store"
    _chain_verifies(a)


@BOTH
def test_a_refusal_decided_on_a_stale_claim_is_checked_and_the_command_decided_again(apps):
    """An approval refused (NOT_REVIEWED) on what this process held, while another writer had
    reviewed the claim: the refusal saves nothing, so its reads are checked before it answers."""
    a, b = apps
    rid = _enrolled(a, "31010519600101302")
    eid = ok(a.run(_expense(rid, "C-1"))).ids["expense"]
    cid = ok(a.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler="handler-1"))).ids["claim"]  # a holds the claim, lodged
    ok(b.run(m.Review(claim=cid, reviewer="reviewer-1")))

    approved = a.run(m.Approve(claim=cid, approver="approver-1"))

    assert approved.status == "accepted", approved
    assert b.claim(cid).status == "approved"
    _chain_verifies(a)


@BOTH
def test_a_receipt_only_read_by_a_claim_is_checked_by_the_claims_save(apps):
    """R-PH-7, R-CLR-1(b): a lodges a claim on a receipt that it holds as not aided, while b has
    aided the same receipt for another recipient. Lodging saves the claim, not the receipt: its
    transaction checks the receipt, refuses, and the claim is decided again: a duplicate."""
    a, b = apps
    r1 = _enrolled(b, "31010519600101303")
    r2 = _enrolled(a, "31010519600101304")
    e1 = ok(b.run(_expense(r1, "DUP-1"))).ids["expense"]
    noted = ok(a.run(_expense(r2, "DUP-1")))  # a reads the receipt (its guess that it is new failed)
    e2 = noted.ids["expense"]
    assert noted.ids["duplicate_of"] == e1
    key = receipt_identity("H-3", "DUP-1")
    assert Receipt.id_for(key) in a.repository.cache.cache, "a holds the receipt"
    _aid(b, r1, e1)
    conflicts = count_conflicts(a)

    lodged = a.run(m.LodgeClaim(recipient=r2, expenses=[e2], handler="handler-2"))

    assert conflicts["conflict"] >= 1, "the first decision was made on the receipt a held"
    assert lodged.status == "rejected" and lodged.code == "DUPLICATE", lodged
    assert a.receipt(key).aided_as == e1
    _chain_verifies(a)


@BOTH
def test_two_writers_recording_one_receipt_at_once_one_is_first_and_the_other_is_flagged(apps):
    """R-CLR-1(b): both take the receipt as new (no read); the store's key lets one open it, the
    other runs again, reads it and is flagged as the duplicate of the first."""
    a, b = apps
    r1 = _enrolled(a, "31010519600101305")
    r2 = _enrolled(a, "31010519600101306")
    b.recipient(r2)  # b holds its recipient: both writers get to the save at the same time
    barrier = threading.Barrier(2)
    conflicts = [count_conflicts(a), count_conflicts(b)]
    for app in apps:
        save = app.save
        state = {"first": True}

        def at_once(*objs, _save=save, _state=state, **kw):
            if _state["first"]:
                _state["first"] = False
                barrier.wait(timeout=30)
            return _save(*objs, **kw)

        app.save = at_once  # type: ignore[method-assign]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: ok(p[0].run(_expense(p[1], "RACE-1"))), [(a, r1), (b, r2)]))

    assert sum(c["conflict"] for c in conflicts) == 1, "one save was refused by the receipt's key"
    firsts = [r for r in results if r.ids["duplicate_of"] is None]
    seconds = [r for r in results if r.ids["duplicate_of"] is not None]
    assert len(firsts) == 1 and len(seconds) == 1
    assert seconds[0].ids["duplicate_of"] == firsts[0].ids["expense"]
    rc = a.receipt(receipt_identity("H-3", "RACE-1"))
    assert rc.first_recorded == firsts[0].ids["expense"]
    _chain_verifies(a)


@POSTGRES
def test_a_save_whose_read_changed_stores_nothing_and_leaves_the_chain_whole(apps):
    """The check itself: a save naming a read version older than the store's is refused whole."""
    a, b = apps
    rid = _enrolled(a, "31010519600101307")
    stale = a.recipient(rid).version
    ok(b.run(_expense(rid, "S-1")))
    before = a.recorder.max_notification_id()
    def opened() -> Receipt:
        return Receipt._create(Receipt.Opened, id=Receipt.id_for(("X", "S-2")), timestamp=datetime.now(CST), facility_code="X", invoice_no="S-2")

    with pytest.raises(IntegrityError):
        a.save(opened(), unchanged={a.recipient(rid).id: stale})

    assert a.recorder.max_notification_id() == before, "nothing of the refused save was stored"
    a.save(opened(), unchanged={a.recipient(rid).id: stale + 1})  # what the store holds: stored
    assert a.recorder.max_notification_id() > before
    _chain_verifies(a)


@POSTGRES
def test_saves_send_no_notify_unless_the_setting_asks(database_url):
    settings = Settings(database_url=database_url)
    quiet = build_app(settings)
    loud = build_app(Settings(database_url=database_url, postgres_notify=True), publish_policy=False)
    try:
        channel = quiet.recorder.channel_name
        with psycopg.connect(settings.psycopg_conninfo(), autocommit=True) as listener:
            listener.execute(f'LISTEN "{channel}"')
            _enrolled(quiet, "31010519600101308")
            heard_quiet = list(listener.notifies(timeout=0.5, stop_after=1))
            _enrolled(loud, "31010519600101309")
            heard_loud = list(listener.notifies(timeout=2, stop_after=1))
        assert heard_quiet == []
        assert heard_loud and all(n.channel == channel for n in heard_loud)
        _chain_verifies(quiet)
    finally:
        quiet.close()
        loud.close()


@BOTH
def test_many_reads_are_checked_at_once_and_only_the_changed_one_is_named(apps):
    """A command that read thousands of aggregates (a clearing run over every recipient) is
    checked in one go: SQLite's bound-variable limit, PostgreSQL's one statement."""
    import uuid

    a, b = apps
    rid = _enrolled(a, "31010519600101310")
    read = a.recipient(rid).version
    ok(b.run(_expense(rid, "M-1")))
    unchanged = {uuid.uuid4(): 0 for _ in range(5000)}
    unchanged[a.recipient(rid).id] = read

    assert [str(x).replace("-", "") for x in a.recorder.changed_since(unchanged)] == [str(rid).replace("-", "")]
    assert a.recorder.changed_since({k: v for k, v in unchanged.items() if str(k) != str(rid)}) == []


@BOTH
def test_an_erasure_in_another_process_reaches_what_this_one_holds_decoded(apps):
    """ADR 0015: after an erasure anywhere, the next request of a running service reads the
    personal fields as erased, also for a recipient its cache holds decoded."""
    from infra import privacy

    a, b = apps
    rid = _enrolled(a, "31010519600101311")
    with privacy.fresh_keys():
        assert a.recipient(rid).name == "缓存测试"  # decoded and held by a
    privacy.erase(b, rid, reason="test")

    with privacy.fresh_keys():  # a's next request
        assert a.recipient(rid).name == privacy.ERASED


@BOTH
def test_a_payment_on_a_fresh_claim_with_a_stale_recipient_is_decided_again_not_failed(apps):
    """a holds the recipient from before b approved the claim (its decision is not in a's copy);
    the claim itself a reads afresh (dropped from its cache). Paying on that pair cannot work; the
    failure is checked against the store, found stale, and the payment decided again."""
    a, b = apps
    rid = _enrolled(a, "31010519600101312")
    eid = ok(a.run(_expense(rid, "P-1"))).ids["expense"]
    cid = ok(a.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler="handler-1"))).ids["claim"]
    ok(b.run(m.Review(claim=cid, reviewer="reviewer-1")))
    aid = ok(b.run(m.Approve(claim=cid, approver="approver-1"))).ids["aid"]
    a.repository.cache.get(a.claim(cid).id, evict=True)  # a holds the recipient, not the claim

    paid = a.run(m.Pay(claim=cid))

    assert paid.status == "accepted" and paid.ids["paid"] == aid, paid
    _chain_verifies(a)


@BOTH
def test_a_held_recipient_is_never_copied_half_way_through_bringing_it_forward(apps):
    """One thread of a brings its held recipient forward by the events b saved, one event at a
    time; another thread of a that reads the recipient meanwhile without waiting to bring it
    forward itself (the library's ``fastforward_skipping``) gets a copy made under the same
    lock: the recipient as it stands after every event, never one with some applied."""
    a, b = apps
    rid = _enrolled(a, "31010519600101313")
    key = a.recipient(rid).id
    held = a.repository.cache.get(key).version  # a holds it at this version
    ok(b.run(_expense(rid, "F-1")))
    ok(b.run(_expense(rid, "F-2")))
    halfway, go = threading.Event(), threading.Event()

    def one_at_a_time(aggregate, events):
        for i, event in enumerate(events):
            aggregate = event.mutate(aggregate)
            if i == 0:
                halfway.set()
                go.wait(10)
        return aggregate

    with ThreadPoolExecutor(max_workers=2) as pool:
        forward = pool.submit(a.repository.get, key, projector_func=one_at_a_time)
        assert halfway.wait(10)
        copied = pool.submit(a.repository.get, key, fastforward_skipping=True)
        try:
            with pytest.raises(TimeoutError):
                copied.result(timeout=0.3)  # waits for the thread bringing it forward
        finally:
            go.set()
        final = forward.result(timeout=10)
        copy = copied.result(timeout=10)
    assert final.version > held + 1
    assert copy.version == final.version
    assert sorted(acc.facts.invoice_no for acc in copy.expenses.values()) == ["F-1", "F-2"]


@BOTH
def test_a_pass_after_another_writer_decided_resumes_from_the_kept_pass_and_compares_every_due(apps, database_url, monkeypatch):
    """ADR 0017: a's last pass over the recipient no longer describes it once b has decided for it
    (its standing moved). a's next pass still resumes from it (the assessments before the first
    changed input are the kept ones), but names no expense as the only ones assessed again
    (``recomputed`` None): every ``due`` is compared, as after a full pass, and the pass equals the
    full one."""
    from ledger import engine

    a, b = apps
    rid = _enrolled(a, "31010519600101307")
    kept_ids = []
    for i in range(4):
        eid = ok(a.run(_expense(rid, f"K-{i}"))).ids["expense"]
        _aid(a, rid, eid)
        kept_ids.append(eid)
    other = ok(b.run(_expense(rid, "K-B"))).ids["expense"]
    _aid(b, rid, other)
    last = ok(a.run(_expense(rid, "K-5"))).ids["expense"]
    real = engine.assess
    calls: list[tuple[tuple, dict, engine.PassResult]] = []

    def spy(*args, **kw):
        result = real(*args, **kw)
        calls.append((args, kw, result))
        return result

    monkeypatch.setattr(engine, "assess", spy)
    _aid(a, rid, last)
    monkeypatch.undo()

    resumed = [(args, kw, res) for args, kw, res in calls if kw.get("memo") is not None]
    assert resumed, "a's passes were given its kept pass although b had decided since"
    for args, kw, res in resumed:
        assert res.recomputed is None, "the recipient moved since the kept pass: every due is compared"
        memo = kw["memo"]
        assert all(res.assessments[eid] is memo.by_id[eid] for eid in kept_ids), "the kept assessments were carried over"
        full = real(*args, **{k: v for k, v in kw.items() if k != "memo"})
        assert {e: x.summary() for e, x in res.assessments.items()} == {e: x.summary() for e, x in full.assessments.items()}
        assert res.caps == full.caps
    fresh = build_app(Settings(database_url=database_url), publish_policy=False)
    r = fresh.recipient(rid)
    fresh.close()
    assert r.expenses[last].decision is not None and r.expenses[last].due == a.recipient(rid).expenses[last].due
    _chain_verifies(a)


@BOTH
def test_a_recipient_another_writer_changed_is_brought_forward_not_read_again_whole(apps, database_url):
    """After a's save is refused (b changed the recipient a held), a's next read of it applies
    only the events recorded after the version a held, to the aggregate a's cache keeps (no
    command holds that one: the cache keeps copies), instead of rebuilding the recipient from
    its snapshot and every event since; and the answer is the one a fresh read gives."""
    import uuid

    a, b = apps
    rid = _enrolled(a, "31010519600101308")
    for i in range(3):
        ok(a.run(_expense(rid, f"F-{i}")))
    held = a.repository.cache.get(uuid.UUID(rid)).version
    ok(b.run(_expense(rid, "F-B")))
    conflicts = count_conflicts(a)
    asked: list[dict] = []
    rebuilt: list[object] = []
    get, reconstruct = a.repository.event_store.get, a.repository._reconstruct_aggregate

    def spy_get(*args, **kw):
        asked.append(kw)
        return get(*args, **kw)

    def spy_reconstruct(aggregate_id, *args, **kw):
        rebuilt.append(aggregate_id)
        return reconstruct(aggregate_id, *args, **kw)

    a.repository.event_store.get = spy_get  # type: ignore[method-assign]
    a.repository._reconstruct_aggregate = spy_reconstruct  # type: ignore[method-assign]

    ok(a.run(_expense(rid, "F-4")))

    assert conflicts["conflict"] == 1, "a used the recipient it held, and its save was refused once"
    assert uuid.UUID(rid) not in rebuilt, "the recipient was not rebuilt from the store"
    assert any(kw.get("originator_id") == uuid.UUID(rid) and kw.get("gt") == held for kw in asked), asked
    fresh = build_app(Settings(database_url=database_url), publish_policy=False)
    r = fresh.recipient(rid)
    fresh.close()
    assert sorted(acc.facts.invoice_no for acc in r.expenses.values()) == ["F-0", "F-1", "F-2", "F-4", "F-B"]
    assert a.recipient(rid).version == r.version
    _chain_verifies(a)
