"""The ledger application: the one write path.

Every command handler here gets the aggregates, asks the pure domain (``ledger``) to decide,
calls aggregate methods that record the decision as events, and saves everything the command
touched in one transaction. The CLI, the HTTP API, the subscribers and the scenario runner are
adapters over these methods and nothing else.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, OperationalError

from commands import models as m
from commands.repository import upgrade as upgrade_repository
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
from ledger.eligibility import categories_on
from ledger.facts import DecisionRef, ExpenseFacts
from ledger.money import ZERO, fmt, money
from ledger.policy import packs as policy_packs
from ledger.policy.params import PolicyBook, PolicyError
from ledger.values import CST, ERASED, Channel, Fund, Scheme, Trigger, age_on, local_date, receipt_identity, same_identity

DEFAULT_OFFICERS = ("handler-default", "reviewer-default", "approver-default")
#: The scenario contract's ``pay`` without a payer: a fourth officer, distinct from the three.
DEFAULT_PAYER = "payer-default"


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


class LedgerApp(Application):
    name = "Ledger"
    # No automatic snapshots: a Recipient's state holds dataclasses and tuple-keyed maps that the
    # JSON transcoder does not carry yet, so only a newly enrolled recipient can be snapshotted
    # (the snapshot store exists for that and for the encryption tests). At district stream
    # lengths a full load is cheap enough (ADR 0017); bulk imports use the aggregate cache
    # (infra.demo.demo_env).
    is_snapshotting_enabled = True
    snapshotting_intervals: dict = {}

    def __init__(self, env: dict[str, str] | None = None, *, jurisdiction: str = "shanghai.changning"):
        super().__init__(env)
        if jurisdiction not in policy_packs.JURISDICTIONS:
            raise errors.InvalidInput(f"unknown jurisdiction {jurisdiction!r}", field="jurisdiction")
        self.jurisdiction = jurisdiction
        self.schemes = policy_packs.JURISDICTIONS[jurisdiction]
        self._clock_lock = threading.Lock()
        self._last_at: datetime | None = None
        self._policy_cache: PolicyLedger | None = None
        #: Keyed hash of a resident id number (ADR 0015), installed by the wiring; unset, the
        #: recipient id is the plain uuid5 of the number.
        self.id_number_digest: Callable[[str], str] | None = None
        #: Called with the recordings after every save (the integrity chainer, ADR 0016).
        self.after_save: list[Callable[[list[Any]], None]] = []
        #: Aggregates a handler touched beside the ones it commits by name (the receipt index),
        #: saved in the same transaction by the next ``_commit`` of this thread.
        self._unit = threading.local()

    def construct_repository(self) -> Any:
        """The library's repository with a cheaper projector (commands.repository, ADR 0017)."""
        return upgrade_repository(super().construct_repository(), self.snapshotting_intervals)

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
        moment = at or datetime.now(timezone.utc)
        with self._clock_lock:
            if self._last_at is not None and moment <= self._last_at:
                moment = self._last_at + timedelta(microseconds=1)
            self._last_at = moment
        return moment

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
            self._policy_cache = None
        return result

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

    def receipt(self, key: tuple[str, str]) -> Receipt | None:
        """The ledger-wide record of one receipt (R-CLR-1(b)), or None if never recorded since the
        index exists. A companion touched by the command in progress is returned as it stands."""
        rid = Receipt.id_for(key)
        pending = getattr(self._unit, "companions", None) or {}
        if rid in pending:
            return pending[rid]
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
        try:
            record = self.repository.get(CommandRecord.id_for(cmd.command_id))
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
        win the race (optimistic concurrency), for up to ``conflict_seconds``, then WriteConflict."""
        replay = self._replayed(cmd)
        if replay is not None:
            return replay
        handler: Callable[[Any], Result] = getattr(self, _HANDLERS[type(cmd)])
        deadline = time.monotonic() + self.conflict_seconds
        for attempt in itertools.count():
            self._take_companions()  # nothing left over from an attempt that did not commit
            try:
                try:
                    return handler(cmd)
                except errors.Rejected as exc:
                    return self._rejected(cmd, Result.rejected(exc))
            except (IntegrityError, OperationalError) as exc:
                if not retryable_write_error(exc):
                    raise
                self._policy_cache = None
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

    def recipient(self, recipient_id: uuid.UUID | str, version: int | None = None) -> Recipient:
        try:
            rid = recipient_id if isinstance(recipient_id, uuid.UUID) else uuid.UUID(str(recipient_id))
            return self.repository.get(rid, version=version)
        except (AggregateNotFoundError, ValueError):
            raise errors.UnknownEntity(f"unknown recipient {recipient_id!r}", field="recipient") from None

    def claim(self, claim_id: uuid.UUID | str) -> Claim:
        try:
            cid = claim_id if isinstance(claim_id, uuid.UUID) else uuid.UUID(str(claim_id))
            return self.repository.get(cid)
        except (AggregateNotFoundError, ValueError):
            raise errors.UnknownEntity(f"unknown claim {claim_id!r}", field="claim") from None

    def policy(self, version: int | None = None) -> PolicyLedger:
        if version is not None:
            return self.repository.get(PolicyLedger.ID, version=version)
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
        self._policy_cache = None
        return Result(ids={"packs": [f"{p.scheme}@{p.version}" for p in packs]})

    def set_parameter(self, cmd: m.SetParameter) -> Result:
        """A parameter published or amended (RULES §10), possibly retroactive: refused with
        POLICY_FLOOR if it breaks a floor; otherwise recorded, then every decided expense is
        recomputed and differences open clearing cases or supplementary payouts (R-CLR-1(d))."""
        moment = self._now(cmd.at)
        ledger = self.policy()
        try:
            version = policy_packs.make_amendment(
                cmd.name, cmd.value, cmd.effective_from, cmd.effective_to, moment, cmd.reference
            )
            policy_packs.validate(ledger.book, [version])
        except PolicyError as exc:
            if exc.code in ("UNKNOWN_PARAMETER", "INVALID_VALUE"):
                raise errors.InvalidInput(str(exc), code=exc.code, rule=exc.rule, field=exc.field or "name") from None
            raise errors.PolicyFloor(str(exc), rule=exc.rule or "R-LYG-1", field=exc.field) from None
        ledger.trigger_event(PolicyLedger.ParameterAmended, timestamp=moment, version=version_to_event(version))
        self._commit(cmd, Result(), ledger)
        changed = self.clearing_run(Trigger.PARAMETER_CHANGE.value, at=moment, cause={"parameter": cmd.name})
        return Result(ids={"recipients_changed": changed})

    # ------------------------------------------------------------------ recipients
    def enrol(self, cmd: m.Enrol) -> Result:
        moment = self._now(cmd.at)
        rid = self.recipient_id_for(cmd.id_number)
        try:
            self.repository.get(rid)
            raise errors.InvalidInput(
                "id_number: a recipient with this resident id number is already enrolled", field="id_number"
            )
        except AggregateNotFoundError:
            pass
        r = Recipient._create(  # noqa: SLF001
            Recipient.Enrolled, id=rid, timestamp=moment, id_number=cmd.id_number, name=cmd.name, street=cmd.street
        )
        return self._commit(cmd, Result(ids={"recipient": str(rid)}), r)

    def grant_category(self, cmd: m.GrantCategory) -> Result:
        """A category held over [from, to] (RULES §2). R-CAT-4: class II needs household medical
        spending ≥ 40% of annual disposable income [001 四], checked when the figures are given."""
        r = self.recipient(cmd.recipient)
        if cmd.category.value == "expenditure_poor_2":
            spend, income = cmd.household_medical_spending_12m, cmd.household_annual_disposable_income
            if spend is not None and income is not None and spend < income * Decimal("0.40"):
                raise errors.NotEligible(
                    f"expenditure-poor class II needs household medical spending ≥ 40% of annual disposable "
                    f"income; {spend} < 40% of {income} [001 四]",
                    rule="R-CAT-4",
                    field="household_medical_spending_12m",
                )
        moment = self._now(cmd.at)
        means = None
        if cmd.household_medical_spending_12m is not None or cmd.household_annual_disposable_income is not None:
            means = {
                "household_medical_spending_12m": fmt(cmd.household_medical_spending_12m),
                "household_annual_disposable_income": fmt(cmd.household_annual_disposable_income),
                "rule": "R-CAT-4",
            }
        r.trigger_event(
            Recipient.CategoryGranted,
            timestamp=moment,
            category=cmd.category.value,
            valid_from=cmd.valid_from.isoformat(),
            valid_to=cmd.valid_to.isoformat() if cmd.valid_to else None,
            subtype=cmd.subtype,
            determined_on=cmd.determined_on.isoformat() if cmd.determined_on else None,
            means_test_expenses_from=cmd.means_test_expenses_from.isoformat() if cmd.means_test_expenses_from else None,
            means_test=means,
        )
        self._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"category": cmd.category.value, "granted_from": cmd.valid_from.isoformat()})
        return self._commit(cmd, Result(), r)

    def revoke_category(self, cmd: m.RevokeCategory) -> Result:
        """No longer held from a date, possibly in the past (R-TIME-2, R-CLR-1(c))."""
        r = self.recipient(cmd.recipient)
        moment = self._now(cmd.at)
        r.trigger_event(
            Recipient.CategoryRevoked,
            timestamp=moment,
            category=cmd.category.value,
            valid_from=cmd.valid_from.isoformat(),
            reason=cmd.reason,
        )
        self._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"category": cmd.category.value, "revoked_from": cmd.valid_from.isoformat()})
        return self._commit(cmd, Result(), r)

    def insure(self, cmd: m.Insure) -> Result:
        """Shanghai basic insurance enrolment (R-INS-1) and its subsidy (R-INS-2 [001 二(二)1])."""
        r = self.recipient(cmd.recipient)
        moment = self._now(cmd.at)
        subsidy = self._enrolment_subsidy(r, cmd)
        r.trigger_event(
            Recipient.InsuranceEnrolmentStarted,
            timestamp=moment,
            scheme=cmd.scheme.value,
            valid_from=cmd.valid_from.isoformat(),
            valid_to=cmd.valid_to.isoformat() if cmd.valid_to else None,
            subsidy=subsidy,
        )
        self._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"insurance": cmd.scheme.value})
        return self._commit(cmd, Result(), r)

    def _enrolment_subsidy(self, r: Recipient, cmd: m.Insure) -> dict[str, Any] | None:
        """R-INS-2: who has their resident-insurance contribution paid, and how much. Paid by the
        city aid fund; held categories are those on the enrolment's start date.

        - Shanghai [001 二(二)1]: dibao, special relief, orphans and children in distress in full;
          low-income members aged 60+ a fixed subsidy (PARAMETER ``enrolment_subsidy.low_income_60plus``,
          a local setting). Dibao children, scattered orphans and children in distress also have
          their contribution to the children's inpatient mutual fund 少儿住院互助基金 paid in full
          [001 二(四)2] (``children_fund`` in the subsidy).
        - Lianyungang [004 四(一)]: key recipients who are dibao, destitute (特困供养) or orphans in
          full; every other recipient the county's setting (PARAMETER
          ``lianyungang.medical_aid.enrolment_subsidy.other``, a local setting, 0 until set)."""
        if cmd.scheme.value != "resident":
            return None
        held = categories_on(r.knowledge(), cmd.valid_from)
        if Scheme.SHANGHAI_MEDICAL_AID.value in self.schemes:
            return self._shanghai_subsidy(r, cmd, {h.category for h in held})
        if Scheme.LIANYUNGANG.value in self.schemes:
            return self._lianyungang_subsidy(cmd, held)
        return None

    def _age(self, r: Recipient, on: date, rule: str) -> int:
        if r.id_number == ERASED:
            raise errors.PersonalDataErased(f"{rule} needs the recipient's age, but their personal data was erased (ADR 0015)", rule=rule, field="recipient")
        return age_on(r.id_number, on)

    def _shanghai_subsidy(self, r: Recipient, cmd: m.Insure, held: set[str]) -> dict[str, Any] | None:
        full = held & {"dibao", "special_relief", "orphan", "child_in_distress"}
        if full:
            subsidy: dict[str, Any] = {"kind": "contribution_paid_in_full", "category": sorted(full)[0], "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]"}
            children = held & {"dibao", "orphan", "child_in_distress"}
            if children and self._age(r, cmd.valid_from, "R-INS-2") < 18:
                # [001 二(四)2] 低保家庭儿童及社会散居孤儿、困境儿童基本生活保障对象参加少儿住院互助基金的个人缴费部分给予全额资助
                subsidy["children_fund"] = {"kind": "contribution_paid_in_full", "category": sorted(children)[0], "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(四)2]"}
            return subsidy
        if "low_income" in held and self._age(r, cmd.valid_from, "R-INS-2") >= 60:
            v = self.policy().book.lookup(f"{Scheme.SHANGHAI_MEDICAL_AID.value}.enrolment_subsidy.low_income_60plus", cmd.valid_from)
            amount = money(v.value) if v and v.value is not None else ZERO
            return {"kind": "fixed_subsidy", "category": "low_income", "amount": fmt(amount), "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]", "local_setting": True}
        return None

    #: [004 四(一)] 低保对象、特困供养人员、孤儿: key sub-types whose contribution is paid in full.
    _LYG_FULL = {"dibao": "dibao", "低保": "dibao", "低保对象": "dibao", "destitute": "destitute", "特困": "destitute",
                 "特困供养": "destitute", "特困供养人员": "destitute", "orphan": "orphan", "孤儿": "orphan"}

    def _lianyungang_subsidy(self, cmd: m.Insure, held: list[Any]) -> dict[str, Any] | None:
        scheme = Scheme.LIANYUNGANG.value
        for h in held:
            kind = self._LYG_FULL.get(same_identity(h.subtype)) if h.category == "lyg_key" else None
            if kind is not None:
                return {"kind": "contribution_paid_in_full", "category": h.category, "subtype": kind, "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[004 四(一)]"}
        if not any(h.category in ("lyg_key", "lyg_extended") for h in held):
            return None
        v = self.policy().book.lookup(f"{scheme}.enrolment_subsidy.other", cmd.valid_from)
        amount = money(v.value) if v and v.value is not None else ZERO
        category = next(h.category for h in held if h.category in ("lyg_key", "lyg_extended"))
        return {"kind": "fixed_subsidy", "category": category, "amount": fmt(amount), "fund": "city", "rule": "R-INS-2", "clause": "[004 四(一)]", "local_setting": True}

    def end_insurance(self, cmd: m.EndInsurance) -> Result:
        r = self.recipient(cmd.recipient)
        moment = self._now(cmd.at)
        r.trigger_event(Recipient.InsuranceEnrolmentEnded, timestamp=moment, scheme=cmd.scheme.value, valid_to=cmd.valid_to.isoformat())
        self._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"insurance_ended": cmd.scheme.value})
        return self._commit(cmd, Result(), r)

    def join_mutual_aid(self, cmd: m.JoinMutualAid) -> Result:
        r = self.recipient(cmd.recipient)
        moment = self._now(cmd.at)
        r.trigger_event(
            Recipient.MutualAidContributionPaid,
            timestamp=moment,
            year=cmd.year,
            has_home_insurance=cmd.has_home_insurance,
            home_insurance_deductible=cmd.home_insurance_deductible,
        )
        return self._commit(cmd, Result(), r)

    def consent_auto_claim(self, cmd: m.ConsentAutoClaim) -> Result:
        """R-PH-3 [002 3.3]: 免申即享 consent signed or withdrawn."""
        r = self.recipient(cmd.recipient)
        r.trigger_event(Recipient.AutoClaimConsentChanged, timestamp=self._now(cmd.at), signed=cmd.signed)
        return self._commit(cmd, Result(), r)

    # ------------------------------------------------------------------ expenses
    def record_expense(self, cmd: m.RecordExpense) -> Result:
        """A receipt / settlement record. The same receipt recorded again is kept and flagged as a
        duplicate of the first (SCENARIOS.md); it can never be aided twice (R-PH-7)."""
        r = self.recipient(cmd.recipient)
        moment = self._now(cmd.at)
        eid = expense_ref(r.id, len(r.expenses) + 1)
        # R-CLR-1(b) [002 4.5; 000 第七条]: the same receipt (facility code and invoice number after
        # NFKC, case folding and trimming; the invoice number alone without a code) recorded again,
        # under this or any other recipient, is kept and flagged as a duplicate of the first.
        key = receipt_identity(cmd.facility.code, cmd.invoice_no)
        rc = self.receipt(key)
        if rc is None:
            rc = Receipt._create(  # noqa: SLF001
                Receipt.Opened, id=Receipt.id_for(key), timestamp=moment, facility_code=key[0], invoice_no=key[1]
            )
        earlier = r.receipts.get(key)  # recorded before the ledger-wide index existed
        duplicate_of = rc.first_recorded or (earlier[0] if earlier else None)
        rc.trigger_event(Receipt.ExpenseNoted, timestamp=moment, expense_id=eid, recipient_id=str(r.id))
        self._also_save(rc)
        r.trigger_event(
            Recipient.ExpenseRecorded,
            timestamp=moment,
            expense_id=eid,
            handle=cmd.handle,
            visit_type=cmd.visit_type.value,
            facility=cmd.facility.model_dump(mode="json"),
            service_date=cmd.service_date.isoformat(),
            invoice_date=cmd.invoice_date.isoformat(),
            invoice_no=cmd.invoice_no,
            total=cmd.total,
            in_scope=cmd.in_scope,
            basic_insurance_paid=cmd.basic_insurance_paid,
            referred=cmd.referred,
            dispensing_only=cmd.dispensing_only,
            critical_illness_related=cmd.critical_illness_related,
            critical_illness_evidence=cmd.critical_illness_evidence.value,
            basic_insurance_settled=cmd.basic_insurance_settled,
            duplicate_of=duplicate_of,
            source=cmd.source,
        )
        return self._commit(cmd, Result(ids={"expense": eid, "duplicate_of": duplicate_of}), r)

    def settle_insurance(self, cmd: m.SettleInsurance) -> Result:
        """An insurance payment on an expense. After aid it lowers self-pay and makes part of the
        aid an overpayment: clearing (R-INS-4, R-CLR-1(a) [001 二(二)3; 002 4.4; 000 第七条])."""
        r = self.recipient(recipient_of(cmd.expense))
        acc = self._expense(r, cmd.expense)
        already = acc.facts.basic_insurance_paid + sum((s.amount for s in acc.facts.settlements), ZERO)
        if already + cmd.amount > acc.facts.in_scope:
            raise errors.InvalidInput(
                f"amount: insurance would pay {already + cmd.amount}, more than the in-scope {acc.facts.in_scope} (R-INS-3)",
                rule="R-INS-3",
                field="amount",
            )
        moment = self._now(cmd.at)
        r.trigger_event(Recipient.InsuranceSettled, timestamp=moment, expense_id=cmd.expense, scheme=cmd.scheme.value, amount=cmd.amount)
        self._reconcile(r, Trigger.LATE_INSURANCE.value, moment, {"expense": cmd.expense, "scheme": cmd.scheme.value, "amount": fmt(cmd.amount)})
        return self._commit(cmd, Result(), r)

    # ------------------------------------------------------------------ decisions
    def _assess(self, r: Recipient, new: list[str], channel: str, claim_id: str | None, at: datetime) -> engine.PassResult:
        facts = r.expense_facts()
        refs = r.decided_refs()
        seq = r.decision_seq + 1
        refs = refs + [DecisionRef(eid, channel, claim_id, at, seq, pos) for pos, eid in enumerate(new)]
        return engine.assess(r.knowledge(), facts, refs, self.policy().book, self.schemes)

    def claim_order(self, r: Recipient, expense_ids: list[str]) -> list[str]:
        """SCENARIOS.md: within a claim, invoice date, then service date, then the order listed."""
        indexed = list(enumerate(expense_ids))
        indexed.sort(key=lambda p: (r.expenses[p[1]].facts.invoice_date, r.expenses[p[1]].facts.service_date, p[0]))
        return [eid for _, eid in indexed]

    def _check_claimable(self, r: Recipient, eid: str, channel: str, lodged_on: date, claim_id: str | None, override: bool) -> None:
        """The procedural checks on one expense, in a fixed order (R-PH-7, R-PH-5, R-INS-6, R-INS-5)."""
        acc = self._expense(r, eid)
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
        if acc.claim_id is not None and acc.claim_id != claim_id:
            raise errors.Duplicate(f"expense {eid}: already listed on open claim {acc.claim_id} [002 4.5]", field="expenses")
        book = self.policy().book
        if channel != Channel.ONE_STOP.value:
            procedure.check_deadline(book, self.schemes, acc.facts, lodged_on, override)
            procedure.check_settled(acc.facts)
            procedure.check_evidence(book, self.schemes, acc.facts)

    def _first_rejection(self, r: Recipient, ordered: list[str], channel: str, lodged_on: date, claim_id: str | None, at: datetime, override: bool = False) -> tuple[errors.Rejected | None, str | None, engine.PassResult | None]:
        seen: set[tuple[str, str]] = set()
        procedural: tuple[errors.Rejected, str] | None = None
        checked: list[str] = []
        for eid in ordered:
            key = r.expenses[eid].facts.receipt_key if eid in r.expenses else None
            if key is not None and key in seen:
                procedural = (errors.Duplicate(f"expense {eid}: the same receipt is listed twice on this claim", field="expenses"), eid)
                break
            if key is not None:
                seen.add(key)
            try:
                self._check_claimable(r, eid, channel, lodged_on, claim_id, override)
            except errors.Rejected as exc:
                procedural = (exc, eid)
                break
            checked.append(eid)
        if len(set(checked)) != len(checked):
            return errors.Duplicate("an expense is listed twice on this claim", field="expenses"), None, None
        # SCENARIOS.md: a claim reports the first rejection in the order of assessment, so the
        # expenses before the first procedural refusal are assessed (and may be refused) first.
        result = self._assess(r, checked, channel, claim_id, at) if checked else None
        for eid in checked:
            a = result.assessments[eid]
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
            "parameters": result.policy_used,
        }
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

    def one_stop(self, cmd: m.OneStop) -> Result:
        """Real-time one-stop settlement at the point of care: assessed and paid to the facility at
        once. An aided receipt cannot be settled again (R-PH-7)."""
        r = self.recipient(recipient_of(cmd.expense))
        self._expense(r, cmd.expense)
        moment = self._now(cmd.at)
        channel = Channel.ONE_STOP.value
        exc, eid, result = self._first_rejection(r, [cmd.expense], channel, local_date(moment), None, moment)
        if exc is not None:
            if isinstance(exc, errors.Duplicate):
                self._note_duplicate(r, cmd.expense, channel, None, exc, moment)
                self._commit(cmd, Result.rejected(exc), r)
            return Result.rejected(exc, expense=cmd.expense)
        assert result is not None
        [a] = self._record_decision(r, [cmd.expense], channel, None, moment, result)
        self._pay(r, None, channel, [(cmd.expense, a.summary())], moment, offset=False)
        return self._commit(cmd, Result(ids={"expense": cmd.expense, "aid": fmt(a.total)}), r)

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
            aided_as=self.receipt_aided_as(r, r.expenses[eid].facts),
            reason=exc.message,
        )

    # ------------------------------------------------------------------ claims
    def lodge_claim(self, cmd: m.LodgeClaim) -> Result:
        """A post-hoc claim lodged at the street office (R-PH-1, R-PH-2 [002 3.1, 3.2, 4.1]). It is
        rejected as a whole when any expense it lists would be; the claim and the rejection are
        recorded either way."""
        r = self.recipient(cmd.recipient)
        for eid in cmd.expenses:
            self._expense(r, eid)
        moment = self._now(cmd.at)
        proxy = procedure.check_proxy(cmd.proxy_id_number, r.id_number, local_date(moment))
        lodged_on = local_date(moment)
        ordered = self.claim_order(r, list(cmd.expenses))
        claim = Claim._create(  # noqa: SLF001
            Claim.Lodged,
            id=uuid.uuid4(),
            timestamp=moment,
            recipient_id=str(r.id),
            expense_ids=ordered,
            handler=cmd.handler,
            channel=cmd.channel.value,
            proxy_id_number=proxy,
            street=r.street,
            lodged_on=lodged_on.isoformat(),
        )
        exc, eid, _ = self._first_rejection(r, ordered, cmd.channel.value, lodged_on, str(claim.id), moment, bool(cmd.deadline_override))
        if exc is not None:
            claim.trigger_event(Claim.Rejected, timestamp=moment, code=exc.code, rule=exc.rule, message=exc.message, expense_id=eid)
            if isinstance(exc, errors.Duplicate) and eid:
                self._note_duplicate(r, eid, cmd.channel.value, str(claim.id), exc, moment)
            res = Result.rejected(exc, claim=str(claim.id))
            return self._commit(cmd, res, claim, r)
        r.trigger_event(Recipient.ClaimAttached, timestamp=moment, claim_id=str(claim.id), expense_ids=ordered, attached=True)
        return self._commit(cmd, Result(ids={"claim": str(claim.id)}), claim, r)

    def review(self, cmd: m.Review) -> Result:
        """The reviewer signs (R-PH-4 [002 3.4]): a different person from the handler."""
        c = self.claim(cmd.claim)
        if c.status != "lodged":
            raise errors.ClaimClosed(f"claim is {c.status}; only a lodged claim can be reviewed", field="claim")
        procedure.check_officers(c.handler, cmd.reviewer, None)
        c.trigger_event(Claim.Reviewed, timestamp=self._now(cmd.at), reviewer=cmd.reviewer)
        return self._commit(cmd, Result(), c)

    def approve(self, cmd: m.Approve) -> Result:
        """The approver signs (R-PH-4): the decision is final and the aid is due. The expenses are
        assessed now, in claim order, with what the ledger knows now."""
        c = self.claim(cmd.claim)
        if c.status == "lodged":
            raise errors.NotApproved("the claim has not been reviewed yet: the reviewer signs before the approver [002 3.4]", code="NOT_REVIEWED", field="claim")
        if c.status != "reviewed":
            raise errors.ClaimClosed(f"claim is {c.status}; only a reviewed claim can be approved", field="claim")
        procedure.check_officers(c.handler, c.reviewer, cmd.approver)
        r = self.recipient(c.recipient_id)
        moment = self._now(cmd.at)
        ordered = self.claim_order(r, c.expense_ids)
        exc, eid, result = self._first_rejection(r, ordered, c.channel, date.fromisoformat(c.lodged_on), str(c.id), moment, True)
        if exc is not None:
            c.trigger_event(Claim.Rejected, timestamp=moment, code=exc.code, rule=exc.rule, message=exc.message, expense_id=eid)
            r.trigger_event(Recipient.ClaimAttached, timestamp=moment, claim_id=str(c.id), expense_ids=ordered, attached=False)
            if isinstance(exc, errors.Duplicate) and eid:
                self._note_duplicate(r, eid, c.channel, str(c.id), exc, moment)
            return self._commit(cmd, Result.rejected(exc, claim=str(c.id)), c, r)
        assert result is not None
        c.trigger_event(Claim.Approved, timestamp=moment, approver=cmd.approver)
        decided = self._record_decision(r, ordered, c.channel, str(c.id), moment, result)
        return self._commit(cmd, Result(ids={"claim": str(c.id), "aid": fmt(sum((a.total for a in decided), ZERO))}), c, r)

    def pay(self, cmd: m.Pay) -> Result:
        """District disbursement of an approved claim [002 3.5]; open clearing cases are offset
        first (R-CLR-3)."""
        c = self.claim(cmd.claim)
        if c.status == "paid":
            raise errors.ClaimClosed("claim already paid", code="ALREADY_PAID", field="claim")
        if c.status != "approved":
            raise errors.NotApproved(f"claim is {c.status}: only an approved claim is paid [002 3.4]", field="claim")
        payer = cmd.payer or DEFAULT_PAYER
        procedure.check_officers(c.handler, c.reviewer, c.approver, payer)
        r = self.recipient(c.recipient_id)
        moment = self._now(cmd.at)
        items = [(eid, r.expenses[eid].decided or {}) for eid in c.expense_ids]
        total = self._pay(r, str(c.id), c.channel, items, moment)
        c.trigger_event(Claim.Paid, timestamp=moment, total=total, to_person=r.payouts[-1]["to_person"] if r.payouts else total, payer=payer)
        return self._commit(cmd, Result(ids={"claim": str(c.id), "paid": fmt(total)}), c, r)

    def aid(self, recipient: str, expenses: list[str], at: datetime | None, command_id: str | None = None) -> Result:
        """The scenario contract's shorthand: claim + review + approve + pay with three distinct
        default officers and the default payer (R-PH-4)."""
        handler, reviewer, approver = DEFAULT_OFFICERS
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

    def auto_claims(self, cmd: m.AutoClaims) -> Result:
        """R-PH-3 [002 3.3]: the 免申即享 monthly batch. For every consenting recipient, the
        unclaimed expenses served up to the end of the month are claimed (channel ``auto``) by the
        batch's handler, leaving out any that would be rejected. The claims form one batch
        (``ClaimBatch``): automatic claims skip the applicant's paperwork, not the officers, so a
        reviewer, an approver and a payer sign it afterwards (``sign_batch``, R-PH-4 [002 3.4])."""
        year, month = (int(x) for x in cmd.month.split("-"))
        month_end = (date(year + month // 12, month % 12 + 1, 1)) - timedelta(days=1)
        at = cmd.at
        claims = []
        # Only a recipient with a consent event can have consented: load just those (ADR 0017).
        consent_topic = f"{Recipient.AutoClaimConsentChanged.__module__}:{Recipient.AutoClaimConsentChanged.__qualname__}"
        asked = set(self._originators([consent_topic]))
        for rid in [rid for rid in self.recipient_ids() if rid in asked]:
            r = self.recipient(rid)
            if not r.consent:
                continue
            moment = at or datetime.now(timezone.utc)
            lodged_on = local_date(moment)
            pending = [
                eid
                for eid, acc in r.expenses.items()
                if acc.decision is None and acc.claim_id is None and acc.facts.service_date <= month_end
            ]
            keep = []
            receipts: set[tuple[str, str]] = set()
            for eid in self.claim_order(r, pending):
                # R-PH-7 [002 4.5]: a receipt recorded twice is claimed once; its copy is left out.
                key = r.expenses[eid].facts.receipt_key
                if key in receipts:
                    continue
                exc, _, _ = self._first_rejection(r, [eid], Channel.AUTO.value, lodged_on, None, moment)
                if exc is None:
                    keep.append(eid)
                    receipts.add(key)
            if not keep:
                continue
            lodged = self.run(m.LodgeClaim(recipient=str(rid), expenses=keep, handler=cmd.handler, channel=Channel.AUTO, at=at))
            if lodged.status == "accepted":
                claims.append(lodged.ids["claim"])
        if not claims:
            return Result(ids={"claims": [], "month": cmd.month, "batch": None})
        batch = ClaimBatch._create(  # noqa: SLF001
            ClaimBatch.Opened, id=uuid.uuid4(), timestamp=self._now(at), month=cmd.month, handler=cmd.handler, claim_ids=claims
        )
        self.save(batch)
        return Result(ids={"claims": claims, "month": cmd.month, "batch": str(batch.id)})

    def batch(self, batch_id: uuid.UUID | str) -> ClaimBatch:
        try:
            bid = batch_id if isinstance(batch_id, uuid.UUID) else uuid.UUID(str(batch_id))
            return self.repository.get(bid)
        except (AggregateNotFoundError, ValueError):
            raise errors.UnknownEntity(f"unknown batch {batch_id!r}", field="batch") from None

    def sign_batch(self, cmd: m.SignBatch) -> Result:
        """One signature for a whole 免申即享 batch (R-PH-3, R-PH-4 [002 3.3, 3.4]): the officer reviews,
        approves or pays every claim of the batch that waits for that step, each claim in its own
        transaction, with the officer recorded on each claim; the same separation of duties holds
        on every claim as on a claim lodged by hand. Refused whole (SAME_OFFICER) when the officer
        already signed the batch in another role."""
        b = self.batch(cmd.batch)
        signed = {"handler": b.handler, **b.signatures}
        procedure.check_officers(signed.get("handler"), cmd.officer if cmd.role == "reviewer" else signed.get("reviewer"),
                                 cmd.officer if cmd.role == "approver" else signed.get("approver"),
                                 cmd.officer if cmd.role == "payer" else signed.get("payer"))
        step = {"reviewer": (lambda cid: m.Review(claim=cid, reviewer=cmd.officer, at=cmd.at), "lodged"),
                "approver": (lambda cid: m.Approve(claim=cid, approver=cmd.officer, at=cmd.at), "reviewed"),
                "payer": (lambda cid: m.Pay(claim=cid, payer=cmd.officer, at=cmd.at), "approved")}[cmd.role]
        outcomes: dict[str, str] = {}
        for cid in b.claim_ids:
            if self.claim(cid).status != step[1]:
                continue
            res = self.run(step[0](cid))
            outcomes[cid] = "accepted" if res.status == "accepted" else (res.code or "rejected")
        b.trigger_event(ClaimBatch.Signed, timestamp=self._now(cmd.at), role=cmd.role, officer=cmd.officer, outcomes=outcomes)
        return self._commit(cmd, Result(ids={"batch": str(b.id), "outcomes": outcomes}), b)

    def auto_claims_signed(self, month: str, at: datetime | None) -> Result:
        """The scenario contract's ``auto_claims`` shorthand: the batch lodged by the default handler,
        then reviewed, approved and paid by the default officers (R-PH-3, R-PH-4)."""
        handler, reviewer, approver = DEFAULT_OFFICERS
        lodged = self.run(m.AutoClaims(month=month, handler=handler, at=at))
        batch = lodged.ids.get("batch")
        if lodged.status != "accepted" or not batch:
            return lodged
        for role, officer in (("reviewer", reviewer), ("approver", approver), ("payer", DEFAULT_PAYER)):
            self.run(m.SignBatch(batch=batch, role=role, officer=officer, at=at))
        return lodged

    # ------------------------------------------------------------------ 四医联动 district actions
    def lift_suspension(self, cmd: m.LiftSuspension) -> Result:
        """R-4L-4 [000 第四条(三)]: after the district's review, 四医联动 reopens."""
        r = self.recipient(cmd.recipient)
        if r.active_suspension(cmd.scheme) is None:
            raise errors.Conflict(f"no active suspension of {cmd.scheme} for this recipient", code="NOT_SUSPENDED", rule="R-4L-4", field="recipient")
        moment = self._now(cmd.at)
        r.trigger_event(Recipient.SuspensionLifted, timestamp=moment, scheme=cmd.scheme, reviewer=cmd.reviewer, lifted_on=local_date(moment).isoformat())
        return self._commit(cmd, Result(), r)

    def social_help(self, cmd: m.SocialHelp) -> Result:
        """R-4L-5 [000 第四条(四)]: one social-organisation grant per recipient per policy period."""
        r = self.recipient(cmd.recipient)
        moment = self._now(cmd.at)
        on = local_date(moment)
        scheme = Scheme.FOUR_LINKAGE.value
        book = self.policy().book
        in_force = book.lookup(f"{scheme}.in_force", on)
        if scheme not in self.schemes or not (in_force and in_force.value):
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
        return self._commit(cmd, Result(), r)

    # ------------------------------------------------------------------ clearing
    def _reconcile(self, r: Recipient, trigger: str, at: datetime, cause: dict[str, Any]) -> bool:
        """R-CLR-2: recompute every decided expense of the recipient with today's knowledge."""
        if not r.decided_refs():
            return False
        result = engine.assess(r.knowledge(), r.expense_facts(), r.decided_refs(), self.policy().book, self.schemes)
        return self._apply_differences(r, result, trigger, at, cause)

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
        for eid, a in result.assessments.items():
            if eid in exclude:
                continue
            acc = r.expenses[eid]
            now = a.summary()
            if _amounts(now) != _amounts(acc.due or {}):
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
            if diff == 0:
                continue
            previous = r.expenses[eid].decided or {}
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
        return any_new

    def clearing_run(self, trigger: str = Trigger.PARAMETER_CHANGE.value, *, at: datetime | None = None, cause: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None, recipients: Iterable[uuid.UUID] | None = None, opened: dict[str, int] | None = None) -> int:
        """Recompute every recipient with decided expenses (R-CLR-2); idempotent: a second run
        finds nothing new. Returns how many recipients changed. ``recipients`` limits the run
        (``ledger clearing run --since``); ``opened`` counts the cases and supplementary payouts
        the run opened."""
        changed = 0
        for rid in list(self.recipient_ids() if recipients is None else recipients):
            for attempt in range(5):
                r = self.recipient(rid)
                before = (len(r.cases), len(r.supplementary))
                moment = self._now(at) if at is None else self._now(at)
                if self._reconcile(r, trigger, moment, cause or {"run": "clearing"}):
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

    def run_clearing(self, cmd: m.ClearingRun) -> Result:
        """A clearing run (R-CLR-2); with ``since``, only recipients with events recorded after it
        (every one when the policy changed since: commands.clearing_runs.recipients_since)."""
        from commands.clearing_runs import recipients_since

        recipients = recipients_since(self, cmd.since) if cmd.since is not None else None
        opened = {"cases": 0, "supplementary": 0}
        changed = self.clearing_run(cmd.trigger, at=cmd.at, recipients=recipients, opened=opened)
        return Result(ids={"recipients_changed": changed, "cases_opened": opened["cases"], "supplementary_opened": opened["supplementary"]})

    def pay_supplementary(self, cmd: m.PaySupplementary) -> Result:
        """Pay every pending supplementary payout of the recipient (R-CLR-2), offsetting open cases."""
        r = self.recipient(cmd.recipient)
        pending = [s for s in r.supplementary.values() if s.paid_at is None]
        if not pending:
            return Result(ids={"paid": "0.00"})
        moment = self._now(cmd.at)
        per_expense: dict[str, dict[str, Any]] = {}
        ids: dict[str, list[str]] = {}
        for s in pending:
            entry = per_expense.setdefault(s.expense_id, {"total": ZERO, "by_scheme": {}, "by_fund": {}})
            entry["total"] += s.amount
            entry["by_scheme"] = clearing.add(entry["by_scheme"], s.by_scheme)
            entry["by_fund"] = clearing.add(entry["by_fund"], s.by_fund)
            ids.setdefault(s.expense_id, []).append(s.id)
        items = [
            (eid, {"total": fmt(v["total"]), "by_scheme": {k: fmt(x) for k, x in v["by_scheme"].items()}, "by_fund": {k: fmt(x) for k, x in v["by_fund"].items()}})
            for eid, v in per_expense.items()
        ]
        total = self._pay(r, None, "supplementary", items, moment, supplementary=ids)
        return self._commit(cmd, Result(ids={"paid": fmt(total)}), r)

    def repay(self, cmd: m.Repay) -> Result:
        """A repayment toward the recipient's open clearing cases, oldest first (R-CLR-3)."""
        r = self.recipient(cmd.recipient)
        owed = r.open_balance()
        if owed <= 0:
            raise errors.NothingOwed("the recipient has no open clearing balance", field="recipient")
        if cmd.amount > owed:
            raise errors.ExceedsBalance(f"amount: {cmd.amount} exceeds the open clearing balance {owed}; a case never goes below zero (R-CLR-3)", field="amount")
        allocations = []
        for case_id, amount in clearing.oldest_first(cmd.amount, [(c.id, c.balance) for c in r.open_cases()]):
            by_fund = clearing.allocate(amount, r.cases[case_id].balance_by_fund)
            allocations.append({"case": case_id, "amount": fmt(amount), "by_fund": {k: fmt(v) for k, v in by_fund.items()}})
        r.trigger_event(Recipient.RepaymentReceived, timestamp=self._now(cmd.at), amount=cmd.amount, allocations=allocations)
        return self._commit(cmd, Result(), r)

    def write_off(self, cmd: m.WriteOff) -> Result:
        """Write off the open clearing balance; the approver must differ from the clearing officer
        (R-CLR-3)."""
        if same_identity(cmd.officer) == same_identity(cmd.approver):
            raise errors.SameOfficer("a write-off needs an approver distinct from the clearing officer (R-CLR-3)", rule="R-CLR-3", field="approver")
        r = self.recipient(cmd.recipient)
        cases = r.open_cases()
        if not cases:
            raise errors.NothingOwed("the recipient has no open clearing balance", field="recipient")
        allocations = [
            {"case": c.id, "amount": fmt(c.balance), "by_fund": {k: fmt(v) for k, v in c.balance_by_fund.items()}} for c in cases
        ]
        r.trigger_event(Recipient.WriteOffApproved, timestamp=self._now(cmd.at), officer=cmd.officer, approver=cmd.approver, reason=cmd.reason, allocations=allocations)
        return self._commit(cmd, Result(), r)


