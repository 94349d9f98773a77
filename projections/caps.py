"""Annual caps per recipient × year × scheme × kind (R-CAP-1, R-CAP-2, R-CAP-3, R-LYG-2).

``proj_caps`` has one row for each recipient, cap year, scheme and kind with any aid due or paid:
``granted`` is the aid *due* now (the latest ``AidDecided`` / ``AidReassessed`` summary of each
decided expense, so an overpayment being cleared does not use up the cap, R-CAP-2 [002 4.3]),
``cap`` the annual limit, ``remaining`` = cap − granted, never below zero. The cap year is the
invoice date's (R-CAP-2); ``outpatient_critical`` counts as outpatient (R-CAP-1).

The cap value is the one the decision used (its trace: ``cap.parameter`` for Shanghai, the
basic-insurance cap × share or the extended cap for Lianyungang, R-LYG-2), taken from the last
decided expense of the bucket in the engine's canonical order (invoice date, service date,
decision, position). Because a parameter can be amended without changing any amount (then no
``AidReassessed`` is recorded), the view also keeps the published cap parameters and reads the
value in force on that expense's service date as known now.

This is a read model: the command handlers never read it (ADR 0008).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Date, Integer, String, Table, Text, select
from sqlalchemy.engine import Connection

from ledger.aggregates import PolicyLedger, Recipient
from ledger.money import ZERO, money
from ledger.values import Scheme
from projections.common import Item, Parsed, Projection, Store, dumps, fen, insert_new, loads, metadata, yuan_str

CAPPED = {Scheme.SHANGHAI_MEDICAL_AID.value, Scheme.LIANYUNGANG.value}

caps_state = Table(
    "proj_caps_recipient",
    metadata,
    Column("recipient", String(36), primary_key=True),
    # Working state: decision count and, per expense, dates, latest due parts, cap traces, paid.
    Column("state", Text, nullable=False),
)

caps_parameter = Table(
    "proj_caps_parameter",
    metadata,
    Column("position", BigInteger, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("name", String(120), nullable=False, index=True),
    Column("effective_from", Date, nullable=False),
    Column("effective_to", Date, nullable=True),
    Column("value", Text, nullable=True),  # the value as published (JSON)
)

caps = Table(
    "proj_caps",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("scheme", String(40), primary_key=True),
    Column("kind", String(12), primary_key=True),
    Column("granted_fen", BigInteger, nullable=False),
    Column("cap_fen", BigInteger, nullable=True),
    Column("remaining_fen", BigInteger, nullable=True),
    Column("cap_parameter", String(120), nullable=True),
)

_RECIPIENT_EVENTS = (Recipient.ExpenseRecorded, Recipient.AidDecided, Recipient.AidReassessed, Recipient.AidPaid)


def _cap_relevant(name: str) -> bool:
    return ".annual_cap." in name or name.endswith(".basic_insurance_cap")


def _decode(value: Any) -> Any:
    """A parameter value as the policy events carry it (``{"decimal": "…"}`` for amounts)."""
    if isinstance(value, dict) and set(value) == {"decimal"}:
        return Decimal(value["decimal"])
    return value


class Caps(Projection):
    name = "caps"
    version = 2  # 2: the cap of a year is read on the invoice date (R-CAP-2)
    tables = (caps_state, caps_parameter, caps)
    events = (*_RECIPIENT_EVENTS, PolicyLedger.PackPublished, PolicyLedger.ParameterAmended)

    def __init__(self) -> None:
        self._parsed = Parsed()  # the recipients' working states, parsed, between batches

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        rids = {str(e.originator_id) for _, e in items if isinstance(e, _RECIPIENT_EVENTS)}
        states = Store(conn, caps_state)
        states.fetch("recipient", rids)
        parsed: dict[str, dict[str, Any]] = {}

        def state(rid: str) -> dict[str, Any]:
            if rid not in parsed:
                row = states.get(rid)
                parsed[rid] = self._parsed.take(rid, row["state"]) if row else {"seq": 0, "expenses": {}}
            return parsed[rid]

        touched: set[str] = set()
        params: list[dict[str, Any]] = []
        for position, e in items:
            if isinstance(e, PolicyLedger.PackPublished):
                params += [_param_row(position, i, v) for i, v in enumerate(e.versions) if _cap_relevant(v["name"])]
                continue
            if isinstance(e, PolicyLedger.ParameterAmended):
                if _cap_relevant(e.version["name"]):
                    params.append(_param_row(position, 0, e.version))
                continue
            rid = str(e.originator_id)
            st = state(rid)
            touched.add(rid)
            if isinstance(e, Recipient.ExpenseRecorded):
                st["expenses"][e.expense_id] = {
                    "inv": e.invoice_date,
                    "svc": e.service_date,
                    "kind": "inpatient" if e.visit_type == "inpatient" else "outpatient",
                    "decided": None,
                    "parts": [],
                    "caps": {},
                    "paid": {},
                }
            elif isinstance(e, Recipient.AidDecided):
                st["seq"] += 1
                for i, summary in enumerate(e.decisions):
                    x = st["expenses"][summary["expense"]]
                    x["decided"] = [st["seq"], i]
                    _set_due(x, summary)
            elif isinstance(e, Recipient.AidReassessed):
                for item in e.results:
                    _set_due(st["expenses"][item["expense"]], item["due"])
            elif isinstance(e, Recipient.AidPaid):
                for p in e.payments:
                    paid = st["expenses"][p["expense"]]["paid"]
                    for scheme, amount in p["by_scheme"].items():
                        paid[scheme] = str(Decimal(paid.get(scheme, "0")) + Decimal(amount))
        if params:
            # Every partition of a rebuild reads the policy and derives the same rows: kept once.
            insert_new(conn, caps_parameter, params)
            # A cap parameter published or amended can change the cap of any bucket that has one
            # (in a partition: of its own recipients).
            capped = conn.execute(select(caps.c.recipient).where(caps.c.cap_fen.is_not(None)).distinct()).scalars()
            more = {rid for rid in capped if self.owns(rid)} - touched
            states.fetch("recipient", more)
            for rid in more:
                state(rid)
            touched |= more
        for rid, st in parsed.items():
            text = dumps(st)
            states.put({"recipient": rid, "state": text})
            self._parsed.keep(rid, text, st)
        states.flush()
        if not touched:
            return
        book = _Book(conn)
        out = Store(conn, caps, index=("recipient",))
        out.fetch("recipient", touched)
        for rid in sorted(touched):
            fresh = {(r["recipient"], r["year"], r["scheme"], r["kind"]): r for r in _rows(rid, parsed[rid], book)}
            for old in out.where(recipient=rid):
                if out.key(old) not in fresh:
                    out.delete(*out.key(old))
            for row in fresh.values():
                out.put(row)
        out.flush()


def _param_row(position: int, seq: int, v: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": position,
        "seq": seq,
        "name": v["name"],
        "effective_from": date.fromisoformat(v["effective_from"]),
        "effective_to": date.fromisoformat(v["effective_to"]) if v.get("effective_to") else None,
        "value": dumps(v.get("value")),
    }


def _set_due(x: dict[str, Any], summary: dict[str, Any]) -> None:
    """The latest summary of an expense: its parts and, per capped scheme, the cap it used."""
    if not summary.get("granted"):
        x["parts"], x["caps"] = [], {}
        return
    x["parts"] = [[p["scheme"], p["kind"], p["amount"]] for p in summary.get("parts", [])]
    x["caps"] = {}
    for entry in (summary.get("trace") or {}).get("schemes", []):
        cap = entry.get("cap") if isinstance(entry, dict) else None
        scheme = entry.get("scheme") if isinstance(entry, dict) else None
        if not cap or scheme not in CAPPED:
            continue
        info: dict[str, Any] = {"year": int(cap["year"]), "kind": cap.get("kind", x["kind"]), "category": entry.get("category")}
        if cap.get("parameter"):  # Shanghai: annual_cap.{kind}.{category} (R-CAP-1)
            info["value"] = str(cap["parameter"]["value"])
            info["names"] = {"parameter": cap["parameter"]["name"]}
        else:  # Lianyungang: 50% of the basic-insurance cap, or the extended cap (R-LYG-2, R-LYG-3)
            info["value"] = str(cap["cap"])
            info["names"] = {
                "basic": (cap.get("basic_insurance_cap") or {}).get("name"),
                "share": (cap.get("key_share") or {}).get("name"),
                "extended": f"{scheme}.annual_cap.extended",
            }
        x["caps"][scheme] = info


class _Book:
    """The published cap parameters, read once per batch: the value in force on a date, as known
    now (latest publication wins, as ``ledger.policy.params.PolicyBook.lookup``)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._by_name: dict[str, list[Any]] | None = None

    def lookup(self, name: str | None, on: date) -> Any:
        if name is None:
            return None
        if self._by_name is None:
            self._by_name = defaultdict(list)
            q = select(caps_parameter).order_by(caps_parameter.c.position, caps_parameter.c.seq)
            for r in self.conn.execute(q):
                self._by_name[r.name].append(r)
        found = None
        for v in self._by_name.get(name, ()):
            if v.effective_from <= on and (v.effective_to is None or on <= v.effective_to):
                found = v
        return None if found is None else _decode(loads(found.value))

    def cap(self, scheme: str, info: dict[str, Any], on: date) -> tuple[Decimal, str | None]:
        names = info["names"]
        if "parameter" in names:
            v = self.lookup(names["parameter"], on)
            return (Decimal(str(v)) if v is not None else Decimal(info["value"])), names["parameter"]
        if info.get("category") == "lyg_extended":
            ext = self.lookup(names.get("extended"), on)
            if ext is not None:
                return Decimal(str(ext)), names.get("extended")
        basic, share = self.lookup(names.get("basic"), on), self.lookup(names.get("share"), on)
        if basic is None or share is None:
            return Decimal(info["value"]), names.get("basic")
        return money(Decimal(str(basic)) * Decimal(str(share))), names.get("basic")


