"""Replay: re-decide a stored decision and compare, to the fen and the explanation (R-TIME-1).

R-TIME-1 [RULES.md §1]: a decision uses the policy in force on the service date as it was known
when the decision was made; replaying it later with the same knowledge must give the same amount
to the fen, with the same explanation. Each ``AidDecided`` event records that knowledge
(``recipient_version``: the Recipient before the decision; ``policy_version``: the PolicyLedger it
read). Replay loads exactly those versions and reruns :func:`ledger.engine.assess` the way the
command handler did (``LedgerApp._assess``): the decided refs of that state plus the decision's own
expenses, decided at the event's recorded time, with the decision sequence number the event got
and their positions in its list. ``AidReassessed`` events (R-TIME-2, R-CLR-2) replay the same way,
with no new expenses.

With ``known_at=T`` the same decision is re-decided with the facts and policy recorded up to T
instead (the aggregates at their last versions recorded by T, and ``assess(known_at=T)``): before
a late insurance settlement it reproduces the decision, after it the difference shows.

Nothing is recorded: replay only reads the store.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator

from commands.app import LedgerApp, recipient_of
from commands.timeline import project
from ledger import engine, errors
from ledger.aggregates import PolicyLedger, Recipient
from ledger.facts import DecisionRef
from ledger.policy.params import PolicyBook
from ledger.values import CST
from projections.common import WorkerOpened

#: The parts of a decision that are money or its outcome (compared first, reported as such).
AMOUNT_KEYS = ("granted", "code", "category", "self_pay", "total", "by_scheme", "by_fund")


@dataclass
class ReplayResult:
    """One stored decision (or reassessment) of one expense, and the same decision re-made."""

    equal: bool
    stored: dict[str, Any] | None
    replayed: dict[str, Any] | None
    differences: list[dict[str, Any]]
    recipient_id: str = ""
    expense_id: str = ""
    kind: str = "decision"  # "decision" (AidDecided) | "reassessment" (AidReassessed)
    event_version: int = 0
    recorded_at: str = ""
    knowledge: dict[str, Any] = field(default_factory=dict)  # as the event recorded it
    replayed_with: dict[str, Any] = field(default_factory=dict)  # what this replay used

    @property
    def amounts_equal(self) -> bool:
        return not any(d["amount"] for d in self.differences)

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient_id,
            "expense": self.expense_id,
            "kind": self.kind,
            "event_version": self.event_version,
            "recorded_at": self.recorded_at,
            "equal": self.equal,
            "knowledge": {k: v for k, v in self.knowledge.items() if k != "parameters"},
            "replayed_with": self.replayed_with,
            "differences": self.differences,
            "stored": self.stored,
            "replayed": self.replayed,
        }


@dataclass
class Audit:
    """``replay --all``: every decision and reassessment in the store re-made."""

    recipients: int = 0
    decisions: int = 0
    reassessments: int = 0
    expenses: int = 0  # (record, expense) pairs compared
    different: list[ReplayResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.different

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipients": self.recipients,
            "decisions": self.decisions,
            "reassessments": self.reassessments,
            "compared": self.expenses,
            "differences": len(self.different),
            "different": [r.as_dict() for r in self.different],
        }


# --------------------------------------------------------------------------- comparing


def _normal(value: Any) -> Any:
    """The JSON form both sides are compared in (the stored side went through the store's JSON)."""
    return json.loads(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))