def _amounts(summary: dict[str, Any]) -> tuple:
    return (
        summary.get("granted"),
        summary.get("total"),
        tuple(sorted((summary.get("by_scheme") or {}).items())),
        tuple(sorted((summary.get("by_fund") or {}).items())),
    )


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("granted", "code", "rule", "category", "self_pay", "total", "by_scheme", "by_fund")}


_HANDLERS: dict[type, str] = {
    m.Enrol: "enrol",
    m.GrantCategory: "grant_category",
    m.RevokeCategory: "revoke_category",
    m.Insure: "insure",
    m.EndInsurance: "end_insurance",
    m.JoinMutualAid: "join_mutual_aid",
    m.ConsentAutoClaim: "consent_auto_claim",
    m.RecordExpense: "record_expense",
    m.SettleInsurance: "settle_insurance",
    m.OneStop: "one_stop",
    m.LodgeClaim: "lodge_claim",
    m.Review: "review",
    m.Approve: "approve",
    m.Pay: "pay",
    m.AutoClaims: "auto_claims",
    m.SignBatch: "sign_batch",
    m.SetParameter: "set_parameter",
    m.LiftSuspension: "lift_suspension",
    m.SocialHelp: "social_help",
    m.PaySupplementary: "pay_supplementary",
    m.Repay: "repay",
    m.WriteOff: "write_off",
    m.ClearingRun: "run_clearing",
}