def _rows(rid: str, st: dict[str, Any], book: _Book) -> list[dict[str, Any]]:
    granted: dict[tuple[int, str, str], Decimal] = {}
    paid_any: set[tuple[int, str, str]] = set()
    last: dict[tuple[int, str, str], tuple[tuple, dict[str, Any], str]] = {}
    for x in st["expenses"].values():
        if not x["decided"]:
            continue
        year = int(x["inv"][:4])
        for scheme, kind, amount in x["parts"]:
            key = (year, scheme, kind)
            granted[key] = granted.get(key, ZERO) + Decimal(amount)
        for scheme, amount in x["paid"].items():
            if Decimal(amount) != 0:
                paid_any.add((year, scheme, x["kind"]))
        order = (x["inv"], x["svc"], *x["decided"])
        for scheme, info in x["caps"].items():
            bucket = (info["year"], scheme, info["kind"])
            if bucket not in last or order > last[bucket][0]:
                # R-CAP-2 [002 4.3]: the limit of a cap year is the one in force on the invoice date.
                last[bucket] = (order, info, x["inv"])
    rows = []
    for key in sorted(set(granted) | paid_any):
        year, scheme, kind = key
        g = granted.get(key, ZERO)
        if g == 0 and key not in paid_any:
            continue
        cap, parameter = None, None
        if scheme in CAPPED and key in last:
            _, info, invoiced = last[key]
            cap, parameter = book.cap(scheme, info, date.fromisoformat(invoiced))
        rows.append(
            {
                "recipient": rid,
                "year": year,
                "scheme": scheme,
                "kind": kind,
                "granted_fen": fen(g),
                "cap_fen": fen(cap) if cap is not None else None,
                "remaining_fen": fen(max(ZERO, cap - g)) if cap is not None else None,
                "cap_parameter": parameter,
            }
        )
    return rows


# --------------------------------------------------------------------------- reading


def annual(conn: Connection, recipient: str | None = None) -> list[dict[str, Any]]:
    """SCENARIOS.md ``annual`` rows (money as two-decimal strings)."""
    q = select(caps).order_by(caps.c.recipient, caps.c.year, caps.c.scheme, caps.c.kind)
    if recipient is not None:
        q = q.where(caps.c.recipient == recipient)
    return [
        {
            "recipient": r.recipient,
            "year": r.year,
            "scheme": r.scheme,
            "kind": r.kind,
            "granted": yuan_str(r.granted_fen),
            "cap": yuan_str(r.cap_fen),
            "remaining": yuan_str(r.remaining_fen),
        }
        for r in conn.execute(q)
    ]
