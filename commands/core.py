"""The ledger's write path, its core: one unit of work per command.

``LedgerCore`` is the eventsourcing Application under every command: it loads aggregates, keeps
recorded times strictly increasing, makes a ``command_id`` apply once, retries a lost race, and
saves everything one command touched in one transaction. It also holds the deciding machinery
that several capabilities share (assessing a recipient's expenses, recording a decision and its
suspensions, paying with offsets, reconciling after a retroactive change). The command handlers
themselves live in ``commands/handlers/``, one module per capability, and are registered in one
place (``commands.handlers.HANDLERS``); ``commands.app.LedgerApp`` puts the two together.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator as _Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import BaseAggregate, DomainEvent
from eventsourcing.persistence import IntegrityError, OperationalError
from eventsourcing.utils import get_topic

from commands import city as city_port
from commands import group as group_commit
from commands import models as m
from commands import queries
from commands.repository import COMPRESSOR_TOPIC, upgrade as upgrade_repository
from ledger import clearing, engine, errors, procedure
from ledger.aggregates import (
    Claim,
    ClaimBatch,
    CommandRecord,
    PolicyLedger,
    Receipt,
    Recipient,
    version_to_event,
)
from ledger.facts import DecisionRef, ExpenseFacts, city_read
from ledger.money import ZERO, fmt
from ledger.policy import packs as policy_packs
from ledger.policy.params import PolicyError
from ledger.values import CST, Channel, Scheme, Trigger, local_date, micros, receipt_identity, same_identity

_log = logging.getLogger("ledger.city")
#: The moment a shorthand (``aid``, the signed 免申即享 batch) records all of its commands at.
_ONE_MOMENT: ContextVar[datetime | None] = ContextVar("one_moment", default=None)

DEFAULT_OFFICERS = ("handler-default", "reviewer-default", "approver-default")
#: The scenario contract's ``pay`` without a payer: a fourth officer, distinct from the three.
DEFAULT_PAYER = "payer-default"


def default_payer(*signers: str | None) -> str:
    """The disbursing officer when a ``pay`` names none (SCENARIOS.md ``pay``: "a distinct default
    officer"): ``payer-default``, or ``payer-default-2``, ``-3``, … when a signer of the claim is
    already that person (compared as people type them, R-PH-4 [002 3.4, 3.5])."""
    taken = {same_identity(s) for s in signers if s}
    n = 1
    while True:
        candidate = DEFAULT_PAYER if n == 1 else f"{DEFAULT_PAYER}-{n}"
        if same_identity(candidate) not in taken:
            return candidate
        n += 1


@dataclass
class Result:
    """What a command did: ``accepted`` or ``rejected`` (a rule said no), with ids it created."""

    status: str = "accepted"
    code: str | None = None
    rule: str | None = None
    message: str | None = None
    ids: dict[str, Any] = field(default_factory=dict)
    field_name: str = ""  # the input field a rejection concerns (HTTP error bodies)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.status != "accepted":
            out.update({"code": self.code, "rule": self.rule, "message": self.message})
            if self.field_name:
                out["field"] = self.field_name
        if self.ids:
            out["ids"] = self.ids
        return out

    @classmethod
    def rejected(cls, exc: errors.LedgerError, **ids: Any) -> "Result":
        return cls("rejected", exc.code, exc.rule, exc.message, dict(ids), exc.field)


class WriteConflict(errors.LedgerError):
    """Other writers kept changing what this command needs (optimistic concurrency, ADR 0003) for
    longer than ``LedgerApp.conflict_seconds``: nothing of it was recorded and the same command can
    simply be sent again (HTTP 409 ``CONFLICT``, ``ledger do`` exit 3). Not a rule's answer."""

    code = "CONFLICT"
    retryable = True


def command_fingerprint(cmd: m.Command) -> str:
    """What a ``command_id`` is bound to: the command's type and fields, its id aside (SHA-256 of
    canonical JSON; fields left at their defaults are left out, so sending a default explicitly is
    the same command)."""
    body = cmd.model_dump(mode="json", exclude={"command_id"}, exclude_defaults=True)
    text = json.dumps([type(cmd).__name__, body], sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def retryable_write_error(exc: Exception) -> bool:
    """A write that certainly did not happen and may succeed if tried again: another writer saved
    the same aggregate version first (unique key), or the store was busy (SQLite lock, PostgreSQL
    serialisation failure or deadlock, no free connection)."""
    if isinstance(exc, IntegrityError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if isinstance(exc, TimeoutError):  # the pool had no connection to give: nothing was sent
        return True
    cause = exc.__cause__
    sqlstate = getattr(getattr(cause, "diag", None), "sqlstate", None) or getattr(cause, "sqlstate", None)
    if sqlstate in ("40001", "40P01", "55P03"):
        return True
    return type(cause).__module__ == "sqlite3" and any(w in str(cause).lower() for w in ("locked", "busy"))


def expense_ref(recipient_id: uuid.UUID | str, number: int) -> str:
    """Expense ids name their recipient: ``<recipient uuid>:<n>``."""
    return f"{recipient_id}:{number}"


def recipient_of(expense_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(expense_id.split(":", 1)[0])
    except ValueError:
        raise errors.UnknownEntity(f"expense {expense_id!r} is not an expense id", field="expense") from None


class LedgerCore(Application):
    name = "Ledger"
    #: command type -> handler ``(ledger, command) -> Result`` (``commands.handlers.HANDLERS``)
    handlers: dict[type, Callable[[Any, Any], "Result"]] = {}
    # A Recipient is snapshotted every 100 events (its state goes through ledger.snapshots, which
    # carries its dataclasses and tuple-keyed maps exactly), so loading one reads its latest
    # snapshot and fewer than 100 events. Measured (ADR 0017): a snapshot decodes in about the time
    # of the events it replaces (the state is mostly decision summaries), and taking one costs a
    # load and an encode, so the interval is the top of the 50-100 range. Bulk imports also use the
    # aggregate cache (infra.demo.demo_env).
    is_snapshotting_enabled = True
    #: Large stored states (decisions) zlib-compressed, small ones plain (commands.repository).
    env = {"COMPRESSOR_TOPIC": COMPRESSOR_TOPIC}
    snapshotting_intervals: dict = {Recipient: 100}

    def __init__(self, env: dict[str, str] | None = None, *, jurisdiction: str = "shanghai.changning", city: city_port.CityIndex | None = None):
        super().__init__(env)
        #: The city view, where this ledger is a district that reads it (commands.city, ADR 0020):
        #: a receipt aided in another district is a duplicate, the other districts' city-scheme
        #: usage counts against the annual cap (R-CAP-4). None: nothing is read (single ledger).
        self.city = city
        if jurisdiction not in policy_packs.JURISDICTIONS:
            raise errors.InvalidInput(f"unknown jurisdiction {jurisdiction!r}", field="jurisdiction")
        self.jurisdiction = jurisdiction
        self.schemes = policy_packs.JURISDICTIONS[jurisdiction]
        self._clock_lock = threading.Lock()
        self._last_at: datetime | None = None
        self._policy_cache: PolicyLedger | None = None
        self._policy_versions: dict[int, PolicyLedger] = {}  # policy(version=…): POLICY_VERSIONS_KEPT recorded versions
        #: Keyed hash of a resident id number (ADR 0015), installed by the wiring; unset, the
        #: recipient id is the plain uuid5 of the number.
        self.id_number_digest: Callable[[str], str] | None = None
        #: Called with the recordings after every save (the integrity chainer, ADR 0016).
        self.after_save: list[Callable[[list[Any]], None]] = []
        #: Aggregates a handler touched beside the ones it commits by name (the receipt index),
        #: saved in the same transaction by the next ``_commit`` of this thread.
        self._unit = threading.local()
        #: recipient id -> (what the recipient's decisions and reassessments stood at, the pass
        #: that matches them): the next pass resumes from it (``_pass``, ADR 0017).
        self._memos: dict[uuid.UUID, tuple[tuple, engine.PassMemo]] = _Memos()
        self._memos_lock = threading.Lock()
        # how many passes it keeps: the env may say more (an import's, infra.demo.demo_env)
        for bound in ("MEMOS_MAX", "MEMO_EXPENSES_MAX"):
            if self.env.get(f"PASS_{bound}"):
                setattr(self, bound, int(self.env.get(f"PASS_{bound}")))

    def construct_repository(self) -> Any:
        """The library's repository with a cheaper projector (commands.repository, ADR 0017),
        whose reads inside a command note what they read (``_read_set``, ADR 0021)."""
        repository = upgrade_repository(super().construct_repository(), self.snapshotting_intervals)
        repository.read_set = self._read_set
        return repository

    # ------------------------------------------------------------------ reads checked at the save (ADR 0021)
    def _read_set(self) -> "_Reads | None":
        """The reads of the command attempt running on this thread (``run``), or None: outside
        one, inside a group (whose reads are the library's, fast-forwarded), and once the
        attempt has saved something: a command part-recorded is never run again, so what it
        reads then is read from the store as it stands (fast-forwarded), as before ADR 0021."""
        if getattr(self._unit, "group", None) is not None:
            return None
        stack = getattr(self._unit, "reads", None)
        if not stack or stack[-1].saved:
            return None
        return stack[-1]

    def _saved(self, aggregates: list[Any]) -> None:
        """After a save: its aggregates are the latest (cached as such). The saving attempt's
        reads were proven current by its transaction; it, and any command it runs inside (a
        batch signature's reviews), is part-recorded now: never run again, it reads fresh."""
        self.repository.remember(aggregates)
        for reads in getattr(self._unit, "reads", None) or ():
            reads.clear()
            reads.saved = True

    def _forget(self, ids: Iterable[Any]) -> None:
        """What this process keeps of these aggregates is no longer the store's: the next command
        reads them afresh. Where the cache hands out copies, each cached aggregate is brought
        forward by the events after it (``LedgerRepository.refresh``); else it is dropped. The
        engine's last pass is kept as a pass only, either way (``group._evict``)."""
        ids = list(ids)
        refresh = getattr(self.repository, "refresh", None)
        if refresh is not None and refresh(ids):
            for key in ids:
                group_commit.unsettle_pass(self, key)
            return
        for key in ids:
            group_commit._evict(self, key)

    def _check_reads(self, reads: "_Reads") -> None:
        """A command attempt that answers without a save: what it read must still be current
        (ReadChanged, retried, when another writer changed it since)."""
        if not reads or reads.saved:
            return
        changed_since = getattr(self.recorder, "changed_since", None)
        if changed_since is None:
            return
        changed = changed_since(dict(reads))
        if changed:
            raise IntegrityError(f"aggregate(s) {', '.join(map(str, changed))} changed since the command read them")

    def _notify(self, recordings: list[Any]) -> None:
        for hook in self.after_save:
            hook(recordings)

    def recipient_id_for(self, id_number: str) -> uuid.UUID:
        """The Recipient id for a resident id number: one recipient per number, not guessable
        from the number when the wiring installed a keyed hash (ADR 0015)."""
        digest = self.id_number_digest
        return Recipient.id_for(id_number if digest is None else digest(id_number))

    # ------------------------------------------------------------------ plumbing
    def _now(self, at: datetime | None) -> datetime:
        """Recorded time: the command's ``at`` (or now), strictly after the last one recorded here,
        so that "known at T" cuts never split what one command recorded from the next."""
        # One clock for people: +08:00 (Asia/Shanghai), whatever offset the time was given in; the
        # instant is the same, and every time stored and shown reads in China Standard Time.
        shared = _ONE_MOMENT.get()
        if shared is not None:  # a shorthand's commands, recorded at its one moment
            return shared
        moment = (at or datetime.now(CST)).astimezone(CST)
        with self._clock_lock:
            if self._last_at is not None and moment <= self._last_at:
                moment = self._last_at + timedelta(microseconds=1)
            self._last_at = moment
        return moment

    @contextmanager
    def _one_moment(self, at: datetime | None) -> _Iterator[datetime]:
        """Every command run inside records at one moment, this block's (ADR 0006): ``aid`` is a
        claim, a review, an approval and a payment "all at ``at``" (SCENARIOS.md), so a cut as known
        at ``at`` holds all four or none."""
        moment = self._now(at)
        token = _ONE_MOMENT.set(moment)
        try:
            yield moment
        finally:
            _ONE_MOMENT.reset(token)

    def _command_record(self, cmd: m.Command, result: Result, at: datetime | None) -> CommandRecord:
        """The idempotency record: the command's type, its result and its fingerprint (kept with
        the result), so that a retry is answered with the first result and another command under
        the same id is refused."""
        return CommandRecord._create(  # noqa: SLF001
            CommandRecord.Recorded,
            id=CommandRecord.id_for(cmd.command_id),
            timestamp=at,
            command_id=cmd.command_id,
            command=type(cmd).__name__,
            result={**result.as_dict(), "fingerprint": self._fingerprint(cmd)},
        )

    def _fingerprint(self, cmd: m.Command) -> str:
        """``command_fingerprint``, keyed when the wiring installed a keyed hash (ADR 0015): a
        command's fields include personal data (an id number has few enough values to be guessed
        back from a plain hash), so the stored fingerprint is no easier to read than a recipient id."""
        plain = command_fingerprint(cmd)
        keyed = self.id_number_digest
        return plain if keyed is None else keyed(f"command:{plain}")

    def _commit(self, cmd: m.Command, result: Result, *aggregates: Any) -> Result:
        if cmd.command_id:
            aggregates = (*aggregates, self._command_record(cmd, result, self._last_at))
        companions = self._take_companions()
        self.save(*[a for a in aggregates if a is not None], *companions)
        if any(isinstance(a, PolicyLedger) for a in aggregates):
            self.forget_policy()
        return result

    def _save_collected(self, objs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The library's ``Application.save``, collecting the ledger's aggregates without its
        per-object ``runtime_checkable`` Protocol checks (``DomainEventProtocol``,
        ``CollectEventsProtocol``): on Python 3.11 each walks the protocol's attributes, about
        three per cent of an online command's CPU (issue 16). An ``Aggregate`` is never a domain
        event and always collects its events, so it is collected as the library would, and so is
        a ``DomainEvent`` given itself (a group's commit: appended); anything else goes through
        the library's own ``collect_events``. The rest is the library's: record, snapshots,
        ``_notify``."""
        processing_event: ProcessingEvent[Any] = ProcessingEvent()
        events, aggregates, others = processing_event.events, processing_event.aggregates, []
        for obj in objs:
            if isinstance(obj, BaseAggregate):
                events.extend(obj.collect_events())
                aggregates[obj.id] = obj
            elif obj is not None:
                others.append(obj)
        for obj in others:  # in order, as the library collects them
            if isinstance(obj, DomainEvent):  # an event given itself (a group's commit, commands.group)
                events.append(obj)
            else:
                processing_event.collect_events(obj)
        processing_event.collect_events(**kwargs)
        recordings = self._record(processing_event)
        self._snapshot_saved(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # the library's deprecated hook, as its save calls it
        return recordings

    def _snapshot_saved(self, processing_event: ProcessingEvent[Any]) -> None:
        """The library's rule for when (an aggregate whose event just recorded lands on a multiple
        of its ``snapshotting_intervals``), but the snapshot is taken of the object that was saved,
        at its version after the save, not read back from the store: the library's
        ``take_snapshot`` rebuilds the aggregate from its previous snapshot and up to an interval
        of events first (for a recipient with 500 expenses, the decoding of a 500-expense state)
        inside the command. The saved object is the recorded state at its version: the store
        accepted exactly its events, and nothing but an apply changes an aggregate's state (ADR
        0021). Events saved without their aggregate (a group's commit) are left as the library
        leaves them. Public extension points only: ``Snapshot.take`` and ``snapshots.put``."""
        if not (self.snapshots and self.snapshotting_intervals):
            return
        due: dict[Any, Any] = {}
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate)) if aggregate is not None else None
            if interval and event.originator_version % interval == 0:
                due[aggregate.id] = aggregate
        for aggregate in due.values():
            snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
            self.snapshots.put([snapshot_class.take(aggregate)])

    # ------------------------------------------------------------------ group commit (batch sources)
    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """The library's ``save``; inside a group (``commands.group``) the aggregates are held
        and saved with the group's other commands, in one transaction, when it commits.

        Inside a command attempt (``run``), what the attempt read and does not save goes with
        the save as ``unchanged`` (id -> version read): its transaction checks them under the
        writers' lock, as the store's key checks the saved ones (ADR 0021)."""
        grouped = getattr(self._unit, "group", None)
        if grouped is not None and not kwargs:
            return grouped.hold(objs)
        aggregates = [o for o in objs if o is not None and hasattr(o, "collect_events")]
        reads = self._read_set()
        if reads and "unchanged" not in kwargs:
            saving = {a.id for a in aggregates}
            unchanged = {k: v for k, v in reads.items() if k not in saving}
            if unchanged:
                kwargs["unchanged"] = unchanged
        try:
            recordings = self._save_collected(objs, kwargs)
        except (IntegrityError, OperationalError):
            # Read again from the store: what this save wrote or checked (the next save of the
            # same attempt, if it retries on its own, notes the versions it reads then).
            suspect = [a.id for a in aggregates] + list(kwargs.get("unchanged") or ())
            self._forget(suspect)
            if reads:
                for key in suspect:
                    reads.pop(key, None)
            raise
        self._saved(aggregates)
        return recordings

    def group(self, size: int = group_commit.DEFAULT_SIZE) -> Any:
        """``with app.group() as g:`` — the commands this thread runs join one group, saved
        ``size`` commands per transaction, each with its own savepoint and idempotency record
        (``commands.group``). Batch sources only: the online path is one command per transaction."""
        return group_commit.open_group(self, size)

    def run_many(self, cmds: Iterable[m.Command], size: int = group_commit.DEFAULT_SIZE) -> list[Any]:
        """Run ``cmds`` with group commit; each command's ``Result``, or the exception it raised, in order."""
        return group_commit.run_many(self, cmds, size)

    def _also_save(self, aggregate: Any) -> None:
        """Save ``aggregate`` with the command's own aggregates, in one transaction."""
        pending = getattr(self._unit, "companions", None)
        if pending is None:
            pending = self._unit.companions = {}
        pending[aggregate.id] = aggregate

    def _take_companions(self) -> list[Any]:
        pending = getattr(self._unit, "companions", None) or {}
        self._unit.companions = {}
        return list(pending.values())

    def receipt(self, key: tuple[str, str], *, saving: bool = False) -> Receipt | None:
        """The ledger-wide record of one receipt (R-CLR-1(b)), or None if never recorded since the
        index exists. A companion touched by the command in progress is returned as it stands.

        ``saving``: the caller saves the receipt it gets in this command's transaction (opening
        it when None). A receipt this process does not hold is then taken as new without a read
        (ADR 0021): if it exists after all, the store's unique key refuses the save and the
        command runs again, reading it. A receipt found missing earlier in the same attempt is
        not looked up again (its absence is checked at the save)."""
        rid = Receipt.id_for(key)
        pending = getattr(self._unit, "companions", None) or {}
        if rid in pending:
            return pending[rid]
        reads = self._read_set()
        if reads is not None:
            if reads.get(rid, -1) == 0:
                return None
            cache = self.repository.cache
            held = cache is not None and rid in getattr(cache, "cache", {})
            if saving and not reads.retry and not held:
                return None
        self.repository.hint_unsnapshotted(rid)  # a Receipt is never snapshotted: one query
        try:
            return self.repository.get(rid)
        except AggregateNotFoundError:
            return None

    def receipt_aided_as(self, r: Recipient, facts: ExpenseFacts) -> str | None:
        """R-PH-7 [002 4.5], R-CLR-1(b): the expense (of this or any recipient) that already got aid
        on this expense's receipt, if any: a receipt is paid once in the whole ledger."""
        own = r.receipt_aided_by(facts)
        if own is not None:
            return own
        rc = self.receipt(facts.receipt_key)
        return rc.aided_as if rc is not None else None

    def _replayed(self, cmd: m.Command) -> Result | None:
        """The first result recorded under ``cmd.command_id``, if any; a different command under
        the same id is refused (IDEMPOTENCY_MISMATCH), whatever the adapter it came through."""
        if not cmd.command_id:
            return None
        key = CommandRecord.id_for(cmd.command_id)
        self.repository.hint_unsnapshotted(key)  # never snapshotted: one query, not two (ADR 0021)
        try:
            record = self.repository.get(key)
        except AggregateNotFoundError:
            return None
        r = record.result
        stored = r.get("fingerprint")  # absent from records made before fingerprints were kept
        if record.command != type(cmd).__name__ or (stored is not None and stored != self._fingerprint(cmd)):
            what = record.command if record.command != type(cmd).__name__ else f"another {record.command} (different fields)"
            raise errors.InvalidInput(
                f"command_id {cmd.command_id!r} was already used for {what}: a retry must repeat the first "
                "command exactly; a new command needs a new command_id",
                code="IDEMPOTENCY_MISMATCH",
                rule="command_id: one id, one command (a retry repeats it exactly)",
                field="command_id",
            )
        return Result(r["status"], r.get("code"), r.get("rule"), r.get("message"), r.get("ids", {}), r.get("field", ""))

    #: How long ``run`` keeps retrying a command that lost an optimistic-concurrency race before it
    #: answers ``WriteConflict`` (a time, not a count: under contention each writer gets its turn).
    conflict_seconds: float = 30.0

    def run(self, cmd: m.Command) -> Result:
        """Dispatch a command to its handler; idempotent under ``command_id`` (a retry of the same
        command gets the first result, accepted or rejected; another command under the same id is
        refused); retried with jittered back-off while concurrent writes to the same aggregates
        win the race (optimistic concurrency), for up to ``conflict_seconds``, then WriteConflict.
        Inside a group (``group``/``run_many``, batch sources) the command joins it instead."""
        grouped = getattr(self._unit, "group", None)
        if grouped is not None:
            return grouped.run(cmd)
        replay = self._replayed(cmd)
        if replay is not None:
            return replay
        handler = self.handlers.get(type(cmd))
        if handler is None:
            raise errors.InvalidInput(f"no handler for {type(cmd).__name__}", field="command")
        deadline = time.monotonic() + self.conflict_seconds
        stack = getattr(self._unit, "reads", None)
        if stack is None:
            stack = self._unit.reads = []
        for attempt in itertools.count():
            self._take_companions()  # nothing left over from an attempt that did not commit
            reads = _Reads(retry=attempt > 0)
            stack.append(reads)
            try:
                try:
                    try:
                        result = handler(self, cmd)
                    except errors.Rejected as exc:
                        result = self._rejected(cmd, Result.rejected(exc))
                    except (IntegrityError, OperationalError):
                        raise
                    except Exception:
                        # refused, or failed, on what it read: was that current? (if not: again)
                        self._check_reads(reads)
                        raise
                    self._check_reads(reads)
                    return result
                finally:
                    stack.pop()
            except (IntegrityError, OperationalError) as exc:
                if not retryable_write_error(exc):
                    raise
                self._forget(reads.seen)
                self.forget_policy()
                replay = self._replayed(cmd)
                if replay is not None:
                    return replay
                # Full jitter: a random wait up to a doubling ceiling, so racing writers spread out.
                pause = random.uniform(0, min(0.5, 0.005 * 2**attempt))
                if time.monotonic() + pause > deadline:
                    raise WriteConflict(
                        f"other writers kept changing the same records for {self.conflict_seconds:g}s "
                        f"({attempt + 1} attempts); nothing was recorded: send the command again",
                        field="",
                    ) from exc
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _rejected(self, cmd: m.Command, result: Result) -> Result:
        """A rule's refusal raised by a handler: kept under ``command_id`` (alone: what the handler
        had touched is dropped) so that a retry gets the same answer and the id stays bound to
        this command."""
        self._take_companions()
        if cmd.command_id:
            self.save(self._command_record(cmd, result, self._now(cmd.at)))
        return result

    def _load(self, kind: str, aggregate_id: uuid.UUID | str, version: int | None = None) -> Any:
        """The aggregate with this id, or UnknownEntity naming the ``kind`` (also its field)."""
        try:
            key = aggregate_id if isinstance(aggregate_id, uuid.UUID) else uuid.UUID(str(aggregate_id))
            return self.repository.get(key, version=version)
        except (AggregateNotFoundError, ValueError):
            raise errors.UnknownEntity(f"unknown {kind} '{aggregate_id}'", field=kind) from None

    def recipient(self, recipient_id: uuid.UUID | str, version: int | None = None) -> Recipient:
        return self._load("recipient", recipient_id, version)

    def claim(self, claim_id: uuid.UUID | str) -> Claim:
        return self._load("claim", claim_id)

    #: Recorded versions of the policy ledger ``policy(version=…)`` keeps (explain and replay ask
    #: the few a district's decisions were made under, again and again).
    POLICY_VERSIONS_KEPT = 8

    def forget_policy(self) -> None:
        """Read the policy ledger from the store next time: after a save that may have changed it,
        or an attempt that lost a race (what it read may be another writer's by now)."""
        self._policy_cache = None
        self._policy_versions.clear()

    def policy(self, version: int | None = None) -> PolicyLedger:
        if version is not None:
            # a version of the policy ledger never changes once recorded: kept, a few of them
            kept = self._policy_versions.get(version)
            if kept is None:
                kept = self.repository.get(PolicyLedger.ID, version=version)
                if len(self._policy_versions) >= self.POLICY_VERSIONS_KEPT:
                    self._policy_versions.pop(next(iter(self._policy_versions)), None)
                self._policy_versions[version] = kept
            return kept
        if self._policy_cache is None:
            try:
                self._policy_cache = self.repository.get(PolicyLedger.ID)
            except AggregateNotFoundError:
                raise errors.InvalidInput("no policy loaded: publish the policy packs first", field="policy") from None
        return self._policy_cache

    def _expense(self, r: Recipient, expense_id: str) -> Any:
        acc = r.expenses.get(expense_id)
        if acc is None:
            raise errors.UnknownEntity(f"expense {expense_id!r} is not an expense of this recipient", field="expenses")
        return acc

    @staticmethod
    def expense_of(r: Recipient, ref: str) -> str:
        """The id of the recipient's expense named by ``ref``: its id, or the handle it was recorded
        with (ADR 0019: every command takes handles), compared as people type it (NFKC, case
        folding, trimming). Unknown or shared by two of the recipient's expenses: refused."""
        if ref in r.expenses:
            return ref
        found = r.expenses_named(ref)
        if len(found) == 1:
            return found[0]
        if found:
            raise errors.InvalidInput(f"expenses: {ref!r} names {len(found)} expenses of this recipient; give the expense id",
                                      code="AMBIGUOUS", field="expenses", rule="ADR 0019")
        raise errors.UnknownEntity(f"expense {ref!r} is not an expense of this recipient", field="expenses")

    # ------------------------------------------------------------------ policy
    def publish_packs(self, packs: Iterable[policy_packs.Pack], at: datetime | None = None) -> Result:
        """Publish policy packs as events; refused whole (POLICY_FLOOR) if any breaks its floor."""
        moment = self._now(at)
        try:
            ledger = self.repository.get(PolicyLedger.ID)
        except AggregateNotFoundError:
            ledger = PolicyLedger._create(  # noqa: SLF001
                PolicyLedger.Opened, id=PolicyLedger.ID, timestamp=moment, jurisdiction=self.jurisdiction
            )
        packs = list(packs)
        candidate = [v for p in packs for v in p.versions]
        try:
            policy_packs.validate(ledger.book, candidate)
        except PolicyError as exc:
            return Result("rejected", exc.code, exc.rule, str(exc))
        for p in packs:
            ledger.trigger_event(
                PolicyLedger.PackPublished,
                timestamp=moment,
                scheme=p.scheme,
                version=p.version,
                content_hash=p.content_hash,
                versions=[version_to_event(v) for v in p.versions],
            )
        self.save(ledger)
        self.forget_policy()
        return Result(ids={"packs": [f"{p.scheme}@{p.version}" for p in packs]})

    # (the enrolment and expense commands: commands.handlers.enrolment, commands.handlers.expenses)

    # ------------------------------------------------------------------ decisions
    def _assess(self, r: Recipient, new: list[str], channel: str, claim_id: str | None, at: datetime, *, read_city: bool = True) -> engine.PassResult:
        seq = r.decision_seq + 1
        added = [DecisionRef(eid, channel, claim_id, at, seq, pos) for pos, eid in enumerate(new)]
        reads, city = self._city_reads(r, new) if read_city else ({}, None)
        knowledge = r.knowledge().with_city(reads)
        memo = self._memo(r)
        result = None
        if memo is not None:
            # Nothing the kept pass read has changed (``_memo``): when the new expenses come after
            # every decided one in the canonical order, only they are assessed (ADR 0017).
            book = self.policy().book
            pairs = [(d, r.expenses[d.expense_id].facts) for d in added]
            result = engine.assess_appended(memo, knowledge, pairs, book, self.schemes)
        if result is None:
            result = self._pass(r, r.expense_facts(), r.decided_refs() + added, knowledge)
        result.city = city  # recorded with the decision (``_record_decision``), never re-read
        return result

    #: How many recipients' last passes a process keeps, and how many expenses' assessments in
    #: all (each holds its recipient's assessments with their explanations): the most recently
    #: decided recipients, within a bounded memory.
    MEMOS_MAX = 512
    MEMO_EXPENSES_MAX = 20_000

    @staticmethod
    def _standing(r: Recipient) -> tuple:
        """What a recipient's passes and ``due`` stand on, besides its knowledge (which a kept pass
        compares itself): decisions, reassessments, changes to recorded expenses' facts, clearing
        cases and supplementary payouts recorded (each count only ever grows)."""
        return (r.decision_seq, getattr(r, "reassessments", 0), getattr(r, "facts_changes", 0), len(r.cases), len(r.supplementary))

    def _kept_pass(self, r: Recipient) -> tuple[tuple | None, engine.PassMemo] | None:
        """(standing, pass): this process's last pass over ``r`` and where the recipient stood then
        (None: unknown, ``group.unsettle_pass``)."""
        with self._memos_lock:
            return self._memos.get(r.id)

    def _memo(self, r: Recipient) -> engine.PassMemo | None:
        """This process's last pass over ``r``, if the recipient still stands where it left it."""
        kept = self._kept_pass(r)
        return kept[1] if kept is not None and kept[0] == self._standing(r) else None

    def _pass(self, r: Recipient, facts: dict[str, ExpenseFacts], refs: list[DecisionRef], knowledge: Any = None) -> engine.PassResult:
        """``engine.assess`` over the recipient's decided expenses, resumed from this process's last
        pass over the same recipient (ADR 0017): the engine assesses only the expenses from the
        first one whose inputs differ from that pass's in the canonical order (invoice date,
        service date, decision order; R-CAP-2, R-4L-4, R-MA-1, R-LYG-3), with the same result as a
        full pass (it checks the knowledge, the book and the schemes itself).

        When the recipient still stands where that pass left it, ``result.recomputed`` names the
        expenses assessed again: the others' ``due`` was settled against the same assessments when
        that pass was recorded. When it has moved since (another process of a service decided,
        reassessed or opened a case for it), the pass is still resumed, but ``recomputed`` is
        None: every ``due`` is compared again, as after a full pass."""
        kept = self._kept_pass(r)
        result = engine.assess(knowledge if knowledge is not None else r.knowledge(), facts, refs, self.policy().book, self.schemes,
                               memo=kept[1] if kept is not None else None)
        if kept is not None and kept[0] != self._standing(r):
            result.recomputed = None
        return result

    def current_pass(self, r: Recipient) -> engine.PassResult | None:
        """The pass over ``r``'s decided expenses as recorded (None before the first decision), for
        a reader: resumed from this process's last pass (:meth:`_pass`). Where this process kept
        none, or one from before the recipient last moved (another process of a service decided
        for it), this pass is kept, as a pass only (no standing, as ``group.unsettle_pass`` leaves
        one): the next pass over ``r``, a read's or a decision's, resumes from it instead of
        assessing every decided expense again, and a decision still compares every ``due`` (the
        recorded dues were not settled against a reader's pass)."""
        refs = r.decided_refs()
        if not refs:
            return None
        result = self._pass(r, r.expense_facts(), refs)
        kept = self._kept_pass(r)
        if kept is None or kept[0] != self._standing(r):
            self._remember(r, result, settled=False)
        return result

    def annual_caps(self, r: Recipient) -> list[dict[str, Any]]:
        """R-CAP-2 [002 4.3]: per invoice year, scheme and kind, the aid due that counts
        against the cap, the cap and what remains (``queries.annual_rows``), from the pass as
        recorded (:meth:`current_pass`)."""
        return queries.annual_rows(r, self.policy().book, self.schemes, self.current_pass(r))

    def _remember(self, r: Recipient, result: engine.PassResult, *, settled: bool = True) -> None:
        """Keep ``result``'s pass for the recipient's next one, with what its ``due`` now stands on
        (``settled``: the recorded dues were just compared with it), else as a pass only; a pass
        only never replaces one kept with the recipient's present standing."""
        if result.memo is None or self.MEMOS_MAX <= 0:
            return
        size = len(result.memo.entries)
        if size > self.MEMO_EXPENSES_MAX:
            return
        standing = self._standing(r)
        with self._memos_lock:
            kept = self._memos.get(r.id)
            if not settled and kept is not None and kept[0] == standing:
                return
            self._memos.pop(r.id, None)
            while self._memos and (len(self._memos) >= self.MEMOS_MAX or self._memos.held + size > self.MEMO_EXPENSES_MAX):
                self._memos.pop(next(iter(self._memos)))
            self._memos[r.id] = (standing if settled else None, result.memo)

    def claim_order(self, r: Recipient, expense_ids: list[str]) -> list[str]:
        """SCENARIOS.md: within a claim, invoice date, then service date, then the order listed."""
        indexed = list(enumerate(expense_ids))
        indexed.sort(key=lambda p: (r.expenses[p[1]].facts.invoice_date, r.expenses[p[1]].facts.service_date, p[0]))
        return [eid for _, eid in indexed]

    def _check_claimable(self, r: Recipient, eid: str, channel: str, lodged_on: date, claim_id: str | None, override: bool) -> None:
        """The procedural checks on one expense, in a fixed order (R-PH-7, R-PH-5, R-INS-6, R-INS-5)."""
        acc = self._expense(r, eid)
        gone = getattr(r, "transferred_out", None)
        if gone is not None and (claim_id is None or acc.claim_id != claim_id):
            # R-CAP-4 [001; 000 第七条]: after a move only a claim lodged before it is finished here.
            raise errors.Conflict(
                f"expense {eid}: the person moved to district {gone['to_district']}; claims are lodged there "
                "(a claim lodged here before the move is finished here) (R-CAP-4 [001; 000 第七条])",
                code="TRANSFERRED_OUT", rule="R-CAP-4", field="recipient",
            )
        aided = self.receipt_aided_as(r, acc.facts)
        if aided is not None:
            mine = r.expenses.get(aided)
            if mine is None:
                how = "already aided for another recipient"
            elif mine.decision and mine.decision.channel == "one_stop":
                how = "settled one-stop"
            else:
                how = "already aided"
            raise errors.Duplicate(
                f"expense {eid}: the receipt was {how} (as {aided}); a receipt is aided once in the whole ledger "
                f"(R-PH-7, R-CLR-1(b) [002 4.5; 000 第七条])",
                field="expenses",
            )
        if self.city is not None:
            self._check_city_receipt(eid, acc.facts)
        if acc.claim_id is not None and acc.claim_id != claim_id:
            raise errors.Duplicate(f"expense {eid}: already listed on open claim {acc.claim_id} [002 4.5]", field="expenses")
        book = self.policy().book
        if channel != Channel.ONE_STOP.value:
            procedure.check_deadline(book, self.schemes, acc.facts, lodged_on, override)
            procedure.check_settled(self.schemes, acc.facts)
            procedure.check_evidence(book, self.schemes, acc.facts)

    def _check_city_receipt(self, eid: str, facts: ExpenseFacts) -> None:
        """R-CAP-4, R-CLR-1(b), R-PH-7 [002 4.5; 000 第七条]: a receipt the city view knows as aided
        in another district is a duplicate here too; the refusal names that district, its expense
        and the positions it was read at (recorded in the claim's rejection and the
        ``DuplicateAttempted``)."""
        assert self.city is not None
        try:
            answer = self.city.receipt(facts.facility.code, facts.invoice_no)
        except city_port.CityUnavailable as exc:
            _log.warning("city view not read for expense %s: %s; decided on this district's own receipts", eid, exc)
            getattr(self._unit, "city_unread", []).append(eid)
            return
        if answer.district is not None and answer.district != self.city.district:
            raise city_port.AidedInAnotherDistrict(eid, answer)

    def _city_reads(self, r: Recipient, new: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        """R-CAP-2, R-CAP-4 [001; 000 第七条]: the person's city-scheme usage in the other districts,
        read once for the expenses decided now (their cap buckets), as the decision will record it:
        ({expense: the record}, the record); nothing without a city index or the city scheme."""
        scheme = Scheme.SHANGHAI_MEDICAL_AID.value
        if self.city is None or scheme not in self.schemes or not new:
            return {}, None
        buckets = {(scheme, r.expenses[eid].facts.invoice_date.year, r.expenses[eid].facts.cap_kind) for eid in new}
        try:
            read = self.city.usage(str(r.id), sorted({b[1] for b in buckets}))
        except city_port.CityUnavailable as exc:
            _log.warning("city view not read for recipient %s: %s; the annual cap counts this district's usage only", r.id, exc)
            return {}, city_port.unavailable_block(self.city.district, str(exc))
        came = getattr(r, "transferred_in", None)
        block = city_port.usage_block(self.city.district, read, buckets, r.knowledge().carried_caps, came["from_district"] if came else None)
        return {eid: block for eid in new}, block

    def _first_rejection(self, r: Recipient, ordered: list[str], channel: str, lodged_on: date, claim_id: str | None, at: datetime, override: bool = False, *, deciding: bool = True) -> tuple[errors.Rejected | None, str | None, engine.PassResult | None]:
        """The first refusal among ``ordered`` (procedural checks, then the assessment), and the
        pass. ``deciding=False`` (lodging a claim: nothing is decided yet) leaves the city view's
        usage unread: a cap bounds an amount, it never refuses (R-CAP-3)."""
        seen: set[tuple[str, str]] = set()
        procedural: tuple[errors.Rejected, str] | None = None
        checked: list[str] = []
        # A procedural refusal of an expense the mutual-aid plan may aid waits for the assessment:
        # it stands unless the plan wins the expense ([002 1 范围], [003 六]; procedure.may_be_mutual_aid).
        waiting: dict[str, errors.Rejected] = {}
        self._unit.city_unread = []  # receipts the city view could not be asked about (``_check_city_receipt``)
        for eid in ordered:
            key = r.expenses[eid].facts.receipt_key if eid in r.expenses else None
            if key is not None and key in seen:
                procedural = (errors.Duplicate(f"expense {eid}: the same receipt is listed twice on this claim", field="expenses"), eid)
                break
            if key is not None:
                seen.add(key)
            try:
                self._check_claimable(r, eid, channel, lodged_on, claim_id, override)
            except procedure.PROCEDURAL as exc:
                if not procedure.may_be_mutual_aid(r.knowledge(), r.expenses[eid].facts):
                    procedural = (exc, eid)
                    break
                waiting[eid] = exc
            except errors.Rejected as exc:
                procedural = (exc, eid)
                break
            checked.append(eid)
        if len(set(checked)) != len(checked):
            return errors.Duplicate("an expense is listed twice on this claim", field="expenses"), None, None
        # SCENARIOS.md: a claim reports the first rejection in the order of assessment, so the
        # expenses before the first procedural refusal are assessed (and may be refused) first.
        result = self._assess(r, checked, channel, claim_id, at, read_city=deciding) if checked else None
        unread = [eid for eid in self._unit.city_unread if eid in checked]
        if result is not None and unread and self.city is not None:  # recorded with the decision: checked alone
            result.city = {**(result.city or {"district": self.city.district}), "receipts_unread": unread}
        for eid in checked:
            a = result.assessments[eid]
            if eid in waiting and procedure.refusal_stands(a.granted, a.category):
                return waiting[eid], eid, result
            if not a.granted:
                return a.rejection(), eid, result
        if procedural is not None:
            return procedural[0], procedural[1], None
        return None, None, result

    def _record_decision(self, r: Recipient, ordered: list[str], channel: str, claim_id: str | None, at: datetime, result: engine.PassResult) -> list[engine.Assessment]:
        policy = self.policy()
        knowledge = {
            "recipient_version": r.version,
            "policy_version": policy.version,
            "policy_hash": result.policy_version,
            "known_at": at.isoformat(),
            # No copy of the parameter versions (ADR 0017): each trace names the ones it applied
            # by key with the value applied (ledger.traces); the PolicyLedger at policy_version
            # holds the rest.
        }
        if result.city is not None:
            knowledge["city"] = result.city  # R-CAP-4: what the city view said, and when (ADR 0020)
        decided = [result.assessments[eid] for eid in ordered]
        for a in decided:  # R-PH-7: the receipt is now aided, ledger-wide
            self._note_aid_on_receipt(r, a.expense_id, channel, at)
        r.trigger_event(
            Recipient.AidDecided,
            timestamp=at,
            claim_id=claim_id,
            channel=channel,
            decisions=[a.summary() for a in decided],
            knowledge=knowledge,
        )
        # An expense decided out of invoice-date order can push an earlier-decided one past its cap:
        # R-CLR-1(e).
        self._apply_differences(r, result, Trigger.CAP_OVERRUN.value, at, {"decision": claim_id or channel}, exclude=set(ordered), decision=True)
        return decided

    def _pay(self, r: Recipient, claim_id: str | None, channel: str, items: list[tuple[str, dict[str, Any]]], at: datetime, *, supplementary: dict[str, list[str]] | None = None, offset: bool = True) -> Decimal:
        """A payout; the part the recipient owes on open clearing cases is offset first, oldest
        case first, never taking the payout below zero (R-CLR-3 [000 第七条])."""
        payments = []
        total = ZERO
        for eid, amounts in items:
            amt = Decimal(amounts["total"])
            total += amt
            payments.append(
                {
                    "expense": eid,
                    "total": fmt(amt),
                    "by_scheme": amounts["by_scheme"],
                    "by_fund": amounts["by_fund"],
                    "channel": channel,
                    "supplementary": (supplementary or {}).get(eid, []),
                }
            )
        offsets = []
        if offset and total > 0:
            open_cases = [(c.id, c.balance) for c in r.open_cases()]
            for case_id, amount in clearing.oldest_first(total, open_cases):
                by_fund = clearing.allocate(amount, r.cases[case_id].balance_by_fund)
                offsets.append({"case": case_id, "amount": fmt(amount), "by_fund": {k: fmt(v) for k, v in by_fund.items()}})
        offset_total = sum((Decimal(o["amount"]) for o in offsets), ZERO)
        r.trigger_event(
            Recipient.AidPaid,
            timestamp=at,
            claim_id=claim_id,
            channel=channel,
            payments=payments,
            offsets=offsets,
            to_person=total - offset_total,
        )
        return total


    def _note_aid_on_receipt(self, r: Recipient, eid: str, channel: str, at: datetime) -> None:
        key = r.expenses[eid].facts.receipt_key
        rc = self.receipt(key)
        if rc is None:  # an expense recorded before the ledger-wide index existed
            rc = Receipt._create(  # noqa: SLF001
                Receipt.Opened, id=Receipt.id_for(key), timestamp=at, facility_code=key[0], invoice_no=key[1]
            )
            rc.trigger_event(Receipt.ExpenseNoted, timestamp=at, expense_id=eid, recipient_id=str(r.id))
        rc.trigger_event(Receipt.Aided, timestamp=at, expense_id=eid, channel=channel)
        self._also_save(rc)

    def _note_duplicate(self, r: Recipient, eid: str, channel: str, claim_id: str | None, exc: errors.Rejected, at: datetime) -> None:
        """R-PH-7: the duplicate is rejected *and recorded* as an attempted duplicate."""
        if eid not in r.expenses:
            return
        r.trigger_event(
            Recipient.DuplicateAttempted,
            timestamp=at,
            expense_id=eid,
            channel=channel,
            claim_id=claim_id,
            aided_as=getattr(exc, "aided_as", None) or self.receipt_aided_as(r, r.expenses[eid].facts),
            reason=exc.message,
            city=getattr(exc, "city", None),  # R-CAP-4: the district and the city view's positions
        )

    # ------------------------------------------------------------------ claims

    def aid(self, recipient: str, expenses: list[str], at: datetime | None, command_id: str | None = None) -> Result:
        """The scenario contract's shorthand: claim + review + approve + pay with three distinct
        default officers and the default payer (R-PH-4)."""
        handler, reviewer, approver = DEFAULT_OFFICERS
        with self._one_moment(at):
            lodged = self.run(m.LodgeClaim(recipient=recipient, expenses=expenses, handler=handler, at=at, command_id=command_id and f"{command_id}:claim"))
            if lodged.status != "accepted":
                return lodged
            claim_id = lodged.ids["claim"]
            for step in (
                m.Review(claim=claim_id, reviewer=reviewer, at=at, command_id=command_id and f"{command_id}:review"),
                m.Approve(claim=claim_id, approver=approver, at=at, command_id=command_id and f"{command_id}:approve"),
                m.Pay(claim=claim_id, at=at, command_id=command_id and f"{command_id}:pay"),
            ):
                res = self.run(step)
                if res.status != "accepted":
                    res.ids.setdefault("claim", claim_id)
                    return res
        return Result(ids={"claim": claim_id})

    def recipient_ids(self) -> Iterator[uuid.UUID]:
        """Every enrolled recipient, in enrolment order (from the notification log)."""
        yield from self._originators([f"{Recipient.Enrolled.__module__}:{Recipient.Enrolled.__qualname__}"])

    def notifications(self, topics: list[str] | None = None, *, page: int = 1000) -> Iterator[Any]:
        """Every stored event (optionally only ``topics``) in log order, read a page at a time."""
        start = 1
        while True:
            batch = self.recorder.select_notifications(start=start, limit=page, topics=topics or ())
            if not batch:
                return
            yield from batch
            start = batch[-1].id + 1

    def _originators(self, topics: list[str]) -> Iterator[uuid.UUID]:
        """The originator of every event with one of ``topics``, in log order (repeats included)."""
        for n in self.notifications(topics):
            yield n.originator_id


    def batch(self, batch_id: uuid.UUID | str) -> ClaimBatch:
        return self._load("batch", batch_id)


    def auto_claims_signed(self, month: str, at: datetime | None) -> Result:
        """The scenario contract's ``auto_claims`` shorthand: the batch lodged by the default handler,
        then reviewed, approved and paid by the default officers (R-PH-3, R-PH-4)."""
        handler, reviewer, approver = DEFAULT_OFFICERS
        with self._one_moment(at):
            lodged = self.run(m.AutoClaims(month=month, handler=handler, at=at))
            batch = lodged.ids.get("batch")
            if lodged.status != "accepted" or not batch:
                return lodged
            for role, officer in (("reviewer", reviewer), ("approver", approver), ("payer", DEFAULT_PAYER)):
                self.run(m.SignBatch(batch=batch, role=role, officer=officer, at=at))
        return lodged

    # ------------------------------------------------------------------ 四医联动 district actions


    # ------------------------------------------------------------------ clearing
    def _reconcile(self, r: Recipient, trigger: str, at: datetime, cause: dict[str, Any], aided_elsewhere: dict[str, "str | AidedElsewhere"] | None = None) -> bool:
        """R-CLR-2: recompute every decided expense of the recipient with today's knowledge.

        ``aided_elsewhere`` names the person's decided expenses whose receipt was aided first under
        another recipient (R-CLR-1(b): found by ``receipts_aided_twice``) or in another district
        (an :class:`AidedElsewhere` from the city view, with its own explanation): they are due
        nothing and take no cap room, exactly as a second decision on a receipt within one person."""
        if not r.decided_refs():
            return False
        if not aided_elsewhere:
            result = self._pass(r, r.expense_facts(), r.decided_refs())
            return self._apply_differences(r, result, trigger, at, cause)
        facts = r.expense_facts()
        refs = [d for d in r.decided_refs() if d.expense_id not in aided_elsewhere]
        result = engine.assess(r.knowledge(), facts, refs, self.policy().book, self.schemes)
        for eid, first in aided_elsewhere.items():
            if eid not in facts:
                continue
            result.assessments[eid] = engine.Assessment(
                eid, False, facts[eid].self_pay(), code="DUPLICATE", rule="R-PH-7",
                message=first.message if isinstance(first, AidedElsewhere) else f"the receipt was aided first as {first}, "
                "for another recipient: a receipt is aided once in the whole ledger (R-CLR-1(b), R-PH-7 [002 4.5; 000 第七条])",
            )
        result.recomputed = None  # every assessment above is this pass's own
        return self._apply_differences(r, result, trigger, at, cause)

    def _correct_city_reads(self, r: Recipient, overlap: city_port.UsageOverlap, at: datetime) -> bool:
        """R-CAP-4, R-CLR-1(e) [001; 000 第七条]: the city scheme's annual cap is the person's,
        city-wide, and a decision here counts what the other districts had used as the city view
        showed it then (ADR 0020). A view that lagged behind (or could not be read) showed less:
        for each expense here with city-scheme aid, the usage the other districts had decided
        before this expense's decision (their aid due as now known, ``usage_known_before``) is
        counted as the decision counts it (``usage_block``: a move's carried usage not twice);
        where that is more than the decision counted, the corrected read is recorded
        (``Recipient.CityUsageCorrected``) and the reassessment that follows (R-CLR-2) opens a
        clearing case for what was paid over the cap. Never less: a read is corrected only
        upwards, so a district's later recovery elsewhere does not reopen a decision here.
        Idempotent: a corrected read counts what a second run would count. Returns whether a
        read was corrected."""
        scheme = Scheme.SHANGHAI_MEDICAL_AID.value
        rows = overlap.by_recipient.get(r.id)
        if not rows or scheme not in self.schemes:
            return False
        k = r.knowledge()
        came = getattr(r, "transferred_in", None)
        results: list[dict[str, Any]] = []
        for eid, acc in r.expenses.items():
            due = acc.due or {}
            if acc.decision is None or not any(p.get("scheme") == scheme and Decimal(p.get("amount") or "0") > 0 for p in due.get("parts") or ()):
                continue
            bucket = (scheme, acc.facts.invoice_date.year, acc.facts.cap_kind)
            block = k.city_block(eid)
            was = city_read(block, eid, bucket)
            counted = was[0] if was is not None else ZERO
            read = city_port.usage_known_before(rows, overlap.district, micros(acc.decision.decided_at), overlap.positions)
            fixed = city_port.usage_block(overlap.district, read, [bucket], k.carried_caps, came["from_district"] if came else None)
            now = Decimal(fixed["caps"][0]["counted"])
            if now <= counted:
                continue
            fixed["corrected"] = {
                "counted_before": fmt(counted),
                "decided_at": acc.decision.decided_at.astimezone(CST).isoformat(),
                "reason": f"the decision counted {fmt(counted)} of the city scheme's usage in other districts; they had "
                f"decided {fmt(now)} before it (as of the city view at {city_port.as_of(overlap.positions)}): the view "
                f"lagged behind or could not be read then ({city_port.RULE_CAP} {city_port.CLAUSE_CAP})",
            }
            results.append({"expense": eid, "previous": block, "city": fixed})
        if not results:
            return False
        r.trigger_event(Recipient.CityUsageCorrected, timestamp=at, results=results, positions=dict(overlap.positions))
        return True

    def receipts_aided_twice(self) -> dict[uuid.UUID, dict[str, str]]:
        """R-CLR-1(b) [002 4.5; 000 第七条]: receipts aided under more than one recipient, read from
        the log (decisions in the order they were recorded): {recipient who was aided later:
        {their expense: the expense aided first}}. The write path refuses such a second aid
        (``Receipt``); this finds what was paid before the ledger-wide index existed, and fills the
        index in for those receipts, so that no later claim on them is paid."""
        recorded = get_topic(Recipient.ExpenseRecorded)
        decided = get_topic(Recipient.AidDecided)
        key_of: dict[str, tuple[str, str]] = {}
        expenses_of: dict[tuple[str, str], list[str]] = {}
        first: dict[tuple[str, str], str] = {}
        found: dict[uuid.UUID, dict[str, str]] = {}
        for n in self.notifications([recorded, decided]):
            e = self.mapper.to_domain_event(n)
            if isinstance(e, Recipient.ExpenseRecorded):
                key = receipt_identity(e.facility.get("code"), e.invoice_no)
                key_of[e.expense_id] = key
                expenses_of.setdefault(key, []).append(e.expense_id)
                continue
            for d in e.decisions:
                eid = d["expense"]
                if not d.get("granted") or eid not in key_of:
                    continue
                earlier = first.setdefault(key_of[eid], eid)
                if earlier != eid and recipient_of(earlier) != recipient_of(eid):
                    found.setdefault(recipient_of(eid), {})[eid] = earlier
        for key, aided in first.items():
            if self.receipt(key) is None:  # recorded and aided before the ledger-wide index
                at = self._now(None)
                rc = Receipt._create(Receipt.Opened, id=Receipt.id_for(key), timestamp=at, facility_code=key[0], invoice_no=key[1])  # noqa: SLF001
                for eid in expenses_of.get(key, []):
                    rc.trigger_event(Receipt.ExpenseNoted, timestamp=at, expense_id=eid, recipient_id=str(recipient_of(eid)))
                rc.trigger_event(Receipt.Aided, timestamp=at, expense_id=aided, channel="index")
                try:
                    self.save(rc)
                except IntegrityError:  # another process indexed it meanwhile
                    pass
        return found

    def _sync_suspensions(self, r: Recipient, result: engine.PassResult, at: datetime, trigger: str | None) -> bool:
        """R-4L-4 [000 第四条(三)]: record the 四医联动 suspensions the pass implies, so that a district
        review can lift them, and end the recorded ones it no longer supports.

        The pass decides which expense passes a month's ceiling or visit count; decided out of
        order, or recomputed after a retroactive parameter or category change (R-TIME-2, R-CLR-2),
        that can be another expense than the one recorded, or none. A suspension the pass implies
        is recorded now, with its explanation; a recorded one whose expense no longer starts a
        suspension in the pass ends (``SuspensionEnded``: not a review, so nothing is reopened
        that the pass itself does not reopen)."""
        scheme = Scheme.FOUR_LINKAGE.value
        implied = result.suspended_by
        changed = False
        on = local_date(at).isoformat()
        why = "a decision" if trigger is None else f"a recomputation after {trigger} (R-TIME-2, R-CLR-2)"
        for s in list(r.suspensions):
            if s["scheme"] == scheme and s["lifted"] is None and s["expense"] != implied:
                r.trigger_event(
                    Recipient.SuspensionEnded,
                    timestamp=at,
                    scheme=scheme,
                    expense_id=s["expense"],
                    ended_on=on,
                    reason=f"after {why}, expense {s['expense']} no longer passes the month's community-centre "
                    "ceiling or visit count: the suspension it started ends (R-4L-4 [000 第四条(三)])",
                )
                changed = True
        if implied is not None and r.active_suspension(scheme) is None:
            a = result.assessments[implied]
            month = a.suspension_started.strftime("%Y-%m")
            r.trigger_event(
                Recipient.SuspensionStarted,
                timestamp=at,
                scheme=scheme,
                valid_from=a.suspension_started.isoformat(),
                expense_id=a.expense_id,
                reason=f"monthly community-centre ceiling or visit count passed in {month}, found by {why} "
                "(R-4L-4 [000 第四条(三)])",
            )
            changed = True
        return changed

    def _apply_differences(self, r: Recipient, result: engine.PassResult, trigger: str, at: datetime, cause: dict[str, Any], exclude: set[str] = frozenset(), *, decision: bool = False) -> bool:
        suspensions_changed = self._sync_suspensions(r, result, at, None if decision else trigger)
        changed: list[dict[str, Any]] = []
        outcomes: list[tuple[str, engine.Assessment, dict[str, Any]]] = []
        # A resumed pass (``_pass``) carried the other expenses' assessments over unchanged from a
        # pass whose differences were recorded then: only the ones it assessed can differ now.
        for eid, a in _assessed(result):
            if eid in exclude:
                continue
            acc = r.expenses[eid]
            now = a.summary()
            if _amounts(now) != _amounts(acc.due or {}) or _standing_of(now) != _standing_of(acc.due or {}):
                changed.append({"expense": eid, "previous": acc.due, "due": now})
            outcomes.append((eid, a, now))
        if changed:
            policy = self.policy()
            r.trigger_event(
                Recipient.AidReassessed,
                timestamp=at,
                trigger=trigger,
                cause=cause,
                results=changed,
                knowledge={"recipient_version": r.version, "policy_version": policy.version, "policy_hash": result.policy_version, "known_at": at.isoformat()},
            )
        any_new = bool(changed) or suspensions_changed
        for eid, a, now in outcomes:
            expected = r.expected(eid)
            diff = a.total - expected["total"]
            previous = r.expenses[eid].decided or {}
            if diff > 0:
                # A shortfall is paid above what the person holds: what a write-off forgave is
                # theirs already (R-CLR-2, R-CLR-3; R-4L-6 [000 第七条]: no aid twice for one cost).
                expected = r.expected(eid, held=True)
                diff = max(ZERO, a.total - expected["total"])
                if diff == 0:
                    continue
            elif diff == 0:
                any_new = self._clear_fund_shift(r, eid, a, expected, trigger, at, previous, now) or any_new
                continue
            by_fund = clearing.sub(expected["by_fund"], a.by_fund) if diff < 0 else clearing.sub(a.by_fund, expected["by_fund"])
            by_scheme = clearing.sub(expected["by_scheme"], a.by_scheme) if diff < 0 else clearing.sub(a.by_scheme, expected["by_scheme"])
            common = dict(
                timestamp=at,
                expense_id=eid,
                # R-CLR-1(b): aid on a receipt already aided is cleared as a duplicate, whatever
                # fact set the recomputation off.
                trigger=Trigger.DUPLICATE.value if a.code == "DUPLICATE" else trigger,
                amount=abs(diff),
                by_fund={k: fmt(v) for k, v in by_fund.items()},
                by_scheme={k: fmt(v) for k, v in by_scheme.items()},
                previous={"total": fmt(expected["total"]), "decision": _brief(previous)},
                current=_brief(now),
            )
            if diff < 0:
                r.trigger_event(Recipient.ClearingCaseOpened, case_id=f"{r.id}:case:{len(r.cases) + 1}", **common)
            else:
                r.trigger_event(Recipient.SupplementaryPayoutDue, supplementary_id=f"{r.id}:supp:{len(r.supplementary) + 1}", **common)
            any_new = True
        self._remember(r, result)
        return any_new

    def _clear_fund_shift(self, r: Recipient, eid: str, a: Any, expected: dict[str, Any], trigger: str, at: datetime,
                          previous: dict[str, Any], now: dict[str, Any]) -> bool:
        """The same total due, split otherwise between the funds (a city part that a cap now cuts
        and a district top-up that makes it up, R-CAP-3 with R-4L-2): R-CLR-2 compares per fund,
        so the funds that paid too much open a clearing case and those that paid too little a
        supplementary payout, of equal amounts. Paying the payout offsets the case (R-CLR-3): the
        person is paid nothing more, and every fund's books end at what it owes. False when the
        funds are as settled."""
        shift = clearing.sub(a.by_fund, expected["by_fund"])
        excess = {f: -v for f, v in shift.items() if v < 0}
        if not excess:
            return False
        short = {f: v for f, v in shift.items() if v > 0}
        amount = sum(excess.values(), ZERO)
        schemes = clearing.sub(a.by_scheme, expected["by_scheme"])
        common = dict(timestamp=at, expense_id=eid, trigger=Trigger.DUPLICATE.value if a.code == "DUPLICATE" else trigger, amount=amount,
                      previous={"total": fmt(expected["total"]), "decision": _brief(previous)}, current=_brief(now))
        r.trigger_event(
            Recipient.ClearingCaseOpened, case_id=f"{r.id}:case:{len(r.cases) + 1}", **common,
            by_fund={k: fmt(v) for k, v in excess.items()},
            by_scheme={k: fmt(v) for k, v in clearing.allocate(amount, {k: -v for k, v in schemes.items() if v < 0}).items()},
        )
        r.trigger_event(
            Recipient.SupplementaryPayoutDue, supplementary_id=f"{r.id}:supp:{len(r.supplementary) + 1}", **common,
            by_fund={k: fmt(v) for k, v in short.items()},
            by_scheme={k: fmt(v) for k, v in clearing.allocate(amount, {k: v for k, v in schemes.items() if v > 0}).items()},
        )
        return True

    def clearing_run(self, trigger: str = Trigger.PARAMETER_CHANGE.value, *, at: datetime | None = None, cause: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None, recipients: Iterable[uuid.UUID] | None = None, opened: dict[str, int] | None = None, city: dict[uuid.UUID, dict[str, "AidedElsewhere"]] | None = None, city_usage: city_port.UsageOverlap | None = None) -> int:
        """Recompute every recipient with decided expenses (R-CLR-2); idempotent: a second run
        finds nothing new. Returns how many recipients changed. ``recipients`` limits the run
        (``ledger clearing run --since``); ``opened`` counts the cases and supplementary payouts
        the run opened. ``city``: the expenses this district paid on a receipt another district
        paid first, as the city view found them (R-CAP-4, R-CLR-1(b)), read by the adapter and
        given here as plain data; cleared by a ``duplicate`` run only. ``city_usage``: the city
        view's rows of the persons aided here and in another district (R-CAP-4, R-CLR-1(e)): a
        decision that counted less than was decided elsewhere before it has its read corrected
        (:meth:`_correct_city_reads`) and is reassessed with it."""
        changed = 0
        elsewhere: dict[uuid.UUID, dict[str, Any]] = {}
        if trigger == Trigger.DUPLICATE.value:  # R-CLR-1(b): receipts aided under two recipients
            elsewhere = self.receipts_aided_twice()
            for rid, found in (city or {}).items():  # ... or in two districts (late discovery)
                mine = elsewhere.setdefault(rid, {})
                for eid, why in found.items():
                    mine.setdefault(eid, why)
        # One moment for the whole run (ADR 0006: the events of one command share its time): the
        # command's own when it recorded something at ``at`` already (a parameter amended), so a cut
        # "as known at T" never holds an amendment without the cases and payouts it opened, nor
        # one recipient's recomputation without another's.
        with self._clock_lock:
            shared = at is not None and self._last_at is not None and at.astimezone(CST) == self._last_at
        moment = self._last_at if shared else self._now(at)
        for rid in list(self.recipient_ids() if recipients is None else recipients):
            for attempt in range(5):
                r = self.recipient(rid)
                before = (len(r.cases), len(r.supplementary))
                corrected = city_usage is not None and self._correct_city_reads(r, city_usage, moment)
                if self._reconcile(r, trigger, moment, cause or {"run": "clearing"}, elsewhere.get(r.id)) or corrected:
                    try:
                        self.save(r)
                    except IntegrityError:
                        continue
                    changed += 1
                    if opened is not None:
                        opened["cases"] = opened.get("cases", 0) + len(r.cases) - before[0]
                        opened["supplementary"] = opened.get("supplementary", 0) + len(r.supplementary) - before[1]
                break
            if progress:
                progress(1)
        return changed


@dataclass(frozen=True)
class AidedElsewhere:
    """An expense of this ledger whose receipt was aided first outside it (R-CAP-4, R-CLR-1(b)
    [002 4.5; 000 第七条]): ``first`` names that aid, ``message`` is the explanation recorded on
    the recomputed decision (which district, which expense, as of which positions)."""

    first: str
    message: str


def _assessed(result: engine.PassResult) -> Iterable[tuple[str, engine.Assessment]]:
    """The assessments a pass made itself, in canonical order: all of them, or those of a resumed
    pass (``result.recomputed``), which are the last ones."""
    done = result.recomputed
    if done is None:
        return result.assessments.items()
    tail = list(itertools.islice(reversed(result.assessments.items()), len(done)))
    tail.reverse()
    if {eid for eid, _ in tail} != done:  # not a suffix: filter (same result, slower)
        return [(eid, a) for eid, a in result.assessments.items() if eid in done]
    return tail


def _amounts(summary: dict[str, Any]) -> tuple:
    return (
        summary.get("granted"),
        summary.get("total"),
        tuple(sorted((summary.get("by_scheme") or {}).items())),
        tuple(sorted((summary.get("by_fund") or {}).items())),
    )


def _standing_of(summary: dict[str, Any]) -> tuple:
    """What a recomputation can change without changing the money: the category that won
    (R-CAT-2 [001 二(一)]: the decision records why one won, and the annual limit is that
    category's, R-CAP-1) and the refusal's code. A change is recorded (``AidReassessed``) though
    nothing is paid or recovered."""
    return summary.get("category"), summary.get("code")


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("granted", "code", "rule", "category", "self_pay", "total", "by_scheme", "by_fund")}


class _Memos(dict):
    """``LedgerCore._memos``, counting the expenses its passes hold as they are kept and dropped
    (``held``), so that ``_remember`` does not add them up over every kept pass each time."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[Any, int] = {}
        self.held = 0

    def __setitem__(self, key: Any, value: tuple[tuple, engine.PassMemo]) -> None:
        self.pop(key, None)
        super().__setitem__(key, value)
        self.sizes[key] = size = len(value[1].entries)
        self.held += size

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self.sizes:
            self.held -= self.sizes.pop(key)
        return super().pop(key, *default)

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def clear(self) -> None:
        super().clear()
        self.sizes.clear()
        self.held = 0


class _Reads(dict):
    """One command attempt's reads (ADR 0021): aggregate id -> the version read (0: none found),
    for the ones not yet proven current by a save of the attempt; ``seen`` keeps every id read
    (dropped from the cache if the attempt loses a race), ``retry`` says an earlier attempt did."""

    def __init__(self, retry: bool = False):
        super().__init__()
        self.retry = retry
        self.saved = False
        self.seen: set[Any] = set()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.seen.add(key)
        return super().setdefault(key, default)