def _diff(path: str, a: Any, b: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff(f"{path}.{k}" if path else str(k), a.get(k), b.get(k), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(f"{path}[{i}]", x, y, out)
    elif a != b:
        top = path.split(".", 1)[0].split("[", 1)[0]
        out.append({"path": path, "stored": a, "replayed": b, "amount": top in AMOUNT_KEYS})


def compare(stored: dict[str, Any] | None, replayed: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every difference between two decision summaries: amounts (to the fen) and the explanation.
    Amount differences come first."""
    out: list[dict[str, Any]] = []
    _diff("", _normal(stored), _normal(replayed), out)
    return sorted(out, key=lambda d: not d["amount"])


# --------------------------------------------------------------------------- one record


class _Context:
    """Caches what many replays share: policy ledgers by version and by known-at time."""

    def __init__(self, app: LedgerApp):
        self.app = app
        self._by_version: dict[int, PolicyBook] = {}
        self._at: dict[datetime, tuple[int | None, PolicyBook]] = {}

    def book_at_version(self, version: int) -> PolicyBook:
        if version not in self._by_version:
            self._by_version[version] = self.app.policy(version=version).book
        return self._by_version[version]

    def policy_at(self, known_at: datetime) -> tuple[int | None, PolicyBook]:
        if known_at not in self._at:
            ledger: PolicyLedger | None = project(self.app.events.get(PolicyLedger.ID), known_at)
            self._at[known_at] = (ledger.version, ledger.book) if ledger is not None else (None, PolicyBook())
        return self._at[known_at]


def _replay_record(
    ctx: _Context,
    event: Any,
    before: Recipient,
    base: Recipient,
    source: Recipient | None,
    known_at: datetime | None,
    only: str | None = None,
) -> list[ReplayResult]:
    """Re-make one recorded decision or reassessment.

    ``before`` is the Recipient just before the event (for the decision sequence number the event
    got), ``base`` the Recipient at the recorded ``recipient_version`` (whose decided refs the
    decision saw), ``source`` the Recipient whose facts the replay uses (``base`` itself, or the
    Recipient as known at T).
    """
    knowledge = dict(event.knowledge)
    if isinstance(event, Recipient.AidDecided):
        kind = "decision"
        seq = before.decision_seq + 1
        refs = base.decided_refs() + [
            DecisionRef(s["expense"], event.channel, event.claim_id, event.timestamp, seq, pos)
            for pos, s in enumerate(event.decisions)
        ]
        stored = {s["expense"]: s for s in event.decisions}
    else:
        kind = "reassessment"
        refs = base.decided_refs()
        stored = {item["expense"]: item["due"] for item in event.results}
    if known_at is None:
        policy_version: int | None = int(knowledge["policy_version"])
        book = ctx.book_at_version(policy_version)
        used = {"recipient_version": base.version, "policy_version": policy_version, "known_at": None}
    else:
        policy_version, book = ctx.policy_at(known_at)
        used = {
            "recipient_version": source.version if source is not None else None,
            "policy_version": policy_version,
            "known_at": known_at.astimezone(CST).isoformat(),
        }
    result: engine.PassResult | None = None
    if source is not None:
        facts = source.expense_facts()
        refs = [d for d in refs if d.expense_id in facts]
        if refs:
            k = source.knowledge()
            city = knowledge.get("city")
            if kind == "decision" and city and "caps" in city:  # R-CAP-4: what the decision read (ADR 0020)
                k = k.with_city({s["expense"]: city for s in event.decisions})
            result = engine.assess(k, facts, refs, book, ctx.app.schemes, known_at=known_at)
    out = []
    for eid, summary in stored.items():
        if only is not None and eid != only:
            continue
        a = result.assessments.get(eid) if result is not None else None
        replayed = a.summary() if a is not None else None
        differences = compare(summary, replayed)
        if replayed is None:
            differences = [{"path": "expense", "stored": eid, "replayed": "not recorded by the known-at time", "amount": True}]
        elif known_at is None and result is not None and result.policy_version != knowledge.get("policy_hash"):
            differences.append(
                {"path": "knowledge.policy_hash", "stored": knowledge.get("policy_hash"), "replayed": result.policy_version, "amount": False}
            )
        out.append(
            ReplayResult(
                equal=not differences,
                stored=summary,
                replayed=replayed,
                differences=differences,
                recipient_id=str(base.id),
                expense_id=eid,
                kind=kind,
                event_version=event.originator_version,
                recorded_at=event.timestamp.isoformat(),
                knowledge=knowledge,
                replayed_with=used,
            )
        )
    return out


def _walk(
    ctx: _Context, recipient_id: uuid.UUID, known_at: datetime | None, wanted: Callable[[Any], bool] | None = None, only: str | None = None
) -> Iterator[tuple[Any, list[ReplayResult]]]:
    """Read the recipient's events once, rebuilding it as it goes; replay each decision and
    reassessment (those ``wanted`` says) against the state its event recorded."""
    events = list(ctx.app.events.get(recipient_id))
    source = project(events, known_at) if known_at is not None else None
    state: Recipient | None = None
    for event in events:
        if isinstance(event, (Recipient.AidDecided, Recipient.AidReassessed)) and (wanted is None or wanted(event)):
            assert state is not None
            version = int(event.knowledge["recipient_version"])
            if version == state.version:
                base = state
            else:  # the recorded knowledge names another version: load exactly that one
                base = project(e for e in events if e.originator_version <= version)
            yield event, _replay_record(ctx, event, state, base, base if known_at is None else source, known_at, only)
        state = event.mutate(state)


def _mentions(event: Any, expense_id: str) -> bool:
    if isinstance(event, Recipient.AidDecided):
        return any(s["expense"] == expense_id for s in event.decisions)
    return any(item["expense"] == expense_id for item in event.results)


# --------------------------------------------------------------------------- entry points


def replay_expense(
    app: LedgerApp, expense_id: str, known_at: datetime | None = None, *, reassessments: bool = True
) -> list[ReplayResult]:
    """The expense's decision (first) and, if asked, every reassessment of it, each re-made."""
    rid = recipient_of(expense_id)
    app.recipient(rid)  # UnknownEntity when there is no such recipient
    ctx = _Context(app)
    out: list[ReplayResult] = []
    for event, results in _walk(ctx, rid, known_at, lambda e: _mentions(e, expense_id), only=expense_id):
        if isinstance(event, Recipient.AidReassessed) and not reassessments:
            continue
        out.extend(results)
    if not any(r.kind == "decision" for r in out):
        raise errors.UnknownEntity(f"expense {expense_id!r} has no recorded decision to replay", field="expense")
    return out


def replay_decision(
    app: LedgerApp, recipient_id: uuid.UUID | str, expense_id: str, known_at: datetime | None = None
) -> ReplayResult:
    """R-TIME-1: the ``AidDecided`` that decided ``expense_id``, re-made with the knowledge it
    recorded (default) or with the facts and policy recorded up to ``known_at``."""
    if str(recipient_of(expense_id)) != str(recipient_id):
        raise errors.UnknownEntity(f"expense {expense_id!r} is not an expense of recipient {recipient_id}", field="expense")
    return replay_expense(app, expense_id, known_at, reassessments=False)[0]


#: From this many recipients ``replay --all`` uses one process per core by default: a spawned
#: worker costs ~1.5 s of start-up, a recipient ~14 ms (the district-year: 136 s in one process).
PARALLEL_FROM = 1_000
#: Recipients a worker process audits per task: small enough for progress and an even share,
#: large enough that sending the ids and a report back costs nothing beside the replays.
CHUNK = 250


def default_jobs(recipients: int) -> int:
    """Processes for auditing ``recipients``: one per core from ``PARALLEL_FROM`` on, else one."""
    import os

    return (os.cpu_count() or 1) if recipients >= PARALLEL_FROM else 1


def audit(
    app: LedgerApp,
    known_at: datetime | None = None,
    *,
    recipients: list[uuid.UUID] | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    source: Callable[[], Any] | None = None,
) -> Audit:
    """The determinism audit: every decision and reassessment in the store, re-made with its own
    recorded knowledge (or with the knowledge at ``known_at``); keeps those that differ.

    With ``jobs`` > 1 and ``source`` (a picklable zero-argument callable opening the same store
    read-only, as a projection rebuild's workers open it) the recipients are audited in ``jobs``
    worker processes, a share at a time (at most ``CHUNK`` recipients, at least four shares a
    process): a recipient's replays read only its own stream and the policy ledger, so the
    processes share nothing. The report is the same as in one process: counts summed, the
    differences in the order of ``recipients``. ``progress`` gets the recipients done as each
    share finishes."""
    rids = recipients if recipients is not None else list(app.recipient_ids())
    if jobs > 1 and source is not None and len(rids) > 1:
        return _audit_in_processes(source, known_at, rids, jobs, progress, int(app.recorder.max_notification_id() or 0))
    ctx = _Context(app)
    report = Audit()
    for rid in rids:
        report.recipients += 1
        for event, results in _walk(ctx, rid, known_at):
            if isinstance(event, Recipient.AidDecided):
                report.decisions += 1
            else:
                report.reassessments += 1
            report.expenses += len(results)
            report.different.extend(r for r in results if not r.equal)
        if progress is not None:
            progress(1)
    return report


def _audit_in_processes(
    source: Callable[[], Any], known_at: datetime | None, rids: list[uuid.UUID], jobs: int, progress: Callable[[int], None] | None,
    head: int,
) -> Audit:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    size = min(CHUNK, -(-len(rids) // (4 * jobs)))  # at least four tasks a process: an even share of a small store too
    parts = [rids[i : i + size] for i in range(0, len(rids), size)]
    # spawn: each worker opens its own connections (nothing inherited from this process's pools)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(parts)), mp_context=ctx) as pool:
        futures = {pool.submit(_audit_part, source, known_at, part, head): k for k, part in enumerate(parts)}
        reports: list[Audit | None] = [None] * len(parts)
        for f in as_completed(futures):
            k = futures[f]
            reports[k] = f.result()
            if progress is not None:
                progress(len(parts[k]))
    merged = Audit()
    for r in reports:
        assert r is not None
        merged.recipients += r.recipients
        merged.decisions += r.decisions
        merged.reassessments += r.reassessments
        merged.expenses += r.expenses
        merged.different.extend(r.different)
    return merged


#: In a worker process of ``audit(jobs=…)``: the store it opened, by ``repr(source)``.
_OPENED = WorkerOpened()


def _audit_part(source: Callable[[], Any], known_at: datetime | None, rids: list[uuid.UUID], head: int) -> Audit:
    app = _OPENED.get(repr(source), source)  # a worker opens the store once, whatever number of chunks it audits
    # A worker that opened another store (a wrong URL, a database in memory) would find none of
    # these recipients' events and report them clean: it must see at least the log the caller saw.
    seen = int(app.recorder.max_notification_id() or 0)
    if seen < head:
        raise RuntimeError(f"replay: a worker process opened a store whose log ends at {seen}, before the audited store's {head}: not the same store")
    return audit(app, known_at, recipients=rids)
