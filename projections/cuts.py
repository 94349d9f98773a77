"""Recorded time as a column, and persisted cuts for (V, T) snapshots (R-TIME-3, ADR 0010).

``proj_recorded``: one row per notification of the log (position, originator, version, topic,
recorded time as integer microseconds since the epoch and as stored). "Known at T" becomes a range
read on ``recorded_us`` instead of a decode of the whole log.

``proj_cut``: per recipient and period (the day of the recorded time, China Standard Time: a
snapshot at a T in the middle of a day rebuilds from its stream only a recipient with events on
that day both before and after T; with months it was 42% of a district at a mid-month T), the
snapshot-relevant state of the recipient as of the last event of that period it saw: street, the
categories held as a step function of the valid date (R-CAT-1, R-CAT-3), and the money a snapshot
row sums (R-TIME-3 [RULES.md §1]) as dated entries (column, fund, date, amount; totalled per year,
the detail parsed only for V's year; caps under their invoice year) computed
with ``engine.assess(known_at=recorded time)`` under the policy in force at that position: aid due
and caps used (R-CAP-1, R-CAP-2: caps keep the invoice year), paid, open clearing balances
(R-CLR-2, R-CLR-3), pending supplementary payouts (R-CLR-2), social help (R-4L-5) and enrolment
subsidies (R-INS-2). A cut names the recipient version and the policy-ledger version it was taken
at: a snapshot uses it only when both are what T knew, otherwise it rebuilds that recipient from
its own stream. A policy event re-cuts every recipient under the new book.

Nothing here reads the wall clock: a rebuild gives the same rows.
"""

from __future__ import annotations

import inspect as pyinspect
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import BigInteger, Column, Index, String, Table, Text, func, select, tuple_
from sqlalchemy.engine import Connection, Engine

from ledger import aggregates, engine as assess_engine, reconcile
from ledger.aggregates import PolicyLedger, Recipient
from ledger.eligibility import categories_on, category_periods
from ledger.policy import packs as policy_packs
from ledger.values import CATEGORY_PRECEDENCE, CST, local_date, micros
from projections.common import Item, Projection, chunks, dumps, insert_rows, loads, metadata, topic

RECIPIENT_TOPIC = f"{Recipient.__module__}:{Recipient.__qualname__}."
POLICY_TOPIC = f"{PolicyLedger.__module__}:{PolicyLedger.__qualname__}."
FOREVER = 2**62

recorded = Table(
    "proj_recorded",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),  # notification id
    Column("originator_id", String(36), nullable=False),
    Column("originator_version", BigInteger, nullable=False),
    Column("topic", String(400), nullable=False),
    Column("kind", String(16), nullable=False),  # recipient | policy | other
    Column("recorded_us", BigInteger, nullable=False),  # recorded time, µs since 1970 UTC
    Column("recorded_at", String(64), nullable=False),  # the event's timestamp as stored
    Index("proj_recorded_time", "recorded_us"),
    Index("proj_recorded_kind_time", "kind", "recorded_us"),
)

cut_table = Table(
    "proj_cut",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("period", String(10), primary_key=True),  # day of the recorded time (CST), YYYY-MM-DD
    Column("position", BigInteger, nullable=False),
    Column("recorded_us", BigInteger, nullable=False),
    Column("recipient_version", BigInteger, nullable=False),
    Column("policy_version", BigInteger, nullable=False),  # 0: no policy recorded yet
    Column("street", Text, nullable=False),
    Column("state", Text, nullable=False),  # canonical JSON: see summarise()
    # The period of the recipient's next cut (LATEST for its latest): "the latest cut before T's
    # period" is then an index range read on the rows still current at T, whatever came before.
    Column("next_period", String(10), nullable=False),
    Index("proj_cut_next", "next_period"),
    Index("proj_cut_recipient_next", "recipient", "next_period"),
)
LATEST = "9999-99"

