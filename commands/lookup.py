"""Finding anyone by what the ledger shows them by (ADR 0019).

One place resolves what an officer types into the ledger's own ids, for the CLI, the HTTP API and
the console alike:

- a **recipient**: the ledger id (uuid); the resident id number, matched through the ledger's
  keyed hash (:meth:`LedgerApp.recipient_id_for`, ADR 0015: the number itself is never compared
  or stored); or a name (one match only; several are ``AMBIGUOUS`` and listed by ``ledger find``);
- an **expense**: its id (``<recipient uuid>:<n>``) or its handle as recorded with it (``E004997``);
- a **claim**: its id, or an expense (id or handle) that the claim lists;
- a **clearing case** or supplementary payout: its id (``<recipient uuid>:case:<n>``), or an
  expense (id or handle), or a recipient, that has exactly one.

Lists (recipients, expenses, claims, payouts) are paginated with an opaque cursor over the
position each row was recorded at (key-set pagination: a walk visits every row once, rows
recorded meanwhile come last). ``street`` limits everything to one street office (a street
handler's, R-PH-1 [002 4.1]).

The :class:`Directory` follows the notification log and keeps only what is not personal data
(ids, handles, streets, dates, statuses, amounts). Names are never kept, hashed or indexed: a
name search decrypts the enrolments of the caller's scope at the time of the search and keeps
nothing (ADR 0019); erased people (crypto-shredding, ADR 0015) are never found by name.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import unicodedata
import uuid
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from eventsourcing.utils import get_topic

from ledger import errors
from ledger.aggregates import Claim, Recipient
from ledger.values import ERASED, local_date, validate_id_number

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
EXPENSE_ID_RE = re.compile(UUID_RE.pattern + r":[1-9][0-9]{0,8}")
CASE_ID_RE = re.compile(UUID_RE.pattern + r":(case|supp):[1-9][0-9]{0,8}")
ID_NUMBER_RE = re.compile(r"[0-9]{17}[0-9Xx]")
MONTH_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
BATCH = 1000

EXPENSE_STATUSES = ("recorded", "claimed", "decided", "paid")
CLAIM_STATUSES = ("lodged", "reviewed", "approved", "rejected", "paid")

_T = {
    "enrolled": get_topic(Recipient.Enrolled),
    "expense": get_topic(Recipient.ExpenseRecorded),
    "attached": get_topic(Recipient.ClaimAttached),
    "decided": get_topic(Recipient.AidDecided),
    "paid": get_topic(Recipient.AidPaid),
    "lodged": get_topic(Claim.Lodged),
    "reviewed": get_topic(Claim.Reviewed),
    "approved": get_topic(Claim.Approved),
    "rejected": get_topic(Claim.Rejected),
    "claim_paid": get_topic(Claim.Paid),
}


# ------------------------------------------------------------------------------ the directory
@dataclass
class RecipientRow:
    recipient: str
    street: str
    enrolled_at: str
    position: int


@dataclass
class ExpenseRow:
    expense: str
    recipient: str
    handle: str | None
    service_date: str
    invoice_date: str
    invoice_no: str
    total: str
    source: str
    recorded_at: str
    position: int
    claim: str | None = None
    status: str = "recorded"
    schemes: list[str] = field(default_factory=list)
    aid: str | None = None


@dataclass
class ClaimRow:
    claim: str
    recipient: str
    street: str
    channel: str
    lodged_on: str
    expenses: list[str]
    position: int
    status: str = "lodged"


@dataclass
class PaymentRow:
    payment: str
    recipient: str
    claim: str | None
    channel: str
    paid_at: str
    month: str
    total: str
    to_person: str
    by_scheme: dict[str, str]
    expenses: list[str]
    position: int


class Directory:
    """What the ledger holds, by id, handle, street, month and status: no personal data."""

    def __init__(self, app: Any):
        self._app = weakref.ref(app)
        self.position = 0
        self.lock = threading.Lock()
        self.recipients: dict[str, RecipientRow] = {}
        self.expenses: dict[str, ExpenseRow] = {}
        self.handles: dict[str, list[str]] = {}
        self.claims: dict[str, ClaimRow] = {}
        self.payments: dict[str, PaymentRow] = {}

    def catch_up(self) -> "Directory":
        app = self._app()
        if app is None:  # pragma: no cover - the app outlives its directory
            return self
        with self.lock:
            topics = list(_T.values())
            while True:
                batch = app.recorder.select_notifications(start=self.position + 1, limit=BATCH, topics=topics)
                if not batch:
                    break
                for n in batch:
                    self._apply(app, n)
                self.position = batch[-1].id
        return self

    def _apply(self, app: Any, n: Any) -> None:
        topic, rid = n.topic, str(n.originator_id)
        e = _stored_state(app, n)  # the fields read here are never personal: nothing is decrypted
        if topic == _T["enrolled"]:
            self.recipients[rid] = RecipientRow(rid, e.get("street") or "", e["timestamp"].isoformat(), n.id)
        elif topic == _T["expense"]:
            eid, handle = e["expense_id"], e.get("handle")
            self.expenses[eid] = ExpenseRow(
                eid, rid, handle, e["service_date"], e["invoice_date"], e["invoice_no"], str(e["total"]), e.get("source", ""),
                e["timestamp"].isoformat(), n.id,
            )
            if handle:
                self.handles.setdefault(_norm_handle(handle), []).append(eid)
        elif topic == _T["attached"]:
            for eid in e["expense_ids"]:
                x = self.expenses.get(eid)
                if x is None or x.status in ("decided", "paid"):
                    continue
                if e["attached"]:
                    x.claim, x.status = e["claim_id"], "claimed"
                elif x.claim == e["claim_id"]:
                    x.claim, x.status = None, "recorded"
        elif topic == _T["decided"]:
            for d in e["decisions"]:
                x = self.expenses.get(d["expense"])
                if x is None:
                    continue
                x.claim = e.get("claim_id") or x.claim
                x.status = "paid" if x.status == "paid" else "decided"
                x.aid = str(d.get("total")) if d.get("total") is not None else None
                x.schemes = sorted(k for k, v in (d.get("by_scheme") or {}).items() if Decimal(str(v)) != 0)
        elif topic == _T["paid"]:
            by_scheme: dict[str, Decimal] = {}
            total = Decimal(0)
            for p in e["payments"]:
                x = self.expenses.get(p["expense"])
                if x is not None:
                    x.status = "paid"
                total += Decimal(str(p["total"]))
                for k, v in (p.get("by_scheme") or {}).items():
                    by_scheme[k] = by_scheme.get(k, Decimal(0)) + Decimal(str(v))
            pid = f"{rid}@{n.originator_version}"
            self.payments[pid] = PaymentRow(
                pid, rid, e.get("claim_id"), e["channel"], e["timestamp"].isoformat(), local_date(e["timestamp"]).strftime("%Y-%m"),
                str(total), str(e["to_person"]), {k: str(v) for k, v in sorted(by_scheme.items())},
                [p["expense"] for p in e["payments"]], n.id,
            )
        elif topic == _T["lodged"]:
            self.claims[rid] = ClaimRow(rid, e["recipient_id"], e.get("street") or "", e["channel"], e["lodged_on"], list(e["expense_ids"]), n.id)
        else:
            c = self.claims.get(rid)
            if c is not None:
                c.status = {_T["reviewed"]: "reviewed", _T["approved"]: "approved", _T["rejected"]: "rejected",
                            _T["claim_paid"]: "paid"}.get(topic, c.status)

    def rows(self, name: str) -> list[Any]:
        """The rows of one table, taken while no catch-up is changing it (requests run in threads)."""
        with self.lock:
            return list(getattr(self, name).values())

    def street_of(self, recipient: str) -> str:
        row = self.recipients.get(recipient)
        return row.street if row else ""


def _stored_state(app: Any, n: Any) -> dict[str, Any]:
    """A stored event's state as recorded (deciphered and decompressed when the store does so),
    without building the event: no upcasting of decision traces, no decryption of personal
    fields (they stay sealed, and are not read here)."""
    mapper, state = app.mapper, n.state
    if getattr(mapper, "cipher", None):
        state = mapper.cipher.decrypt(state)
    if getattr(mapper, "compressor", None):
        state = mapper.compressor.decompress(state)
    return mapper.transcoder.decode(state)


_directories: "weakref.WeakKeyDictionary[Any, Directory]" = weakref.WeakKeyDictionary()
_directories_lock = threading.Lock()


def directory(app: Any) -> Directory:
    """The app's directory, brought up to the head of the log."""
    with _directories_lock:
        d = _directories.get(app)
        if d is None:
            d = _directories[app] = Directory(app)
    return d.catch_up()


