"""A small dataset for the integrity and privacy tests: two recipients, their expenses, a claim
lodged by a proxy, aid paid, late insurance opening a clearing case, a repayment."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from stdnum.cn import ric

from commands import models as m
from commands import queries
from commands.app import LedgerApp
from ledger.values import FUNDS

CST = timezone(timedelta(hours=8))


def id_number(first17: str) -> str:
    """A resident id number with its GB 11643 check digit."""
    return first17 + ric.calc_check_digit(first17 + "0")


@dataclass
class Person:
    id_number: str
    name: str
    street: str
    rid: str = ""
    expenses: list[str] = field(default_factory=list)


def people() -> list[Person]:
    return [
        Person(id_number("31010519580312201"), "王秀英", "华阳路街道"),
        Person(id_number("31010519920715432"), "Zhang Weiqiang", "江苏路街道"),
    ]


@dataclass
class Story:
    people: list[Person]
    proxy_id_number: str

    @property
    def secrets(self) -> list[str]:
        """Every personal value the dataset wrote: none may appear in a dump."""
        return [p.id_number for p in self.people] + [p.name for p in self.people] + [self.proxy_id_number]


def ok(result: Any) -> Any:
    assert result.status == "accepted", result
    return result


def tell(app: LedgerApp) -> Story:
    story = Story(people(), id_number("31010419700101123"))
    # Recorded times are the clock's (a store built by the wiring publishes its policy now);
    # the expenses are a few weeks old, well inside the claim window (R-PH-5).
    at = None
    served = (datetime.now(CST) - timedelta(days=20)).date().isoformat()
    for p in story.people:
        p.rid = ok(app.run(m.Enrol(id_number=p.id_number, name=p.name, street=p.street, at=at))).ids["recipient"]
        ok(app.run(m.GrantCategory.model_validate({"recipient": p.rid, "category": "dibao", "from": "2025-01-01", "at": at})))
        ok(app.run(m.Insure.model_validate({"recipient": p.rid, "scheme": "resident", "from": "2020-01-01", "at": at})))
        for n, (kind, total, in_scope, insured) in enumerate(
            [("outpatient", "150.00", "120.00", "30.00"), ("inpatient", "20000.00", "16000.00", "12000.00")]
        ):
            res = app.run(
                m.RecordExpense.model_validate(
                    {
                        "recipient": p.rid,
                        "visit_type": kind,
                        "facility": {"kind": "hospital", "level": 2, "district_designated": True, "code": "H1"},
                        "referred": True,
                        "service_date": served,
                        "invoice_date": served,
                        "invoice_no": f"{p.rid[:8]}-{n}",
                        "total": total,
                        "in_scope": in_scope,
                        "basic_insurance_paid": insured,
                        "at": at,
                    }
                )
            )
            p.expenses.append(ok(res).ids["expense"])
    first, second = story.people
    ok(app.aid(first.rid, first.expenses, at))
    claim = ok(
        app.run(
            m.LodgeClaim(
                recipient=second.rid,
                expenses=second.expenses,
                handler="handler-1",
                proxy_id_number=story.proxy_id_number,
                at=at,
            )
        )
    ).ids["claim"]
    for cmd in (
        m.Review(claim=claim, reviewer="reviewer-1", at=at),
        m.Approve(claim=claim, approver="approver-1", at=at),
        m.Pay(claim=claim, at=at),
    ):
        ok(app.run(cmd))
    # late insurance after aid: an overpayment, a clearing case, a repayment (R-INS-4, R-CLR-2/3)
    ok(app.run(m.SettleInsurance(expense=first.expenses[1], scheme="critical_illness", amount=Decimal("1000.00"), at=at)))
    r = app.recipient(first.rid)
    owed = r.open_balance()
    assert owed > 0
    ok(app.run(m.Repay(recipient=first.rid, amount=min(owed, Decimal("100.00")), at=at)))
    return story


def money_figures(app: LedgerApp, story: Story) -> dict[str, Any]:
    """Every money figure of the story's recipients, as the read interface gives them."""
    out: dict[str, Any] = {}
    for p in story.people:
        r = app.recipient(p.rid)
        out[p.rid] = {
            "funds": {f: str(v) for f, v in queries.fund_movements(r).items() if f in FUNDS or v},
            "expenses": {eid: queries.expense_view(r, eid) for eid in r.expenses},
            "cases": [queries.case_view(c) for c in r.cases.values()],
            "annual": queries.annual_rows(r, app.policy().book, app.schemes),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Behind the ledger's back: raw SQL on a real store (ADR 0016 attacks)


class RawStore:
    """The event store's database, opened directly (sqlite3 / psycopg), as an intruder with write
    access would. Statements use ``%s`` and ``{events}`` / ``{pos}`` for the events table and its
    position column (``stored_events.rowid`` in SQLite, ``ledger_events.notification_id`` in
    PostgreSQL)."""

    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite:///")
        self.events, self.pos = ("stored_events", "rowid") if self.sqlite else ("ledger_events", "notification_id")

    def _text(self, statement: str) -> str:
        text = statement.replace("{events}", self.events).replace("{pos}", self.pos)
        return text.replace("%s", "?") if self.sqlite else text

    def run(self, statement: str, params: tuple | list = ()) -> list[tuple]:
        if self.sqlite:
            import sqlite3

            with sqlite3.connect(self.url[len("sqlite:///") :]) as c:
                cur = c.execute(self._text(statement), tuple(params))
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as c:
            cur = c.execute(self._text(statement), tuple(params))
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def events_after(self, position: int, stop: int | None = None) -> list[tuple[int, Any, int, str, bytes]]:
        rows = self.run(
            "SELECT {pos}, originator_id, originator_version, topic, state FROM {events} WHERE {pos} > %s AND {pos} <= %s ORDER BY {pos}",
            (position, stop if stop is not None else 2**62),
        )
        return [(int(p), _as_uuid(o), int(v), t, bytes(s)) for p, o, v, t, s in rows]

    def positions(self) -> list[int]:
        return [int(r[0]) for r in self.run("SELECT {pos} FROM {events} ORDER BY {pos}")]

    def links(self) -> list[tuple[int, str, int, str | None]]:
        """(position, hash, seq, seal) of every link."""
        return [(int(p), h, int(s), seal) for p, h, s, seal in self.run("SELECT position, hash, seq, seal FROM event_chain ORDER BY position")]

    def append_copy_of(self, position: int) -> int:
        """A forged event at the end of the log: a copy of the one at ``position`` as a later
        version of its aggregate. Returns its position."""
        self.run(
            "INSERT INTO {events} (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version + 1000, topic, state FROM {events} WHERE {pos} = %s",
            (position,),
        )
        return self.positions()[-1]

    def flip_byte(self, position: int, offset: int) -> None:
        """One byte of one stored event, changed in place."""
        [(state,)] = self.run("SELECT state FROM {events} WHERE {pos} = %s", (position,))
        edited = bytearray(bytes(state))
        edited[offset] ^= 0x01
        self.run("UPDATE {events} SET state = %s WHERE {pos} = %s", (bytes(edited), position))


def _as_uuid(value: Any) -> Any:
    import uuid

    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return value


def earlier_chainer(raw: RawStore, seal: Any, *, stop: int | None = None, checkpoint: bool = True) -> int:
    """The chainer of the earlier version, as it ran after each save and on ``ledger chain``:
    link every stored event after the chain head (up to ``stop``) in its own transaction, and seal
    an unnumbered checkpoint at the end. Returns the new head position."""
    from datetime import datetime, timezone

    from infra import integrity

    [head] = raw.run("SELECT position, hash, seq FROM event_chain ORDER BY position DESC LIMIT 1") or [None]
    prev, seq, position = (bytes.fromhex(head[1]), int(head[2]), int(head[0])) if head else (integrity.GENESIS, 0, 0)
    for pos, originator, version, topic, state in raw.events_after(position, stop):
        prev = integrity.link_hash(prev, pos, topic, originator, version, state)
        seq += 1
        raw.run(
            "INSERT INTO event_chain (position, hash, seq, digests) VALUES (%s, %s, %s, %s)",
            (pos, prev.hex(), seq, integrity.field_digests(topic, originator, version, state)),
        )
        position = pos
    [last] = raw.run("SELECT MAX(position) FROM chain_checkpoints")
    if checkpoint and position and (last[0] is None or int(last[0]) < position):
        at = datetime.now(timezone.utc).isoformat()
        raw.run(
            "INSERT INTO chain_checkpoints (position, hash, recorded_at, seal) VALUES (%s, %s, %s, %s)",
            (position, prev.hex(), at, seal(integrity.legacy_seal_text(position, prev.hex(), at))),
        )
    return position


def write_people(database_url: str, data_key: str, first17s: list[str], checkpoint_every: int | None = None) -> int:
    """An ordinary writer (its own process or thread, its own app): enrol each person, grant a
    category, insure them. Returns the number of commands accepted."""
    from infra import integrity
    from infra.settings import Settings
    from infra.wiring import build_app

    app = build_app(Settings(database_url=database_url, data_key=data_key), publish_policy=False)
    if checkpoint_every:
        integrity.chain_for(app).checkpoint_every = checkpoint_every
    done = 0
    try:
        for first17 in first17s:
            rid = ok(app.run(m.Enrol(id_number=id_number(first17), name="并发", street="华阳路街道"))).ids["recipient"]
            ok(app.run(m.GrantCategory.model_validate({"recipient": rid, "category": "dibao", "from": "2025-01-01"})))
            ok(app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2020-01-01"})))
            done += 3
    finally:
        app.close()
    return done