# The cuts a page left owed: a recipient's last event of the page, whose period may go on in the
# next page (``Projection.last_page`` False: the runner has more pages to apply before the head).
# Its cut is taken when the period ends or at the last page instead of at every page end, and this
# row (committed with the tracking position) carries it over to the next page, in this process or
# any other. Empty whenever the view is at the head.
owed = Table(
    "proj_cut_owed",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("position", BigInteger, nullable=False),  # the recipient's last event so far
    Column("recipient_version", BigInteger, nullable=False),
    Column("recorded_at", String(64), nullable=False),  # that event's timestamp (ISO 8601, as stored)
)


def period_of(moment: datetime) -> str:
    """The cut period of a recorded time: its day in China Standard Time (``YYYY-MM-DD``)."""
    return local_date(moment).isoformat()


def _kind(t: str) -> str:
    if t.startswith(RECIPIENT_TOPIC):
        return "recipient"
    if t.startswith(POLICY_TOPIC):
        return "policy"
    return "other"


def _event_classes() -> list[type]:
    """Every event class of every aggregate the ledger stores (the side table records them all)."""
    from eventsourcing.domain import Aggregate, CanMutateAggregate

    out: list[type] = []
    for _, agg in pyinspect.getmembers(aggregates, pyinspect.isclass):
        if not (issubclass(agg, Aggregate) and agg.__module__ == aggregates.__name__):
            continue
        for _, ev in pyinspect.getmembers(agg, pyinspect.isclass):
            if issubclass(ev, CanMutateAggregate) and ev.__qualname__.startswith(agg.__qualname__ + "."):
                out.append(ev)
    return out


# --------------------------------------------------------------------------- the summary