# ------------------------------------------------------------------------------ normalising
def _norm_handle(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()


def normalise_name(text: str) -> str:
    """A name as it is compared: NFKC (full-width letters), case-folded, without spaces or the
    middle dots of transliterated names (·・•)."""
    s = unicodedata.normalize("NFKC", text or "").casefold()
    return "".join(ch for ch in s if not ch.isspace() and ch not in "·・•.")


def _id_number(text: str) -> str | None:
    compact = text.replace(" ", "")
    if not ID_NUMBER_RE.fullmatch(compact):
        return None
    try:
        return validate_id_number(compact, today=None)
    except Exception:  # noqa: BLE001 - a malformed number is simply not a number
        return None


# ------------------------------------------------------------------------------ finding people
@dataclass(frozen=True)
class Person:
    """A search hit. ``id_number`` is only ever shown masked."""

    recipient: str
    name: str
    street: str
    id_number: str
    enrolled_at: str
    position: int

    @property
    def masked_id(self) -> str:
        return mask_id_number(self.id_number)

    def as_dict(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "name": self.name, "street": self.street, "id_number": self.masked_id,
                "enrolled_at": self.enrolled_at}


def mask_id_number(n: str) -> str:
    """The id number as the ledger shows it: region (6) and the last four only."""
    return n if n == ERASED or len(n) < 10 else f"{n[:6]}{'*' * (len(n) - 10)}{n[-4:]}"


def _people(app: Any, d: Directory, rows: Iterable[RecipientRow]) -> Iterator[Person]:
    for row in rows:  # the enrolment event only, decrypted now and not kept (ADR 0015)
        stored = app.recorder.select_events(uuid.UUID(row.recipient), limit=1)
        if not stored:  # pragma: no cover - in the directory, so enrolled
            continue
        e = app.mapper.to_domain_event(stored[0])
        yield Person(row.recipient, e.name, row.street, e.id_number, row.enrolled_at, row.position)


def _scan_names(app: Any, d: Directory, needle: str, street: str | None) -> list[RecipientRow]:
    """ADR 0019: decrypt-and-scan the enrolments in scope (one street for a street handler), at
    the time of the search; nothing of the names is kept."""
    want = normalise_name(needle)
    if not want:
        return []
    in_scope = {row.recipient for row in d.rows("recipients") if street is None or row.street == street}
    hits: list[RecipientRow] = []
    start = 1
    while in_scope:
        batch = app.recorder.select_notifications(start=start, limit=BATCH, topics=[_T["enrolled"]])
        if not batch:
            break
        for n in batch:
            rid = str(n.originator_id)
            if rid not in in_scope:
                continue
            name = app.mapper.to_domain_event(n).name
            if name != ERASED and want in normalise_name(name):
                hits.append(d.recipients[rid])
        start = batch[-1].id + 1
    return hits


def match_recipients(app: Any, text: str, *, by: str = "auto", street: str | None = None) -> tuple[str, list[RecipientRow]]:
    """Recipients matching ``text``, and how it was read: ``recipient`` (the ledger id),
    ``id_number`` (keyed hash), ``name`` (contains, normalised), ``street`` (contains). In the
    ``auto`` reading a text that is neither an id nor a number is a name, and, when no name
    matches, a street (so an officer's own street typed in the box is found)."""
    d = directory(app)
    q = (text or "").strip()
    if by not in ("auto", "recipient", "id_number", "name", "street"):
        raise errors.InvalidInput("by: one of auto, recipient, id_number, name, street", field="by")
    if not q:
        return by, []
    scope = [row for row in d.rows("recipients") if street is None or row.street == street]
    if by in ("auto", "recipient") and UUID_RE.fullmatch(q):
        row = d.recipients.get(str(uuid.UUID(q)))
        return "recipient", [row] if row and (street is None or row.street == street) else []
    if by == "recipient":
        raise errors.InvalidInput(f"{q!r} is not a recipient id (a uuid)", field="q")
    if by in ("auto", "id_number"):
        number = _id_number(q)
        if number is None and by == "id_number":
            raise errors.InvalidInput("not an 18-character resident id number with a valid check digit", field="q")
        if number is not None:
            row = d.recipients.get(str(app.recipient_id_for(number)))
            return "id_number", [row] if row and (street is None or row.street == street) else []
    if by in ("auto", "name"):
        found = _scan_names(app, d, q, street)
        if found or by == "name":
            return "name", sorted(found, key=lambda r: r.position)
    needle = normalise_name(q)
    return "street", [row for row in scope if needle and needle in normalise_name(row.street)]


def search_people(app: Any, text: str, *, by: str = "auto", street: str | None = None, limit: int = 200) -> tuple[str, list[Person]]:
    """Recipients as a result list shows them (name, masked id number, street)."""
    d = directory(app)
    read_as, rows = match_recipients(app, text, by=by, street=street)
    return read_as, list(_people(app, d, rows[:limit]))


# ------------------------------------------------------------------------------ resolving
def _unknown(kind: str, text: str, hint: str) -> errors.UnknownEntity:
    return errors.UnknownEntity(f"no {kind} matches {text!r}: {hint}", field=kind)


def _ambiguous(kind: str, text: str, n: int) -> errors.InvalidInput:
    return errors.InvalidInput(f"{text!r} matches {n} {kind}s: give the id, or list them with `ledger find {text}`",
                               code="AMBIGUOUS", field=kind)


def is_exact_reference(text: str) -> bool:
    """A recipient id or a resident id number names one person whatever the caller's street;
    a name is searched within it."""
    q = (text or "").strip()
    return bool(UUID_RE.fullmatch(q)) or _id_number(q) is not None


def resolve_recipient(app: Any, text: str, *, street: str | None = None) -> str:
    """The recipient id for a ledger id, a resident id number or a name (one match)."""
    q = (text or "").strip()
    if not q:
        raise errors.InvalidInput("recipient: give the ledger id, the resident id number or a name", field="recipient")
    if UUID_RE.fullmatch(q):
        rid = str(uuid.UUID(q))
        if rid in directory(app).recipients:
            return rid
    _, rows = match_recipients(app, q, street=street)
    if not rows:
        raise _unknown("recipient", q, "give the ledger id (uuid), the resident id number or a name")
    if len(rows) > 1:
        raise _ambiguous("recipient", q, len(rows))
    return rows[0].recipient


def resolve_expense(app: Any, text: str) -> str:
    """The expense id for an expense id (``<recipient uuid>:<n>``) or its handle (``E004997``)."""
    q = (text or "").strip()
    d = directory(app)
    if EXPENSE_ID_RE.fullmatch(q):
        rid, n = q.split(":")
        eid = f"{uuid.UUID(rid)}:{n}"
        if eid in d.expenses:
            return eid
        raise _unknown("expense", q, "no expense has this id")
    found = d.handles.get(_norm_handle(q), []) if q else []
    if not found:
        raise _unknown("expense", q, "give the expense's handle as recorded (e.g. E004997) or its id <recipient uuid>:<n>")
    if len(found) > 1:
        raise _ambiguous("expense", q, len(found))
    return found[0]


def resolve_claim(app: Any, text: str) -> str:
    """The claim id for a claim id, or for an expense (id or handle) that a claim lists."""
    q = (text or "").strip()
    d = directory(app)
    if UUID_RE.fullmatch(q):
        cid = str(uuid.UUID(q))
        if cid in d.claims:
            return cid
        raise _unknown("claim", q, "no claim has this id")
    try:
        eid = resolve_expense(app, q)
    except errors.UnknownEntity:
        raise _unknown("claim", q, "give the claim id, or the id or handle of an expense it lists") from None
    claims = sorted({c.claim for c in d.rows("claims") if eid in c.expenses}, key=lambda c: d.claims[c].position)
    if not claims:
        raise _unknown("claim", q, "this expense is on no claim")
    return claims[-1]  # the latest claim listing it (a rejected one may have come first)


def resolve_case(app: Any, text: str) -> str:
    """A clearing case or supplementary payout id, for its id, or for an expense (id or handle)
    or a recipient that has exactly one (R-CLR-2)."""
    q = (text or "").strip()
    if CASE_ID_RE.fullmatch(q):
        rid, kind, n = q.split(":")
        return f"{uuid.UUID(rid)}:{kind}:{n}"
    expense: str | None = None
    try:
        expense = resolve_expense(app, q)
        rid = expense.split(":")[0]
    except errors.UnknownEntity:
        try:
            rid = resolve_recipient(app, q)
        except errors.UnknownEntity:
            raise _unknown("case", q, "give the case id (<recipient uuid>:case:<n>), an expense or a recipient") from None
    r = app.recipient(rid)
    ids = [c.id for c in r.cases.values() if expense is None or c.expense_id == expense]
    ids += [s.id for s in r.supplementary.values() if expense is None or s.expense_id == expense]
    if not ids:
        raise _unknown("case", q, "no clearing case or supplementary payout for it")
    if len(ids) > 1:
        raise _ambiguous("case", q, len(ids))
    return ids[0]


# ------------------------------------------------------------------------------ pages
@dataclass
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def encode_cursor(kind: str, position: int) -> str:
    raw = json.dumps({"k": kind, "p": position}, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        if data.get("k") != kind or not isinstance(data.get("p"), int) or data["p"] < 0:
            raise ValueError
        return int(data["p"])
    except (ValueError, binascii.Error, UnicodeDecodeError, AttributeError):
        raise errors.InvalidInput(f"cursor: not a cursor of this {kind} list (use next_cursor as given)", field="cursor") from None


def _limit(limit: int | None) -> int:
    n = DEFAULT_LIMIT if limit is None else int(limit)
    if not 1 <= n <= MAX_LIMIT:
        raise errors.InvalidInput(f"limit: between 1 and {MAX_LIMIT}", field="limit")
    return n


def _page(kind: str, rows: Iterable[Any], cursor: str | None, limit: int | None, shape: Any) -> Page:
    after, n = decode_cursor(kind, cursor), _limit(limit)
    ordered = sorted((r for r in rows if r.position > after), key=lambda r: r.position)
    chosen = ordered[:n]
    more = len(ordered) > n
    return Page([shape(r) for r in chosen], encode_cursor(kind, chosen[-1].position) if more and chosen else None)


def _check(name: str, value: str | None, allowed: Iterable[str] | None = None, pattern: re.Pattern[str] | None = None) -> None:
    if value is None:
        return
    if allowed is not None and value not in allowed:
        raise errors.InvalidInput(f"{name}: one of {', '.join(allowed)}", field=name)
    if pattern is not None and not pattern.fullmatch(value):
        raise errors.InvalidInput(f"{name}: YYYY-MM", field=name)


def list_recipients(app: Any, q: str | None = None, *, street: str | None = None, month: str | None = None,
                    cursor: str | None = None, limit: int | None = None) -> Page:
    """Recipients (by ``q``: id, id number, name or street; ``month``: enrolled that month, +08:00)."""
    _check("month", month, pattern=MONTH_RE)
    d = directory(app)
    rows: list[RecipientRow] = match_recipients(app, q, street=street)[1] if q and q.strip() else \
        [r for r in d.rows("recipients") if street is None or r.street == street]
    if month:
        rows = [r for r in rows if _local_month(r.enrolled_at) == month]
    page = _page("recipients", rows, cursor, limit, lambda r: r)
    people = {p.recipient: p for p in _people(app, d, page.items)}
    return Page([people[r.recipient].as_dict() for r in page.items], page.next_cursor)


def list_expenses(app: Any, q: str | None = None, *, recipient: str | None = None, street: str | None = None,
                  month: str | None = None, scheme: str | None = None, status: str | None = None,
                  cursor: str | None = None, limit: int | None = None) -> Page:
    """Expenses (``q``: an expense handle or id; ``month``: the invoice month; ``scheme``: aided by
    that scheme; ``status``: recorded, claimed, decided, paid)."""
    _check("month", month, pattern=MONTH_RE)
    _check("status", status, EXPENSE_STATUSES)
    d = directory(app)
    rows: Iterable[ExpenseRow] = d.rows("expenses")
    if q and q.strip():
        rows = [d.expenses[resolve_expense(app, q)]]
    if recipient:
        rows = [x for x in rows if x.recipient == recipient]
    out = [x for x in rows
           if (street is None or d.street_of(x.recipient) == street)
           and (month is None or x.invoice_date[:7] == month)
           and (scheme is None or scheme in x.schemes)
           and (status is None or x.status == status)]
    return _page("expenses", out, cursor, limit, lambda x: _expense_dict(d, x))


def _expense_dict(d: Directory, x: ExpenseRow) -> dict[str, Any]:
    return {"expense": x.expense, "handle": x.handle, "recipient": x.recipient, "street": d.street_of(x.recipient),
            "service_date": x.service_date, "invoice_date": x.invoice_date, "invoice_no": x.invoice_no, "total": x.total,
            "source": x.source, "recorded_at": x.recorded_at, "status": x.status, "claim": x.claim, "schemes": x.schemes,
            "aid": x.aid}


def list_claims(app: Any, q: str | None = None, *, recipient: str | None = None, street: str | None = None,
                month: str | None = None, status: str | None = None, channel: str | None = None,
                cursor: str | None = None, limit: int | None = None) -> Page:
    """Claims (``q``: a claim id or an expense it lists; ``month``: lodged that month; ``status``)."""
    _check("month", month, pattern=MONTH_RE)
    _check("status", status, CLAIM_STATUSES)
    d = directory(app)
    rows: Iterable[ClaimRow] = d.rows("claims")
    if q and q.strip():
        rows = [d.claims[resolve_claim(app, q)]]
    out = [c for c in rows
           if (recipient is None or c.recipient == recipient)
           and (street is None or c.street == street)
           and (month is None or c.lodged_on[:7] == month)
           and (status is None or c.status == status)
           and (channel is None or c.channel == channel)]
    return _page("claims", out, cursor, limit, lambda c: {
        "claim": c.claim, "recipient": c.recipient, "street": c.street, "channel": c.channel, "lodged_on": c.lodged_on,
        "status": c.status, "expenses": [{"expense": e, "handle": d.expenses[e].handle if e in d.expenses else None} for e in c.expenses]})


def list_payments(app: Any, *, recipient: str | None = None, street: str | None = None, month: str | None = None,
                  scheme: str | None = None, channel: str | None = None, cursor: str | None = None, limit: int | None = None) -> Page:
    """Payouts (``AidPaid``): ``month`` paid (+08:00), ``scheme`` paying part of it."""
    _check("month", month, pattern=MONTH_RE)
    d = directory(app)
    out = [p for p in d.rows("payments")
           if (recipient is None or p.recipient == recipient)
           and (street is None or d.street_of(p.recipient) == street)
           and (month is None or p.month == month)
           and (scheme is None or Decimal(p.by_scheme.get(scheme, "0")) != 0)
           and (channel is None or p.channel == channel)]
    return _page("payments", out, cursor, limit, lambda p: {
        "payment": p.payment, "recipient": p.recipient, "street": d.street_of(p.recipient), "claim": p.claim,
        "channel": p.channel, "paid_at": p.paid_at, "month": p.month, "total": p.total, "to_person": p.to_person,
        "by_scheme": p.by_scheme, "expenses": [{"expense": e, "handle": d.expenses[e].handle if e in d.expenses else None} for e in p.expenses]})


def _local_month(iso: str) -> str:
    from datetime import datetime

    return local_date(datetime.fromisoformat(iso)).strftime("%Y-%m")


# ------------------------------------------------------------------------------ find anything
def find(app: Any, text: str, *, street: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
    """What ``text`` names, read the way the ledger shows things: a case id, an expense (id or
    handle), a claim, or recipients (id, id number, name, street). ``street`` scopes it."""
    q = (text or "").strip()
    if not q:
        raise errors.InvalidInput("give something to find: a handle, an id, an id number or a name", field="text")
    d = directory(app)
    if CASE_ID_RE.fullmatch(q):
        rid = q.split(":")[0].lower()
        if street is None or d.street_of(rid) == street:
            return {"kind": "case", "read_as": "case", "items": [{"case": resolve_case(app, q), "recipient": rid}], "next_cursor": None}
        return {"kind": "case", "read_as": "case", "items": [], "next_cursor": None}
    if UUID_RE.fullmatch(q) and str(uuid.UUID(q)) in d.claims:
        page = list_claims(app, q, street=street, cursor=cursor, limit=limit)
        return {"kind": "claim", "read_as": "claim", **page.as_dict()}
    try:
        eid = resolve_expense(app, q)
    except errors.UnknownEntity:
        eid = None
    if eid is not None:
        page = list_expenses(app, q, street=street, cursor=cursor, limit=limit)
        return {"kind": "expense", "read_as": "handle" if not EXPENSE_ID_RE.fullmatch(q) else "expense", **page.as_dict()}
    read_as, rows = match_recipients(app, q, street=street)
    page = _page("recipients", rows, cursor, limit, lambda r: r)
    people = {p.recipient: p for p in _people(app, d, page.items)}
    return {"kind": "recipient", "read_as": read_as, "items": [people[r.recipient].as_dict() for r in page.items],
            "next_cursor": page.next_cursor}


# ------------------------------------------------------------------------------ command fields
def resolve_fields(app: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """A command's ``recipient``, ``expense``, ``expenses`` and ``claim`` fields as the ledger
    shows them (handle, id number, name) turned into ids; ids are left as given (the handler
    decides whether they exist)."""
    out = dict(payload)
    if isinstance(out.get("recipient"), str) and not UUID_RE.fullmatch(out["recipient"].strip()):
        out["recipient"] = resolve_recipient(app, out["recipient"])
    if isinstance(out.get("expense"), str) and not EXPENSE_ID_RE.fullmatch(out["expense"].strip()):
        out["expense"] = resolve_expense(app, out["expense"])
    if isinstance(out.get("expenses"), list):
        out["expenses"] = [resolve_expense(app, x) if isinstance(x, str) and not EXPENSE_ID_RE.fullmatch(x.strip()) else x
                           for x in out["expenses"]]
    if isinstance(out.get("claim"), str) and not UUID_RE.fullmatch(out["claim"].strip()):
        out["claim"] = resolve_claim(app, out["claim"])
    return out