def summarise(r: Recipient, book: Any, schemes: tuple[str, ...], t: datetime | None, memos: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a snapshot row needs of ``r`` for any valid date V, known at ``t`` (R-TIME-3).

    ``memos`` (recipient → what its previous cut computed; updated here) lets a cut redo only
    what changed since the recipient's previous cut: the assessment resumes from the previous
    pass (:func:`_assess_at`), the entries of an expense whose account, assessment, cases and
    supplementary payouts are the very objects of the previous cut are carried over (an apply
    never changes a recipient's nested state in place: it replaces the object, see
    ``Recipient.__deepcopy__``), and the categories held are recomputed only when the category
    facts known at ``t`` changed. Same result as without ``memos``."""
    k = r.knowledge()
    kt = k.known_at(t)
    memo: dict[str, Any] = memos.setdefault(str(r.id), {}) if memos is not None else {}
    held = _held(kt, memo)
    entries: dict[tuple[str, str, str, int], Decimal] = {}

    def add(column: str, by_fund: dict[str, Any], on: date, invoice_year: int = 0) -> None:
        for f, amount in by_fund.items():
            value = Decimal(amount)
            if value:
                key = (column, f, on.isoformat(), invoice_year)
                entries[key] = entries.get(key, Decimal(0)) + value

    refs = r.decided_refs()
    result = _assess_at(r, k, kt, refs, book, schemes, t, memo if memos is not None else None) if refs else None
    if result is not None:
        # What reconcile.explain reads of the recipient besides the expense's own account.
        linked: dict[str, list[Any]] = {}
        for case in r.cases.values():
            linked.setdefault(case.expense_id, []).append(case)
        for s in r.supplementary.values():
            linked.setdefault(s.expense_id, []).append(s)
        before: dict[str, tuple[Any, ...]] = memo.get("expenses", {})
        kept: dict[str, tuple[Any, ...]] = {}
        for eid, acc in r.expenses.items():
            if acc.decision is None:
                continue
            a = result.assessments[eid]
            on = tuple(linked.get(eid, ()))
            hit = before.get(eid)
            if hit is not None and hit[0] is acc and hit[1] is a and len(hit[2]) == len(on) and all(x is y for x, y in zip(hit[2], on)):
                rows = hit[3]
            else:
                rows = _expense_entries(r, eid, acc, a)
            kept[eid] = (acc, a, on, rows)
            for key, value in rows:
                entries[key] = entries.get(key, Decimal(0)) + value
        if memos is not None:
            memo["expenses"] = kept
    for case in r.cases.values():  # R-CLR-2, R-CLR-3
        if case.expense_id in r.expenses:
            add("clearing_open", case.balance_by_fund, r.expenses[case.expense_id].facts.service_date)
    for s in r.supplementary.values():
        if s.paid_at is None and s.expense_id in r.expenses:
            add("supplementary_pending", s.by_fund, r.expenses[s.expense_id].facts.service_date)
    for g in r.social_help:  # R-4L-5
        add("other_paid", {"social": g["amount"]}, local_date(g["at"]))
    for s in r.subsidies:  # R-INS-2
        if Decimal(s.get("amount") or "0"):
            add("other_paid", {s.get("fund", "city"): s["amount"]}, local_date(datetime.fromisoformat(s["at"])))
    # By year, so that a snapshot parses only V's year: "totals" sums each year's entries other
    # than caps (every one of them counts for a V in a later year); "detail" (JSON text, parsed
    # only for V's year) keeps the dated entries of the year, caps under their invoice year.
    totals: dict[str, dict[str, dict[str, Decimal]]] = {}
    detail: dict[str, list[list[Any]]] = {}
    for (c, f, d, y), v in sorted(entries.items()):
        year = str(y) if y else d[:4]
        detail.setdefault(year, []).append([c, f, d, str(v)])
        if not y:
            acc = totals.setdefault(d[:4], {}).setdefault(c, {})
            acc[f] = acc.get(f, Decimal(0)) + v
    return {
        "street": r.street,
        "held": held,
        "totals": {y: {c: {f: str(v) for f, v in by_f.items()} for c, by_f in by_c.items()} for y, by_c in totals.items()},
        "detail": {y: dumps(rows) for y, rows in detail.items()},
    }


def _held(kt: Any, memo: dict[str, Any]) -> list[list[Any]]:
    """The categories held (R-CAT-1 [002 3.2], R-CAT-3 [002 4.3]) as a step function of the valid
    date, from the category facts known at the cut (the previous cut's answer when they are the
    same facts)."""
    facts = tuple(kt.categories)
    hit = memo.get("held")
    if hit is not None and hit[0] == facts:
        return hit[1]
    # Categories held on V change only at these dates.
    marks = {date.min}
    for spans in category_periods(kt).values():
        for start, end, src in spans:
            marks.update({start, date(start.year, 1, 1)})
            if start.year < date.max.year:
                marks.add(date(start.year + 1, 1, 1))
            if end is not None and end < date.max:
                marks.add(end + timedelta(days=1))
            if src.means_test_expenses_from:
                marks.add(src.means_test_expenses_from)
    held: list[list[Any]] = []
    for d in sorted(marks):
        cats = sorted((h.category for h in categories_on(kt, d)), key=CATEGORY_PRECEDENCE.index)
        if not held or held[-1][1] != cats:
            held.append([d.isoformat(), cats])
    memo["held"] = (facts, held)
    return held


def _expense_entries(r: Recipient, eid: str, acc: Any, a: Any) -> list[tuple[tuple[str, str, str, int], Decimal]]:
    """One decided expense's dated entries ((column, fund, date, cap year), amount), zeros left
    out: aid due and caps used by its assessment, paid, and the reconciling columns."""
    out: list[tuple[tuple[str, str, str, int], Decimal]] = []
    served = acc.facts.service_date.isoformat()

    def add(column: str, by_fund: dict[str, Any], invoice_year: int = 0) -> None:
        for f, amount in by_fund.items():
            value = Decimal(amount)
            if value:
                out.append(((column, f, served, invoice_year), value))

    if a.granted:
        add("aid_due", a.by_fund)
        for part in a.parts:  # R-CAP-2: the cap year is the invoice's
            if part.counts_against_cap:
                add(f"caps_used_{part.kind}", part.by_fund, acc.facts.invoice_date.year)
    add("aid_paid", acc.paid_by_fund)
    for column, by_fund in reconcile.explain(r, eid, a.by_fund if a.granted else {}).items():  # R-CLR-2, R-CLR-3
        add(column, by_fund)
    return out


def _assess_at(r: Recipient, k: Any, kt: Any, refs: list[Any], book: Any, schemes: tuple[str, ...], t: datetime | None, memo: dict[str, Any] | None) -> Any:
    """``engine.assess(k, facts, refs, book, schemes, known_at=t)``, resumed from the recipient's
    previous pass when ``memo`` has one (``memo["pass"]``, replaced by this pass's). ``known_at``
    only cuts the knowledge, the facts (their settlements) and the book to what was recorded by
    ``t`` (``ledger.engine.assess``), so the pass over the inputs cut here with ``known_at=None``
    is the same pass, and that one can carry the assessments of the expenses before the first
    that changed over from the memo (exactly the full pass: ``ledger.engine.PassMemo``,
    tests/unit/test_incremental_assessment.py). A cut then assesses only what changed since the
    recipient's last cut, not its whole history again."""
    facts = r.expense_facts()
    if memo is None:
        return assess_engine.assess(k, facts, refs, book, schemes, known_at=t)
    uncut = True  # no settlement recorded after t: the facts are the recipient's own objects
    if t is not None:
        cut_facts = {}
        for eid, f in facts.items():
            if all(s.recorded_at <= t for s in f.settlements):
                cut_facts[eid] = f
            else:
                cut_facts[eid], uncut = f.known_at(t), False
        facts = cut_facts
        book = book.known_at(t)
    # The pass reads the decided expenses only (their refs and facts), the knowledge, the book and
    # the schemes: when all are what the previous cut's pass read (the very objects: a changed
    # fact or decision is a new object; a book only ever grows), it is that pass.
    inputs = [(acc.decision, acc.facts) for acc in r.expenses.values() if acc.decision is not None]
    last = memo.get("last")
    if (
        uncut and last is not None and last[0] is book and last[5] == len(book.versions) and last[1] == schemes and len(last[3]) == len(inputs)
        and all(a is c and b is d for (a, b), (c, d) in zip(last[3], inputs)) and last[2] == kt
    ):
        return last[4]
    result = assess_engine.assess(kt, facts, refs, book, schemes, memo=memo.get("pass"))
    memo["pass"] = result.memo
    memo["last"] = (book, schemes, kt, inputs, result, len(book.versions)) if uncut else None
    return result


def held_on(state: dict[str, Any], v: date) -> list[str]:
    text = v.isoformat()
    cats: list[str] = []
    for since, held in state["held"]:
        if since > text:
            break
        cats = held
    return list(cats)


def money_on(state: dict[str, Any], v: date) -> dict[str, dict[str, Decimal]]:
    """fund → column → amount, for valid date V (the entries served or dated on or before V)."""
    text, year = v.isoformat(), str(v.year)
    parts: dict[tuple[str, str], list[str]] = {}
    for y, by_column in state["totals"].items():
        if y < year:  # whole earlier years (caps count only in their own invoice year, R-CAP-2)
            for column, by_fund in by_column.items():
                for f, amount in by_fund.items():
                    parts.setdefault((f, column), []).append(amount)
    detail = state["detail"].get(year)
    if detail is not None:
        # sorted by column, fund, date (summarise): one run of entries per column and fund
        for (column, f), run in groupby(loads(detail), key=itemgetter(0, 1)):
            amounts = [e[3] for e in run if e[2] <= text]
            if amounts:
                parts.setdefault((f, column), []).extend(amounts)
    out: dict[str, dict[str, Decimal]] = {}
    for (f, column), amounts in parts.items():  # each sum in the entries' order, from Decimal(0)
        out.setdefault(f, {})[column] = sum(map(Decimal, amounts), Decimal(0))
    return out


# --------------------------------------------------------------------------- the view


class Cuts(Projection):
    """Bump ``version`` whenever :func:`summarise` changes what it keeps: the runner then rebuilds
    the cuts from the log."""

    name = "cuts"
    version = 3  # 3: cuts per day; 2: the reconciling columns of ledger.reconcile
    tables = (recorded, cut_table, owed)
    events = ()  # every event: see topics()
    #: Recipients kept in memory between pages (a hint: a miss reads and decodes the recipient's
    #: own stream, so the cache holds a district's recipients: ~10,000, a partition of them in a
    #: partitioned rebuild).
    CACHE = 12000

    def __init__(self) -> None:
        self.recorder: Any = None
        self.mapper: Any = None
        self._cache: OrderedDict[str, Recipient] = OrderedDict()
        #: recipient → the assessment pass of its last cut (``summarise``), for the recipients cached
        self._memos: dict[str, Any] = {}
        self._policy: PolicyLedger | None = None
        #: In a partition: (head when read, [(position, policy version)]) from the log.
        self._marks: tuple[int, list[tuple[int, int]]] | None = None

    @classmethod
    def topics(cls) -> frozenset[str]:
        return frozenset(topic(e) for e in _event_classes())

    def bind(self, recorder: Any, mapper: Any) -> None:
        """The runner's event store: recipients missing from the cache are read from it."""
        self.recorder, self.mapper = recorder, mapper

    def _load(self, originator: uuid.UUID, version: int) -> Any:
        agg = None
        if version <= 0:
            return None
        for stored in self.recorder.select_events(originator, lte=version):
            agg = self.mapper.to_domain_event(stored).mutate(agg)
        return agg

    def _recipient(self, rid: str, version: int) -> Recipient | None:
        agg = self._cache.get(rid)
        if agg is not None and agg.version < version:
            # Behind (another process of a service applied the last events): only what follows.
            # The cached aggregate is this instance's own, so it is brought forward in place.
            for stored in self.recorder.select_events(uuid.UUID(rid), gt=agg.version, lte=version):
                agg = self.mapper.to_domain_event(stored).mutate(agg)
        if agg is None or agg.version != version:
            agg = self._load(uuid.UUID(rid), version)
        return agg

    def _remember(self, rid: str, agg: Recipient) -> None:
        self._cache[rid] = agg
        self._cache.move_to_end(rid)
        while len(self._cache) > self.CACHE:
            gone, _ = self._cache.popitem(last=False)
            self._memos.pop(gone, None)

    def _policy_version_at(self, conn: Connection, position: int) -> int | None:
        if self.part is None:
            return conn.execute(
                select(func.max(recorded.c.originator_version)).where(recorded.c.kind == "policy", recorded.c.position <= position)
            ).scalar()
        # A partition does not wait for the partition that records the policy's rows: it reads
        # the policy's positions from the log itself (a handful of notifications, read once).
        if self._marks is None or position > self._marks[0]:
            head = int(self.recorder.max_notification_id() or 0)
            policy_topics = sorted(t for t in self.topics() if t.startswith(POLICY_TOPIC))
            found = self.recorder.select_notifications(1, 1_000_000, stop=head, topics=policy_topics)
            self._marks = (head, [(int(n.id), int(n.originator_version)) for n in found])
        versions = [v for at, v in self._marks[1] if at <= position]
        return max(versions) if versions else None

    def _policy_at(self, conn: Connection, position: int) -> PolicyLedger | None:
        version = self._policy_version_at(conn, position)
        if not version:
            return None
        if self._policy is None or self._policy.version != version:
            # kept for the next page (a follower catches up a few events at a time)
            self._policy = self._load(PolicyLedger.ID, int(version))
        return self._policy

    def _owed(self, conn: Connection) -> dict[str, dict[str, Any]]:
        """The cuts earlier pages left owed (this instance's recipients), taken off the table:
        pending again, from the recipient at the version of its last event."""
        rows = [r for r in conn.execute(select(owed)).mappings() if self.owns(r["recipient"])]
        if not rows:
            return {}
        pending: dict[str, dict[str, Any]] = {}
        for r in rows:
            agg = self._recipient(r["recipient"], int(r["recipient_version"]))
            if agg is None:  # pragma: no cover - a recipient's own events made the row
                raise RuntimeError(f"cuts: recipient {r['recipient']} v{r['recipient_version']} is not in the store")
            self._remember(r["recipient"], agg)
            pending[r["recipient"]] = {"position": int(r["position"]), "at": datetime.fromisoformat(r["recorded_at"]), "agg": agg}
        for part in chunks(sorted(pending)):
            conn.execute(owed.delete().where(owed.c.recipient.in_(list(part))))
        return pending

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        pending: dict[str, dict[str, Any]] = self._owed(conn)
        if not items and not pending:
            return
        if self.recorder is None:
            raise RuntimeError("the cuts view needs the event store: Runner binds it (Cuts.bind)")
        insert_rows(
            conn,
            recorded,
            [
                {
                    "position": p, "originator_id": str(e.originator_id), "originator_version": int(e.originator_version),
                    "topic": topic(type(e)), "kind": _kind(topic(type(e))),
                    "recorded_us": micros(e.timestamp), "recorded_at": e.timestamp.isoformat(),
                }
                for p, e in items
                if self.owns(e.originator_id)  # in a partition: the policy's rows by one partition only
            ],
        )
        # The policy in force before the page (owed cuts were left after the last policy event).
        policy = self._policy_at(conn, items[0][0] - 1 if items else max(p["position"] for p in pending.values()))
        out: dict[tuple[str, str], dict[str, Any]] = {}

        def cut(rid: str, agg: Recipient, position: int, moment: datetime) -> None:
            book = policy.book if policy is not None else None
            if book is None:
                from ledger.policy.params import PolicyBook

                book = PolicyBook()
            schemes = policy_packs.JURISDICTIONS.get(policy.jurisdiction, ()) if policy is not None else ()
            state = summarise(agg, book, tuple(schemes), moment, self._memos)
            out[(rid, period_of(moment))] = {
                "recipient": rid, "period": period_of(moment), "position": position, "recorded_us": micros(moment),
                "recipient_version": agg.version, "policy_version": policy.version if policy is not None else 0,
                "street": state["street"], "state": dumps(state),
            }

        def finish(rid: str) -> None:
            p = pending.pop(rid, None)
            if p is not None:
                cut(rid, p["agg"], p["position"], p["at"])

        for position, e in items:
            t = topic(type(e))
            if t.startswith(RECIPIENT_TOPIC):
                rid = str(e.originator_id)
                if rid in pending and period_of(pending[rid]["at"]) != period_of(e.timestamp):
                    finish(rid)
                agg = e.mutate(self._recipient(rid, int(e.originator_version) - 1))
                self._remember(rid, agg)
                pending[rid] = {"position": position, "at": e.timestamp, "agg": agg}
            elif t.startswith(POLICY_TOPIC):
                for rid in list(pending):
                    finish(rid)
                policy = e.mutate(policy if policy is not None and policy.version == int(e.originator_version) - 1 else self._load(PolicyLedger.ID, int(e.originator_version) - 1))
                self._policy = policy
                self._recut_all(conn, out, pending, position, e.timestamp)
        if self.last_page:
            for rid in list(pending):
                finish(rid)
        elif pending:
            # More pages follow: a recipient's period may go on there, its cut is owed till then.
            insert_rows(
                conn,
                owed,
                [
                    {"recipient": rid, "position": p["position"], "recipient_version": p["agg"].version, "recorded_at": p["at"].isoformat()}
                    for rid, p in sorted(pending.items())
                ],
            )
        self._write(conn, out)

    def _recut_all(self, conn: Connection, out: dict[tuple[str, str], dict[str, Any]], pending: dict[str, dict[str, Any]], position: int, moment: datetime) -> None:
        """A policy event: every recipient known so far gets a cut under the new book, taken at the
        policy event as at any recipient's own last event of a period: pending, so that a later
        event of the recipient in the same period takes the period's cut instead (one assessment
        pass, not two)."""
        versions: dict[str, int] = {}
        q = select(cut_table.c.recipient, func.max(cut_table.c.recipient_version)).group_by(cut_table.c.recipient)
        for rid, v in conn.execute(q):
            if self.owns(rid):  # in a partition: its own recipients only
                versions[rid] = int(v)
        for (rid, _), row in out.items():
            versions[rid] = max(versions.get(rid, 0), int(row["recipient_version"]))
        for rid in sorted(versions):
            agg = self._recipient(rid, versions[rid])
            if agg is None:
                continue
            self._remember(rid, agg)
            pending[rid] = {"position": position, "at": moment, "agg": agg}

    def _write(self, conn: Connection, out: dict[tuple[str, str], dict[str, Any]]) -> None:
        """Replace the page's cuts and keep each recipient's chain of ``next_period`` pointers."""
        if not out:
            return
        first: dict[str, str] = {}
        for rid, period in out:
            first[rid] = min(period, first.get(rid, period))
        # The rows whose pointer may change: those pointing at or past the page's first period.
        existing: dict[tuple[str, str], str] = {}
        for part in chunks(sorted(first)):
            q = select(cut_table.c.recipient, cut_table.c.period, cut_table.c.next_period).where(
                cut_table.c.recipient.in_(list(part)), cut_table.c.next_period >= min(first[r] for r in part)
            )
            for rid, period, nxt in conn.execute(q):
                if nxt >= first[rid]:
                    existing[(rid, period)] = nxt
        periods: dict[str, set[str]] = {}
        for rid, period in list(existing) + list(out):
            periods.setdefault(rid, set()).add(period)
        moved: list[dict[str, Any]] = []
        for rid, ms in periods.items():
            chain = sorted(ms)
            for period, nxt in zip(chain, chain[1:] + [LATEST]):
                if (rid, period) in out:
                    out[(rid, period)]["next_period"] = nxt
                elif existing[(rid, period)] != nxt:
                    moved.append({"k_r": rid, "k_m": period, "v_n": nxt})
        keys = list(out)
        for part in chunks(keys):
            conn.execute(cut_table.delete().where(tuple_(cut_table.c.recipient, cut_table.c.period).in_(list(part))))
        insert_rows(conn, cut_table, [out[k] for k in keys])
        if moved:
            from sqlalchemy import bindparam

            conn.execute(
                cut_table.update()
                .where(cut_table.c.recipient == bindparam("k_r"), cut_table.c.period == bindparam("k_m"))
                .values(next_period=bindparam("v_n")),
                moved,
            )


# --------------------------------------------------------------------------- reading at T


@dataclass
class Known:
    """What the log held at T, from the side table and the cuts."""

    known_at: datetime | None
    position: int = 0
    last_recorded_at: datetime | None = None
    policy_version: int = 0
    #: recipient → (version at T, the latest cut at or before T or None)
    recipients: dict[str, tuple[int, dict[str, Any] | None]] = field(default_factory=dict)

    @property
    def resolved_known_at(self) -> datetime | None:
        moment = self.known_at if self.known_at is not None else self.last_recorded_at
        return moment.astimezone(CST) if moment is not None else None  # shown to people: +08:00


def known_at(conn: Connection, t: datetime | None) -> Known:
    """Range reads only: the store position and last recorded time at T, the policy version, and
    for each recipient enrolled by T its version and its latest cut (without its state)."""
    out = Known(known_at=t)
    t_us = micros(t) if t is not None else FOREVER
    last = conn.execute(
        select(recorded.c.position, recorded.c.recorded_at)
        .where(recorded.c.recorded_us <= t_us)
        .order_by(recorded.c.recorded_us.desc(), recorded.c.position.asc())
        .limit(1)
    ).first()
    if last is None:
        return out
    out.last_recorded_at = datetime.fromisoformat(last.recorded_at)
    out.position = int(
        conn.execute(select(func.max(recorded.c.position)).where(recorded.c.position >= last.position, recorded.c.recorded_us <= t_us)).scalar()
    )
    out.policy_version = int(
        conn.execute(select(func.max(recorded.c.originator_version)).where(recorded.c.kind == "policy", recorded.c.recorded_us <= t_us)).scalar() or 0
    )
    # The latest cut at or before T: T's period's own cut if taken by T, else the last cut of an
    # earlier period (the one whose next cut is in T's period or later, or that is the latest).
    m_t = period_of(t) if t is not None else LATEST
    current = select(
        cut_table.c.recipient, cut_table.c.period, cut_table.c.recorded_us, cut_table.c.recipient_version,
        cut_table.c.policy_version, cut_table.c.street,
    ).where(
        ((cut_table.c.next_period >= m_t) & (cut_table.c.period < m_t))
        | ((cut_table.c.period == m_t) & (cut_table.c.recorded_us <= t_us))
    )
    for row in conn.execute(current).mappings():
        have = out.recipients.get(row["recipient"])
        if have is None or have[1]["period"] < row["period"]:
            out.recipients[row["recipient"]] = (int(row["recipient_version"]), dict(row))
    if t is None:
        return out  # the view is at the head: every recipient event has its cut
    # Events after a recipient's latest cut and by T all fall in T's period (a later period's cut
    # would otherwise be at or before T): one range read finds them, and recipients new in it.
    since = datetime.combine(_period_start(m_t), datetime.min.time(), tzinfo=CST)
    late = select(recorded.c.originator_id, func.max(recorded.c.originator_version)).where(
        recorded.c.kind == "recipient", recorded.c.recorded_us >= micros(since), recorded.c.recorded_us <= t_us
    )
    for rid, version in conn.execute(late.group_by(recorded.c.originator_id)):
        have = out.recipients.get(rid)
        out.recipients[rid] = (max(int(version), have[0] if have else 0), have[1] if have else None)
    return out


def _period_start(period: str) -> date:
    """The first day of a cut period as :func:`period_of` names it (a day, ``YYYY-MM-DD``; a
    month, ``YYYY-MM``, as view version 2 named it)."""
    return date.fromisoformat(f"{period}-01" if len(period) == 7 else period)


def states(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """recipient → parsed cut state, for (recipient, period) keys."""
    found: dict[str, dict[str, Any]] = {}
    for part in chunks(list(keys)):
        q = select(cut_table.c.recipient, cut_table.c.state).where(
            tuple_(cut_table.c.recipient, cut_table.c.period).in_(list(part))
        )
        for rid, state in conn.execute(q):
            found[rid] = loads(state)
    return found


def catch_up(engine: Engine, recorder: Any, mapper: Any, batch_size: int = 1000) -> int:
    """Bring the recorded-time table and the cuts to the log's head; returns the position reached.
    Raises if the view is stopped at an event it could not apply (``ledger projections status``)."""
    from projections.runner import Runner

    runner = Runner(engine, recorder, mapper, [Cuts()], batch_size=batch_size)
    runner.setup()
    head = runner.head()
    runner.catch_up()
    reached = runner.positions()["cuts"]
    if reached < head:
        raise RuntimeError(f"the cuts view stopped at position {reached} of {head}: see `ledger projections status`")
    return reached


def iter_chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    yield from chunks(values, size)
